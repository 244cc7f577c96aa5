"""Presenter mode (issue 14, item 2): a scenario started from the page, and the scenario message of
`fieldlab sim` and its schema. A real `fieldlab sim` / `fieldlab demo` process, the gateway and its web app on a
real Mosquitto, a real headless Chromium (tests/gateway/test_presenter.py's Browser).

The restart (docs/contract.md, Simulator scenario): the simulator stops its machines and their data, sends the
gateway's `forget` for each, and starts the new scenario's machines with a new clock; so the machines the gateway
shows afterwards are the new scenario's, each with KPIs from the new start only.
"""
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import jsonschema
import pytest

import contract
from contract import Kind, MachineRef
from contract.errors import ContractError
from contract.sim import FAULT_NAMES, MAX_NEXT, decode_scenario, encode_scenario, scenario_topic, sim_command_topic
from fieldlab.broker import free_port
from tests.gateway.test_dashboard import ARTIFACTS
from tests.gateway.test_presenter import browser, presenter  # noqa: F401  (fixtures)
from tests.helpers import validate_all, wait_until

BOTTLENECK = ["moulder-01", "assembly-01", "filler-01"]
SCHEMAS = Path(contract.__file__).parent / "schemas"
SCHEMA = json.loads((SCHEMAS / "scenario.json").read_text())


def _sim(mosquitto, site, *more) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fieldlab", "sim", "--speed", "600", "--one-server",
                             "--opcua-port", str(free_port()), "--site", site, "--area", "a", "--line", "l", *more],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode in (0, -15), out
    return out


def _fresh(gw, site: str, start: float) -> bool:
    """The gateway shows exactly the bottleneck line's machines, each with KPIs from ``start`` on only."""
    rows = {r["machine"].machine: r for r in gw.rows}
    return sorted(rows) == sorted(BOTTLENECK) and all(
        r["machine"].site == site and r.get("ts") is not None and r["window"]["start"] >= start - 1.0
        for r in rows.values())


