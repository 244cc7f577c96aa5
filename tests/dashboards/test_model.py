"""The generated dashboards are valid Grafana dashboard models, and the committed JSON is what the code makes."""
import json
import re
from pathlib import Path

import pytest
import yaml

from dashboards import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID
from dashboards.build import BUILDERS, JSON_DIR, PROVISIONING_DIR, REGENERATE, dashboards, stale, write
from dashboards.model import WINDOWS

from .grafana_macros import panel_targets, used_variables

MODELS = dashboards()
PANEL_TYPES = {"stat", "gauge", "bargauge", "timeseries", "state-timeline", "table", "barchart", "text"}
UNITS = {"percentunit", "s", "none", "celsius", "kwatt", "velocitymms"}
MEASUREMENTS = {"kpi", "line_kpi", "state", "counts", "telemetry", "agent"}  # docs/storage.md


@pytest.fixture(params=list(MODELS))
def model(request):
    return MODELS[request.param]


def test_five_dashboards_with_stable_unique_uids():
    uids = [m["uid"] for m in MODELS.values()]
    assert uids == ["fieldlab-overview", "fieldlab-machine", "fieldlab-losses", "fieldlab-shift", "fieldlab-lines"]
    assert dashboards() == MODELS, "generating twice must give the same JSON"


def test_dashboard_fields(model):
    assert 36 <= model["schemaVersion"] <= 41  # Grafana 10/11
    assert model["title"].startswith("fieldlab: ") and model["tags"] == ["fieldlab"]
    assert "id" not in model, "an id in the JSON would clash with other Grafana instances' ids"
    assert re.fullmatch(r"[a-z0-9-]{1,40}", model["uid"])


def test_panels_have_unique_ids_and_known_types(model):
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    assert {p["type"] for p in model["panels"]} <= PANEL_TYPES
    assert all(p["title"] and p.get("description") for p in model["panels"])


