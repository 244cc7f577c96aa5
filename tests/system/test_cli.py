"""The command line itself: one module per command (fieldlab/commands/), and --help stays light.

An edge agent on a Raspberry Pi runs ``fieldlab edge``; its help (and the parser every run builds) must not
load the gateway or NumPy. Checked in a fresh interpreter, since this test process has loaded everything."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fieldlab import cli

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from fieldlab.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

HEAVY = ("gateway", "numpy", "asyncua", "pymodbus", "paho", "orjson", "aiohttp", "edge")


@pytest.mark.parametrize("args", [["--help"], ["edge", "--help"], ["edge", "discover", "--help"],
                                  ["edge", "check", "--help"], ["gateway", "--help"], ["sim", "inject", "--help"]])
def test_help_loads_no_gateway_edge_or_numpy_code(args):
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["code"] == 0
    loaded = sorted({m for m in out["modules"] if m.split(".")[0] in HEAVY})
    assert loaded == [], f"fieldlab {' '.join(args)} loaded {loaded}"
    assert "fieldlab.commands.edge" in out["modules"]  # the probe really built the whole parser


def test_every_command_is_a_module_with_add_parser_and_run():
    names = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert names == set(cli.COMMANDS)
    assert list(cli.COMMANDS) == ["demo", "sim", "edge", "oee", "gateway", "deploy", "dashboards"]  # --help order
    for name, module in cli.COMMANDS.items():
        assert module.__name__ == f"fieldlab.commands.{name}"
        assert callable(module.add_parser) and callable(module.run)


@pytest.mark.parametrize("args", [
    ["gateway", "--broker", "mqtt://127.0.0.1:1", "--site", "x", "--state-dir", "/proc/fieldlab-none",
     "--http-port", "PORT", "--duration", "1"],
    ["edge", "--opcua", "opc.tcp://127.0.0.1:1/x", "--object", "cnc-01", "--broker", "mqtt://127.0.0.1:1",
     "--buffer", "/proc/fieldlab-none/outbox.db", "--duration", "1"],
])
def test_a_place_it_cannot_write_is_one_clear_line_not_a_traceback(args):
    """A state directory or outbox it cannot create (a service user without a home, a read-only or full disk)."""
    from fieldlab.broker import free_port

    args = [str(free_port()) if a == "PORT" else a for a in args]
    r = subprocess.run([sys.executable, "-m", "fieldlab", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "cannot use /proc/fieldlab-none" in r.stderr, r.stderr