@pytest.mark.timeout(120)
async def test_a_scenario_started_from_the_page_restarts_the_simulation(presenter, browser, mosquitto, site,
                                                                        recorder):
    """~20 s. `fieldlab sim --scenario bearing-wear`; the page (not logged in: refused, nothing sent; logged
    in: sent) starts bottleneck-line; the scenario message and the machines' KPIs are the new scenario's."""
    gw, http = presenter
    heard = recorder(mosquitto.url, f"fieldlab/v1/_sys/sim/{site}/#")
    sim = _sim(mosquitto, site, "--scenario", "bearing-wear", "--duration", "100", "--broker", str(mosquitto.url),
               "--publish", str(mosquitto.url))
    try:
        cnc = MachineRef(site, "a", "l", "cnc-01")
        assert await wait_until(lambda: gw.row_of(cnc) and http.scenarios.get(site), 30), sim.poll()
        await browser.goto(f"{http.url}/presenter?lang=en&poll")
        await browser.until("document.getElementById('scenario-name').textContent === 'bearing-wear'")
        offered = await browser.until("[...document.querySelectorAll('#scenarios li')].map(li => li.dataset.scenario)")
        assert offered == ["bearing-wear", "bottleneck-line", "normal-shift", "quality-drift-after-changeover"]
        assert await browser.js("document.querySelector('#scenarios li[aria-current=true]').dataset.scenario") == \
            "bearing-wear"
        assert "moulder-01" in await browser.js(
            "document.querySelector('#scenarios li[data-scenario=\"bottleneck-line\"] p').textContent")
        start = "document.querySelector('#scenarios button[data-start=\"bottleneck-line\"]').click()"
        # a start for a file path (not a scenario it offers) is ignored: the simulation runs on
        bad = {"v": 1, "cmd": "start", "args": {"scenario": "/etc/passwd", "by": "mallory"}}
        heard.publish(sim_command_topic(site), json.dumps(bad).encode())
        # not logged in: refused, nothing sent
        await browser.js(start)
        assert await browser.until("document.body.dataset.lastStatus") == "401"
        assert "Log in first" in await browser.js("document.getElementById('message').textContent")
        await asyncio.sleep(0.5)
        assert heard.got(sim_command_topic(site)) == [bad]
        assert http.scenarios[site]["name"] == "bearing-wear"
        # logged in with the token link: sent, and the simulator restarts with bottleneck-line
        await browser.goto(f"{http.login_url}&next=/presenter%3Flang%3Den%26poll")
        await browser.until("document.getElementById('who').textContent !== ''")
        await browser.until("document.querySelectorAll('#scenarios button').length === 4")
        asked = time.time()
        await browser.js(start)
        assert await browser.until("document.body.dataset.lastStatus") == "200"
        assert "Scenario bottleneck-line starts" in await browser.js("document.getElementById('message').textContent")
        assert heard.got(sim_command_topic(site)) == [
            bad, {"v": 1, "cmd": "start", "args": {"scenario": "bottleneck-line", "by": "presenter"}}]
        assert await wait_until(lambda: (s := http.scenarios[site])["name"] == "bottleneck-line", 20), sim.poll()
        new = http.scenarios[site]
        assert new["machines"] == BOTTLENECK and new["running"]
        # a new clock at the real time of the restart (the old one was hours ahead at 600x)
        assert asked - 1 <= new["start"] <= time.time() and new["ts"] >= new["start"]
        # its script from its own start: moulder-01 breaks down at 3 h, filler-01 at 6 h (if not passed yet)
        assert [(e["ts"] - new["start"], e["machine"]) for e in new["next"]] == [
            (3 * 3600, "moulder-01"), (6 * 3600, "filler-01")][-len(new["next"]):], new
        # the machines: exactly the new scenario's, each with KPIs from the new start only
        assert await wait_until(lambda: _fresh(gw, site, new["start"]), 30), [
            (r["machine"].machine, r["window"]) for r in gw.rows]
        await browser.until("document.getElementById('scenario-name').textContent === 'bottleneck-line'")
        await browser.until(f"JSON.stringify([...document.querySelectorAll('#machines .card')].map(c => "
                            f"c.dataset.id.split('/').pop()).sort()) === '{json.dumps(sorted(BOTTLENECK))}'".replace(
                                ", ", ","), 15)
        await browser.until("[...document.querySelectorAll('#machines [data-kpi=state]')].every(e => e.dataset.state)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await browser.screenshot(ARTIFACTS / "presenter-scenario.png")  # for people (a test artifact)
    finally:
        out = _stop(sim)
    assert "presenter started scenario bottleneck-line" in out, out
    assert "simulator command ignored: start '/etc/passwd'" in out and "mallory" not in out, out
    said = [decode_scenario(p) for t, p, _ in heard.messages if t == scenario_topic(site)]
    assert said[-1]["name"] == "bottleneck-line" and not said[-1]["running"], said[-1]
    # every message of the simulation's topics fits its schema: scenario.json, cmd.json (start), sim-machines.json
    checked = validate_all(heard.messages)
    assert (checked["scenario.json"], checked["cmd.json"], checked["sim-machines.json"] > 0) == (len(said), 2, True)


@pytest.mark.timeout(60)
def test_fieldlab_sim_publishes_the_scenario_message(mosquitto, site, recorder):
    """~5 s. `fieldlab sim --scenario … --publish` (no command broker): the scenario message about once a
    second while it runs, the last one saying it stopped, every one valid against contract/schemas/scenario.json."""
    heard = recorder(mosquitto.url, scenario_topic(site))
    sim = _sim(mosquitto, site, "--scenario", "normal-shift", "--duration", "3", "--publish", str(mosquitto.url))
    out = sim.communicate(timeout=40)[0].decode()
    assert sim.returncode == 0, out
    got = [decode_scenario(p) for _, p, _ in heard.messages]
    assert 2 <= len(got) <= 6, got
    first, last = got[0], got[-1]
    assert all(m["running"] for m in got[:-1]) and not last["running"], got
    assert first["name"] == "normal-shift" and first["machines"] == ["cnc-01", "moulder-01", "filler-01"]
    assert (first["site"], first["area"], first["line"], first["speed"]) == (site, "a", "l", 600)
    assert first["end"] - first["start"] == 8 * 3600
    assert last["ts"] - first["start"] >= 2 * 600  # 3 s at 600x, within a second's messages
    assert [o["name"] for o in first["scenarios"]][:2] == ["bearing-wear", "bottleneck-line"]
    assert validate_all(heard.messages) == {"scenario.json": len(got)}


@pytest.mark.timeout(90)
async def test_fieldlab_demo_presenter_starts_a_scenario(own_mosquitto, recorder):
    """~20 s. `fieldlab demo --presenter`: the API's start (refused without a login) restarts the demo's
    simulation and edge agents with bottleneck-line; the demo's own gateway forgets the old machines."""
    heard = recorder(own_mosquitto.url, scenario_topic("demo"))
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}"
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fieldlab", "demo", "--presenter", "--scenario", "bearing-wear", "--speed", "600",
        "--duration", "60", "--broker", str(own_mosquitto.url), "--opcua-port", str(free_port()),
        "--http-port", str(http_port), env={**os.environ, "FIELDLAB_WEB_TOKEN": "demo-token"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # a cookie for an IP
            async def get(path):
                async with s.get(url + path) as r:
                    return await r.json()

            async def machines():
                try:
                    return await get("/api/machines")
                except aiohttp.ClientError:
                    return []
            deadline = time.monotonic() + 40
            while len(await machines()) < 2 or not (await get("/api/presenter"))["scenario"]:
                assert time.monotonic() < deadline, "the demo did not come up"
                await asyncio.sleep(0.3)
            origin = {"Origin": url}
            async with s.post(url + "/api/presenter/scenario", json={"scenario": "bottleneck-line"},
                              headers=origin) as r:
                assert r.status == 401, await r.text()
            async with s.post(url + "/login", json={"token": "demo-token"}, headers=origin) as r:
                assert r.status == 200
            async with s.post(url + "/api/presenter/scenario", json={"scenario": "../../etc/passwd"},
                              headers=origin) as r:
                assert r.status == 400 and "bottleneck-line" in (await r.json())["error"]
            asked = time.time()
            async with s.post(url + "/api/presenter/scenario", json={"scenario": "bottleneck-line"},
                              headers=origin) as r:
                assert r.status == 200, await r.text()
            deadline = time.monotonic() + 40
            while True:
                info = (await get("/api/presenter"))["scenario"]
                rows = await machines()
                if info["name"] == "bottleneck-line" and sorted(m["machine"] for m in rows) == sorted(BOTTLENECK) \
                        and all(m["ts"] is not None and m["window"]["start"] >= info["start"] - 1 for m in rows):
                    break
                assert time.monotonic() < deadline, (info, [(m["machine"], m.get("window")) for m in rows])
                await asyncio.sleep(0.3)
            assert info["start"] >= asked - 1 and info["machines"] == BOTTLENECK
        demo.send_signal(2)
        out = (await asyncio.wait_for(demo.communicate(), 40))[0].decode()
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    assert demo.returncode == 0, out
    assert "presenter: presenter started scenario bottleneck-line" in out, out
    final = out.rsplit("final KPIs", 1)[1]
    assert all(m in final for m in BOTTLENECK) and "cnc-01" not in final, final
    assert "expected (scenario bottleneck-line" in final, final
    last = decode_scenario(heard.messages[-1][1])
    assert last["name"] == "bottleneck-line" and not last["running"]


# --------------------------------------------------------------------------- the schema and the decoder

def _valid() -> dict:
    t0 = 1_800_000_000.0
    return json.loads(encode_scenario(
        ts=t0 + 60, speed=60, site="s", area="a", line="l", machines=["cnc-01", "press-01"], name="x",
        description="d", start=t0, end=t0 + 3600,
        next=[{"ts": t0 + 120, "machine": "cnc-01", "fault": "breakdown", "args": {"minutes": 5}}],
        scenarios=[{"name": "bottleneck-line", "description": "a line"}]))


def _set(path, value):
    def change(doc):
        *head, last = path
        for k in head:
            doc = doc[k]
        if value is KeyError:
            del doc[last]
        else:
            doc[last] = value
    return change


MUTATIONS = [  # (what, change): each gives the same verdict from the schema and the decoder
    ("as is", lambda d: None),
    ("v 2", _set(["v"], 2)), ("v true", _set(["v"], True)), ("no v", _set(["v"], KeyError)),
    ("ts string", _set(["ts"], "1800000000")), ("ts ms", _set(["ts"], 1_800_000_000_000)),
    ("ts 1970", _set(["ts"], 5.0)), ("ts bool", _set(["ts"], True)), ("no ts", _set(["ts"], KeyError)),
    ("speed 0", _set(["speed"], 0)), ("speed -1", _set(["speed"], -1)), ("speed 0.5", _set(["speed"], 0.5)),
    ("running 1", _set(["running"], 1)), ("no running", _set(["running"], KeyError)),
    ("site space", _set(["site"], "a b")), ("site _", _set(["site"], "_sys")), ("no line", _set(["line"], KeyError)),
    ("machine /", _set(["machines", 0], "cnc/01")), ("machines empty", lambda d: d.update(machines=[], next=[])),
    ("machines string", _set(["machines"], "cnc-01")),
    ("name null", _set(["name"], None)), ("name 5", _set(["name"], 5)), ("no name", _set(["name"], KeyError)),
    ("description list", _set(["description"], ["d"])), ("start null", _set(["start"], None)),
    ("start ms", _set(["start"], 1.8e12)), ("end string", _set(["end"], "8h")), ("no end", _set(["end"], KeyError)),
    ("next not list", _set(["next"], {})), ("no next", _set(["next"], KeyError)),
    ("next fault", _set(["next", 0, "fault"], "explode")), ("next no args", _set(["next", 0, "args"], KeyError)),
    ("next ts ms", _set(["next", 0, "ts"], 1.8e12)), ("next args list", _set(["next", 0, "args"], [])),
    ("next 11", lambda d: d.__setitem__("next", d["next"] * (MAX_NEXT + 1))),
    ("next 10", lambda d: d.__setitem__("next", d["next"] * MAX_NEXT)),
    ("extra key", _set(["colour"], "red")),
    ("scenarios empty", _set(["scenarios"], [])), ("no scenarios", _set(["scenarios"], KeyError)),
    ("scenario name path", _set(["scenarios", 0, "name"], "../x")),
    ("scenario no description", _set(["scenarios", 0, "description"], KeyError)),
    ("scenarios not list", _set(["scenarios"], {"name": "x"})),
]


@pytest.mark.parametrize("what,change", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_the_scenario_schema_and_decoder_agree(what, change):
    """< 1 s. The same verdict from contract/schemas/scenario.json and contract.sim.decode_scenario."""
    doc = _valid()
    change(doc)
    by_schema = jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)
    try:
        decode_scenario(json.dumps(doc))
        by_decoder = True
    except ContractError:
        by_decoder = False
    assert by_schema == by_decoder, (what, by_schema, by_decoder)


def test_what_the_scenario_schema_cannot_express_the_decoder_refuses_and_the_schema_says():
    doc = _valid()
    doc["next"][0]["machine"] = "filler-01"  # not one of machines
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)
    with pytest.raises(ContractError, match=r"next\[0\]"):
        decode_scenario(json.dumps(doc))
    assert "next[i].machine is one of machines" in SCHEMA["description"]
    assert SCHEMA["properties"]["next"]["items"]["properties"]["fault"]["enum"] == list(FAULT_NAMES)
    for bad in ('{"v": 1, "ts": 1' + "0" * 400 + "}", '{"v": 1, "name": "\\ud800"}'):  # I-JSON
        with pytest.raises(ContractError):
            decode_scenario(bad)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_start_command_and_every_shipped_scenario_fit_the_contract():
    from contract.sim import encode_start
    from simulators.scenario import offered

    cmd = json.loads((SCHEMAS / "cmd.json").read_text())
    jsonschema.validate(json.loads(encode_start("bottleneck-line", "anna")), cmd)
    assert contract.decode(Kind.CMD, encode_start("bottleneck-line", "anna")).args == {
        "scenario": "bottleneck-line", "by": "anna"}
    doc = _valid()
    doc["scenarios"] = offered()
    jsonschema.validate(doc, SCHEMA)
    assert [o["name"] for o in decode_scenario(json.dumps(doc))["scenarios"]] == [
        "bearing-wear", "bottleneck-line", "normal-shift", "quality-drift-after-changeover"]


