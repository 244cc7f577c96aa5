"""The package rules of docs/architecture.md, checked on the source (not by convention)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["contract", "edge", "gateway", "simulators", "fieldlab"]

# package -> project packages it must never import
FORBIDDEN = {
    "contract": {"edge", "gateway", "simulators", "fieldlab"},  # the leaf: imports nothing of ours
    "edge": {"gateway", "simulators", "fieldlab"},
    "gateway": {"edge", "simulators", "fieldlab"},
    "simulators": {"edge", "gateway", "fieldlab"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_package_is_checked():
    assert all((ROOT / p / "__init__.py").exists() for p in PACKAGES)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_imports(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_packages(path) & FORBIDDEN[package]:
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_nothing_imports_the_cli_package():
    bad = [str(p.relative_to(ROOT)) for pkg in FORBIDDEN for p in (ROOT / pkg).rglob("*.py")
           if "fieldlab" in imported_packages(p)]
    assert not bad


def test_the_checker_sees_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import gateway.oee\nfrom simulators.machine import Machine\nfrom . import y\n")
    assert imported_packages(f) == {"gateway", "simulators"}
