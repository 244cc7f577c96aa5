"""docker-compose.yml is validated with Debian's docker-compose (there is no Docker engine here)."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_parses():
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing; install it with: sudo apt-get install -y docker-compose"
    r = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