@pytest.mark.timeout(30)
async def test_the_start_is_sent_only_for_a_scenario_a_running_simulation_offers(presenter, site, publisher, recorder,
                                                                                  mosquitto):
    """~1 s. POST /api/presenter/scenario: 404 while no running simulation offers scenarios (none heard, or its
    last message said it stopped), 400 for a name it does not offer, else the start command on the sim's topic."""
    gw, http = presenter
    sent = recorder(mosquitto.url, sim_command_topic(site))
    t0 = 1_800_000_000.0

    def say(running: bool, scenarios):
        publisher(scenario_topic(site), encode_scenario(ts=t0, speed=60, site=site, area="a", line="l",
                                                        machines=["cnc-01"], running=running, scenarios=scenarios))

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        origin = {"Origin": http.url}

        async def start(name):
            async with s.post(f"{http.url}/api/presenter/scenario", json={"scenario": name}, headers=origin) as r:
                return r.status, (await r.json())

        async with s.post(f"{http.url}/login", json={"token": "s3cret-token"}, headers=origin) as r:
            assert r.status == 200
        assert (await start("normal-shift"))[0] == 404  # no simulation heard
        say(True, None)  # one that offers none (fieldlab sim without a command broker would)
        assert await wait_until(lambda: http.scenarios.get(site), 5)
        assert (await start("normal-shift"))[0] == 404
        say(False, [{"name": "normal-shift", "description": "d"}])  # stopped
        assert await wait_until(lambda: not http.scenarios[site]["running"], 5)
        assert (await start("normal-shift"))[0] == 404
        say(True, [{"name": "normal-shift", "description": "d"}])
        assert await wait_until(lambda: http.scenarios[site]["running"], 5)
        status, body = await start("bearing-wear")
        assert (status, body["error"]) == (400, "scenario must be one of normal-shift")
        assert await start("normal-shift") == (200, {"sent": "start", "scenario": "normal-shift",
                                                      "topic": sim_command_topic(site)})
    assert sent.wait_for(lambda r: r.messages, 5)
    assert sent.got(sim_command_topic(site)) == [{"v": 1, "cmd": "start", "args": {"scenario": "normal-shift",
                                                                                   "by": "presenter"}}]
