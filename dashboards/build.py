"""Every dashboard as canonical JSON; ``fieldlab dashboards build`` writes them to dashboards/json."""
from __future__ import annotations

import json
from pathlib import Path

from . import lines, losses, machine, overview, shift

JSON_DIR = Path(__file__).resolve().parent / "json"
PROVISIONING_DIR = Path(__file__).resolve().parent / "provisioning"
#: file name (without .json) -> builder; the order is the order of the dashboards in docs/dashboards.md
BUILDERS = {"overview": overview.build, "machine": machine.build, "losses": losses.build, "shift": shift.build,
            "lines": lines.build}
REGENERATE = "fieldlab dashboards build   (or: .venv/bin/fieldlab dashboards build)"


def dashboards() -> dict[str, dict]:
    """name -> dashboard JSON model, freshly generated."""
    return {name: make() for name, make in BUILDERS.items()}


def render(model: dict) -> str:
    """Canonical text: sorted keys, two-space indent, a final newline (stable diffs)."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out: Path = JSON_DIR) -> list[tuple[Path, bool]]:
    """Write every dashboard to ``out``/<name>.json; (path, changed) per file."""
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for name, model in dashboards().items():
        path = out / f"{name}.json"
        text = render(model)
        changed = not path.exists() or path.read_text() != text
        if changed:
            path.write_text(text)
        done.append((path, changed))
    return done


def stale(json_dir: Path = JSON_DIR) -> list[str]:
    """Names whose file in ``json_dir`` is missing or differs from what the code generates, and files there
    that no builder makes."""
    out = [name for name, model in dashboards().items()
           if not (json_dir / f"{name}.json").exists() or (json_dir / f"{name}.json").read_text() != render(model)]
    return out + sorted({p.stem for p in json_dir.glob("*.json")} - set(BUILDERS))