def test_panels_fit_the_grid_without_overlapping(model):
    cells = {}
    for p in model["panels"]:
        g = p["gridPos"]
        assert set(g) == {"x", "y", "w", "h"} and all(isinstance(v, int) for v in g.values()), p["title"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1
        assert g["x"] + g["w"] <= 24, f"{p['title']!r} is wider than the 24 columns"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_targets_are_influxql_on_the_fieldlab_datasource(model):
    for p, t in panel_targets(model):
        assert p["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}
        assert t["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}
        assert re.fullmatch(r"[A-Z]", t["refId"])
        assert t["rawQuery"] is True and t["resultFormat"] in ("time_series", "table")
        q = t["query"]
        assert q.startswith("SELECT ") and "$timeFilter" in q, f"{p['title']!r}: {q}"
        assert set(re.findall(r'FROM "(\w+)"', q)) <= MEASUREMENTS, q
        if "GROUP BY time(" in q:
            assert "$__interval" in q and "fill(" in q, q
    for p in model["panels"]:
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]


def test_line_figures_come_from_line_kpi_never_a_mean_of_machines(model):
    for p, t in panel_targets(model):
        q = t["query"]
        assert not re.search(r'mean\("(oee|availability|performance|quality)"\)', q), q
        if "line" in p["title"].lower() and "oee" in q:
            assert 'FROM "line_kpi"' in q, f"{p['title']!r} should read line_kpi: {q}"


def test_every_variable_used_is_defined(model):
    names = [v["name"] for v in model["templating"]["list"]]
    assert len(names) == len(set(names))
    assert names[:3] == ["site", "line", "machine"]
    defined = set()
    for v in model["templating"]["list"]:  # a variable's query may use only the ones before it
        assert used_variables(v.get("query", "")) <= defined, v
        defined.add(v["name"])
    for p, t in panel_targets(model):
        assert used_variables(t["query"]) <= defined, f"{p['title']!r}: {t['query']}"
    for v in model["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == DATASOURCE_UID and v["query"].startswith("SHOW TAG VALUES")
        else:
            assert v["name"] == "window" and {o["value"] for o in v["options"]} <= set(WINDOWS)
            assert v["current"]["value"] in [o["value"] for o in v["options"]]


def test_units_and_thresholds_are_sane(model):
    for p in model["panels"]:
        configs = [p["fieldConfig"]["defaults"]] + [
            {pr["id"]: pr["value"] for pr in o["properties"]} for o in p["fieldConfig"]["overrides"]]
        for c in configs:
            if "unit" in c:
                assert c["unit"] in UNITS, (p["title"], c["unit"])
            if c.get("unit") == "percentunit":  # fractions 0..1 (docs/storage.md), not percent
                assert (c["min"], c["max"]) == (0, 1), p["title"]
            if "thresholds" in c:
                steps = c["thresholds"]["steps"]
                assert steps[0]["value"] is None, p["title"]
                values = [s["value"] for s in steps[1:]]
                assert values == sorted(values), p["title"]
                if c.get("unit") == "percentunit":
                    assert all(0 < v < 1 for v in values), p["title"]


def test_committed_json_is_what_the_code_generates():
    assert not stale(), f"dashboards/json is out of date ({stale()}); regenerate it with: {REGENERATE}"


def test_the_staleness_check_sees_an_edit_and_an_extra_file(tmp_path):
    write(tmp_path)
    assert stale(tmp_path) == []
    path = tmp_path / "losses.json"
    text = path.read_text()
    assert 'last(\\"quality' in text
    path.write_text(text.replace('last(\\"quality', 'last(\\"qualty', 1))
    (tmp_path / "old.json").write_text("{}")
    assert stale(tmp_path) == ["losses", "old"]


def test_build_writes_what_is_committed(tmp_path):
    written = write(tmp_path)
    assert [p.name for p, changed in written] == [f"{n}.json" for n in BUILDERS] and all(c for _, c in written)
    for p, _ in written:
        assert json.loads(p.read_text()) == json.loads((JSON_DIR / p.name).read_text())
    assert not any(changed for _, changed in write(tmp_path)), "a second build must change nothing"


def test_provisioning_files_agree_with_the_dashboards_and_compose_paths():
    ds = yaml.safe_load((PROVISIONING_DIR / "datasources" / "fieldlab.yaml").read_text())
    assert ds["apiVersion"] == 1 and len(ds["datasources"]) == 1
    d = ds["datasources"][0]
    assert d["uid"] == DATASOURCE_UID and d["type"] == "influxdb"
    assert d["url"] == "http://influxdb:8086", "inside compose, the database is the service 'influxdb'"
    assert d["jsonData"]["dbName"] == "fieldlab" and d["jsonData"]["version"] == "InfluxQL"
    assert d["user"] == "${INFLUXDB_READ_USER}"
    assert d["secureJsonData"]["password"] == "${INFLUXDB_READ_USER_PASSWORD}"
    prov = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "fieldlab.yaml").read_text())
    assert prov["apiVersion"] == 1 and len(prov["providers"]) == 1
    p = prov["providers"][0]
    assert p["type"] == "file" and p["folder"] == FOLDER_TITLE and p["folderUid"] == FOLDER_UID
    assert p["options"]["path"] == "/var/lib/grafana/dashboards/fieldlab"
    # the directory the provider reads holds the committed JSON (compose mounts dashboards/json there)
    assert sorted(x.name for x in JSON_DIR.glob("*.json")) == sorted(f"{n}.json" for n in BUILDERS)
    # no secrets: every credential in the data source file is an environment reference
    text = (PROVISIONING_DIR / "datasources" / "fieldlab.yaml").read_text()
    assert not re.search(r"(password|user):\s*(?!\$\{)[^\s#]", text)


def test_the_package_ships_json_and_provisioning():
    import tomllib
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["dashboards"]
    assert "json/*.json" in data and "provisioning/*/*.yaml" in data
    assert "dashboards*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(r.startswith("grafana-client") for r in project["project"]["optional-dependencies"]["dashboards"])
    test_extra = project["project"]["optional-dependencies"]["test"][0]
    assert re.fullmatch(r"fieldlab\[(.*)\]", test_extra) and "dashboards" in test_extra.split("[")[1], test_extra


def test_dashboards_import_only_the_standard_library_contract_and_grafana_client():
    """No gateway internals: the dashboards depend on the stored data's names only (docs/storage.md)."""
    import sys

    from tests.contract.test_layering import imported_packages

    pkg = Path(__file__).resolve().parents[2] / "dashboards"
    names = set().union(*(imported_packages(p) for p in pkg.rglob("*.py")))
    assert names - set(sys.stdlib_module_names) <= {"contract", "grafana_client"}, names


def test_the_window_variable_offers_exactly_the_windows_the_gateway_stores():
    from gateway.engine import WINDOW_NAMES

    assert sorted(WINDOWS) == sorted(WINDOW_NAMES)


def test_a_table_per_machine_groups_by_its_full_path(model):
    """Issue 13, defect 4: the agents' last("online") grouped by machine name only, so cnc-01 of two sites (or
    two lines) merged into one row, whichever reported last."""
    for p, t in panel_targets(model):
        for clause in re.findall(r'GROUP BY ([^)$]*"machine")', t["query"]):
            assert clause.endswith('"site", "area", "line", "machine"'), f"{p['title']!r}: {t['query']}"
