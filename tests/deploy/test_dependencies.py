"""Each part installs only what it imports: an edge agent on a Pi needs the core and the [edge] extra."""
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.contract.test_layering import imported_packages

ROOT = Path(__file__).resolve().parents[2]
OURS = {"contract", "edge", "gateway", "simulators", "fieldlab"}
# import name -> distribution name, where they differ
DIST = {"paho": "paho-mqtt", "yaml": "pyyaml", "influxdb_client": "influxdb-client", "google": "protobuf"}
#: contract modules only the edge agent and the gateway import (Sparkplug B: protobuf is in their extras only)
EDGE_AND_GATEWAY_ONLY = {"sparkplug.py", "sparkplug_b_pb2.py"}


def requirements(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def third_party(packages: list[str]) -> set[str]:
    names = set()
    for pkg in packages:
        for path in (ROOT / pkg).rglob("*.py"):
            if pkg == "contract" and path.name in EDGE_AND_GATEWAY_ONLY and not {"edge", "gateway"} & set(packages):
                continue
            names |= imported_packages(path)
    names -= OURS | set(sys.stdlib_module_names)
    return {DIST.get(n, n).lower() for n in names}


@pytest.mark.parametrize("part, packages, extras", [
    ("edge agent", ["contract", "edge"], ["edge"]),
    ("gateway", ["contract", "gateway"], ["gateway"]),
    ("simulators", ["contract", "simulators"], ["sim"]),
])
def test_each_part_declares_what_it_imports(part, packages, extras):
    missing = third_party(packages) - requirements(extras)
    assert not missing, f"the {part} imports {sorted(missing)} but pip install 'fieldlab[{extras[0]}]' lacks them"


def test_the_edge_does_not_install_the_gateways_packages():
    edge = requirements(["edge"])
    assert not {"amqtt", "influxdb-client", "grafana-client"} & edge
