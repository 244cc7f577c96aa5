"""``fieldlab dashboards push`` against an in-process stand-in of Grafana's HTTP API (grafana_standin.py).

Not a real Grafana: none can be installed here. The stand-in keeps Grafana's rules that push relies on
(bearer token, 404 for a missing data source / folder / dashboard, versions that increase on every
save, 412 for a stale version), so these tests show that push is idempotent and reports errors clearly.
"""
import json

import pytest

from contract.errors import ServiceError
from dashboards import DATASOURCE_UID
from dashboards.build import BUILDERS, dashboards
from dashboards.push import Datasource, Pusher
from fieldlab.cli import main

from .grafana_standin import GrafanaStandIn

TOKEN = "glsa_test"
UIDS = [m["uid"] for m in dashboards().values()]


@pytest.fixture
def grafana():
    g = GrafanaStandIn(token=TOKEN).start()
    yield g
    g.stop()


def test_first_push_creates_everything_second_changes_nothing(grafana, monkeypatch, capsys):
    monkeypatch.setenv("FIELDLAB_GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv("FIELDLAB_INFLUX_PASSWORD", "s3cret")
    args = ["dashboards", "push", "--url", grafana.url, "--influx-url", "http://influxdb:8086",
            "--influx-user", "grafana"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"datasource {DATASOURCE_UID}: created" in out and "folder fieldlab: created" in out
    for uid in UIDS:
        assert f"dashboard {uid}: created" in out
    ds = grafana.datasources[DATASOURCE_UID]
    assert (ds["type"], ds["url"], ds["user"], ds["jsonData"]["dbName"]) == ("influxdb", "http://influxdb:8086",
                                                                             "grafana", "fieldlab")
    assert ds["jsonData"]["version"] == "InfluxQL" and ds["secureJsonFields"] == {"password": True}
    assert all(grafana.dashboards[uid]["folderUid"] == "fieldlab" for uid in UIDS)
    assert {uid: d["dashboard"]["version"] for uid, d in grafana.dashboards.items()} == {u: 1 for u in UIDS}
    saves_after_first = len(grafana.saves())
    assert saves_after_first == 2 + len(UIDS)  # data source, folder, four dashboards

    assert main(args) == 0
    out = capsys.readouterr().out
    assert grafana.saves()[saves_after_first:] == [], "a second push must not save anything"
    assert f"datasource {DATASOURCE_UID}: exists" in out and "folder fieldlab: exists" in out
    for uid in UIDS:
        assert f"dashboard {uid}: unchanged" in out
    assert {uid: d["dashboard"]["version"] for uid, d in grafana.dashboards.items()} == {u: 1 for u in UIDS}


def test_a_changed_dashboard_is_updated_and_only_that_one(grafana):
    lines = []
    Pusher(grafana.url, TOKEN, out=lines.append).push(Datasource())
    # someone edits the losses dashboard in Grafana (a save: version 2)
    stored = grafana.dashboards["fieldlab-losses"]["dashboard"]
    status, _ = grafana.handle("POST", "/api/dashboards/db", "editor", {
        "dashboard": {**stored, "title": "edited by hand"}, "folderUid": "fieldlab"})
    assert status == 200 and grafana.dashboards["fieldlab-losses"]["dashboard"]["version"] == 2
    before = len(grafana.saves())
    result = Pusher(grafana.url, TOKEN, out=lines.append).push(Datasource())
    assert result["dashboard fieldlab-losses"] == "updated"
    assert [r for k, r in result.items() if k.startswith("dashboard") and k != "dashboard fieldlab-losses"] == \
        ["unchanged"] * (len(BUILDERS) - 1)
    assert grafana.saves()[before:] == [("POST", "/api/dashboards/db")]
    back = grafana.dashboards["fieldlab-losses"]["dashboard"]
    assert back["version"] == 3 and back["title"] == dashboards()["losses"]["title"]
    # and the next push leaves it alone
    assert Pusher(grafana.url, TOKEN, out=lines.append).push(Datasource())["dashboard fieldlab-losses"] == "unchanged"


def test_a_dashboard_in_another_folder_is_moved_back(grafana):
    Pusher(grafana.url, TOKEN, out=lambda s: None).push(None)
    grafana.dashboards["fieldlab-shift"]["folderUid"] = ""
    assert Pusher(grafana.url, TOKEN, out=lambda s: None).push(None)["dashboard fieldlab-shift"] == "updated"
    assert grafana.dashboards["fieldlab-shift"]["folderUid"] == "fieldlab"


def test_an_existing_datasource_is_left_alone(grafana):
    grafana.datasources[DATASOURCE_UID] = {"uid": DATASOURCE_UID, "name": "mine", "url": "http://db:8086", "id": 9}
    result = Pusher(grafana.url, TOKEN, out=lambda s: None).push(Datasource(url="http://other:8086"))
    assert result[f"datasource {DATASOURCE_UID}"] == "exists" and grafana.datasources[DATASOURCE_UID]["name"] == "mine"


def test_a_concurrent_edit_is_not_overwritten(grafana):
    """Push saves with the version it read; if Grafana's moved on meanwhile, Grafana says 412 and push stops."""
    pusher = Pusher(grafana.url, TOKEN, out=lambda s: None)
    pusher.push(None)
    model = {**dashboards()["overview"], "title": "new title"}
    real_get = pusher.api.dashboard.get_dashboard

    def get_then_someone_saves(uid):
        seen = real_get(uid)
        d = grafana.dashboards[uid]["dashboard"]
        grafana.handle("POST", "/api/dashboards/db", "editor", {"dashboard": dict(d), "folderUid": "fieldlab"})
        return seen

    pusher.api.dashboard.get_dashboard = get_then_someone_saves
    with pytest.raises(ServiceError, match=r"changed in Grafana meanwhile \(412"):
        pusher.push_dashboard(model)
    assert grafana.dashboards["fieldlab-overview"]["dashboard"]["title"] != "new title"


def test_wrong_token_gives_one_clear_line(grafana, monkeypatch, capsys):
    monkeypatch.setenv("FIELDLAB_GRAFANA_TOKEN", "glsa_wrong")
    assert main(["dashboards", "push", "--url", grafana.url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "401 Unauthorized" in err and "FIELDLAB_GRAFANA_TOKEN" in err, err
    assert grafana.saves() == []


def test_a_read_only_token_gives_one_clear_line(grafana, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("glsa_viewer\n")
    assert main(["dashboards", "push", "--url", grafana.url, "--token-file", str(token)]) == 2
    err = capsys.readouterr().err.strip()
    assert "403 Forbidden" in err and "Editor" in err and err.count("\n") == 0, err
    assert grafana.datasources == {} and grafana.dashboards == {}


def test_token_file_and_token_option(grafana, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FIELDLAB_GRAFANA_TOKEN", raising=False)
    assert main(["dashboards", "push", "--url", grafana.url, "--no-datasource", "--token", TOKEN]) == 0
    assert grafana.datasources == {} and len(grafana.dashboards) == len(BUILDERS)
    assert main(["dashboards", "push", "--url", grafana.url]) == 2
    assert "no Grafana token: set FIELDLAB_GRAFANA_TOKEN or give --token-file" in capsys.readouterr().err
    assert main(["dashboards", "push", "--url", grafana.url, "--token-file", str(tmp_path / "missing")]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_unreachable_grafana_gives_one_clear_line(capsys, monkeypatch):
    from fieldlab.broker import free_port

    monkeypatch.setenv("FIELDLAB_GRAFANA_TOKEN", TOKEN)
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["dashboards", "push", "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fieldlab dashboards: error: cannot reach Grafana at {url} (to read the data source): "
                   "Connection refused; check --url and that Grafana is running")


def test_bad_url_and_password_without_user(capsys, monkeypatch):
    monkeypatch.setenv("FIELDLAB_GRAFANA_TOKEN", TOKEN)
    assert main(["dashboards", "push", "--url", "localhost:3000"]) == 2
    assert "write Grafana's address like http://localhost:3000" in capsys.readouterr().err
    monkeypatch.setenv("FIELDLAB_INFLUX_PASSWORD", "x")
    assert main(["dashboards", "push", "--url", "http://localhost:3000"]) == 2
    assert "without --influx-user" in capsys.readouterr().err


def test_build_command_writes_and_checks(tmp_path, capsys):
    assert main(["dashboards", "build", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.json", "losses.json", "machine.json", "overview.json",
                                                          "shift.json"]
    assert json.loads((tmp_path / "machine.json").read_text())["uid"] == "fieldlab-machine"
    assert main(["dashboards", "build", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "shift.json").write_text("{}")
    assert main(["dashboards", "build", "--out", str(tmp_path), "--check"]) == 2
    assert "out of date: shift; regenerate with: fieldlab dashboards build" in capsys.readouterr().err
