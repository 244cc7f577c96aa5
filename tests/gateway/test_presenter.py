"""Presenter mode (issue 14, item 2) in a real headless Chromium driven over the DevTools protocol: a simulated
machine (`fieldlab sim`, a real process), the gateway and its web app on a real Mosquitto. A fault button sends a
cmd message; the machine breaks down as the injection says; without the login the click is refused and nothing
is sent. The simulated clock, scenario and next scripted faults come from the scenario message (contract/sim.py).
"""
import asyncio
import itertools
import json
import re
import subprocess
import sys
import time

import aiohttp
import pytest

from contract import Kind, MachineRef
from contract.sim import FAULT_NAMES, decode_scenario, encode_scenario, scenario_topic
from fieldlab.broker import free_port
from gateway.auth import Auth
from gateway.http import HttpEndpoint
from gateway.service import Gateway
from tests.gateway.test_dashboard import ARTIFACTS, chromium
from tests.helpers import wait_until


class Browser:
    """Headless Chromium over the DevTools protocol (one page): ``goto``, ``js`` (an expression's value)."""

    async def start(self, tmp_path) -> "Browser":
        self.proc = await asyncio.create_subprocess_exec(
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path}/chromium",
            "--remote-debugging-port=0", "--window-size=1600,1000", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        endpoint = None
        while endpoint is None:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), 20)).decode()
            assert line, "chromium ended before it listened for DevTools"
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            endpoint = found and found.group(1)
        asyncio.get_running_loop().create_task(self._drain())
        self.http = aiohttp.ClientSession()
        base = "http://" + endpoint.split("/")[2]
        async with self.http.get(base + "/json/list") as r:
            page = next(t for t in await r.json() if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.ids = itertools.count(1)
        self.errors: list[dict] = []  # the page's uncaught exceptions and console errors
        await self.send("Runtime.enable")
        return self

    async def _drain(self):
        while await self.proc.stderr.readline():
            pass

    async def send(self, method: str, **params) -> dict:
        n = next(self.ids)
        await self.ws.send_json({"id": n, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 20)
            if msg.get("method") == "Runtime.exceptionThrown" or (
                    msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error"):
                self.errors.append(msg["params"])
            if msg.get("id") == n:
                assert "error" not in msg, msg
                return msg["result"]

    async def js(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def until(self, expression: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"not within {timeout} s: {expression}")

    async def screenshot(self, path) -> None:
        import base64

        path.write_bytes(base64.b64decode((await self.send("Page.captureScreenshot"))["data"]))

    async def close(self) -> None:
        await self.http.close()
        self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def browser(tmp_path):
    b = await Browser().start(tmp_path)
    yield b
    await b.close()
    assert b.errors == [], b.errors


@pytest.fixture
async def presenter(mosquitto, site):
    """The gateway and its web app in presenter mode, with a known token."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.25, client_id=f"gw-{site}")
    http = HttpEndpoint(gw, "127.0.0.1", 0, auth=Auth(token="s3cret-token"), presenter=True)
    await gw.start()
    await http.start()
    yield gw, http
    await http.stop()
    await gw.stop()


def shown(card: str) -> str:
    """A JavaScript expression: the machine card's shown figures, as an object."""
    return (f"(() => {{ const c = document.querySelector('[data-id=\"{card}\"]'); if (!c) return null; "
            "const k = n => c.querySelector(`[data-kpi=\"${n}\"]`); return {state: k('state').dataset.state, "
            "availability: k('availability').textContent, breakdown_s: Number(k('breakdown_min').dataset.seconds)}; })()")


@pytest.mark.timeout(120)
async def test_a_fault_button_breaks_the_machine_down_and_needs_the_login(presenter, browser, mosquitto, site,
                                                                          recorder, tmp_path):
    gw, http = presenter
    ref = MachineRef(site, "a", "l", "cnc-01")
    cmds = recorder(mosquitto.url, ref.topic(Kind.CMD))
    sim = subprocess.Popen([sys.executable, "-m", "fieldlab", "sim", "--machines", "1", "--speed", "120",
                            "--duration", "100", "--one-server", "--opcua-port", str(free_port()),
                            "--broker", str(mosquitto.url), "--publish", str(mosquitto.url), "--site", site,
                            "--area", "a", "--line", "l"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert await wait_until(lambda: (r := gw.row_of(ref)) and r.get("state_name") == "Execute", 30), \
            sim.poll()
        # not logged in: the page shows the buttons, the click is refused, nothing is sent
        await browser.goto(f"{http.url}/presenter?lang=en&poll")
        await browser.until(f"{shown(ref.path)} !== null")
        # no scenario message from `fieldlab sim`: the clock is the machine's latest data time
        assert await browser.until("document.getElementById('elapsed').textContent") == \
            "time of the machines' latest data"
        assert re.fullmatch(r"\d{1,2}:\d\d:\d\d( [AP]M)?", await browser.js("document.getElementById('clock').textContent"))
        await browser.js(f"document.querySelector('[data-id=\"{ref.path}\"] button[data-fault=breakdown]').click()")
        assert await browser.until("document.body.dataset.lastStatus") == "401"
        assert "Log in first" in await browser.js("document.getElementById('message').textContent")
        await asyncio.sleep(1.0)
        assert cmds.messages == []
        # with the token link: logged in, back on the page, and the click takes
        await browser.goto(f"{http.login_url}&next=/presenter%3Flang%3Den%26poll")
        assert await browser.js("location.pathname + location.search") == "/presenter?lang=en&poll"
        await browser.until(f"{shown(ref.path)} !== null && document.getElementById('who').textContent !== ''")
        await browser.until(f"{shown(ref.path)}.state === 'Execute'")  # (not in a breakdown of its own)
        before = await browser.js(shown(ref.path))
        await browser.js(f"document.querySelector('[data-id=\"{ref.path}\"] button[data-fault=breakdown]').click()")
        assert await browser.until("document.body.dataset.lastStatus") == "200"
        assert "Breakdown sent to cnc-01" in await browser.js("document.getElementById('message').textContent")
        assert [json.loads(p) for _, p, _ in cmds.messages] == [{"v": 1, "cmd": "breakdown", "args": {"minutes": 5}}]
        # as the injection predicts: Holding, Held (reason 101) for 5 simulated minutes, Unholding, Execute again
        await browser.until(f"['Holding', 'Held'].includes({shown(ref.path)}.state)", 10)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await browser.screenshot(ARTIFACTS / "presenter.png")  # for people (a test artifact)
        await browser.until(f"{shown(ref.path)}.state === 'Execute' && {shown(ref.path)}.breakdown_s >= "
                            f"{before['breakdown_s'] + 300}", 20)
        after = await browser.js(shown(ref.path))
        assert float(after["availability"].rstrip(" %")) < float(before["availability"].rstrip(" %")), (before, after)
        pieces = gw.timeline(ref, window="since_start")["pieces"]
        injected = [p for p in pieces if p["category"] == "breakdown" and p["reason"] == 101
                    and abs(p["end"] - p["start"] - 304) < 1.0]  # Holding 2 s + Held 300 s + Unholding 2 s
        assert len(injected) == 1, pieces
        # logged out: refused again
        await browser.js("document.getElementById('logout').click()")
        await browser.until("document.getElementById('login').hidden === false")
        await browser.js(f"document.querySelector('[data-id=\"{ref.path}\"] button[data-fault=reset]').click()")
        assert await browser.until("document.body.dataset.lastStatus !== '200' && document.body.dataset.lastStatus") \
            == "401"
        assert len(cmds.messages) == 1
    finally:
        sim.terminate()
        out = sim.communicate(timeout=20)[0].decode()
    assert sim.returncode in (0, -15), out


@pytest.mark.timeout(60)
async def test_the_page_shows_the_simulated_clock_scenario_and_next_faults(presenter, browser, site, publisher):
    """What the simulation says about itself (its retained scenario message) on the big screen."""
    gw, http = presenter
    t0 = 1_800_000_000.0
    publisher(scenario_topic(site), encode_scenario(
        ts=t0 + 3600, speed=60, site=site, area="a", line="l", machines=["cnc-01", "press-01"], name="bearing-wear",
        description="A bearing wears out on cnc-01.", start=t0, end=t0 + 8 * 3600,
        next=[{"ts": t0 + 3 * 3600, "machine": "cnc-01", "fault": "breakdown", "args": {"minutes": 18}},
              {"ts": t0 + 2 * 3600, "machine": "press-01", "fault": "material", "args": {}}]))
    await browser.goto(f"{http.url}/presenter?lang=en&poll")
    await browser.until("document.getElementById('scenario-name').textContent === 'bearing-wear'")
    events = await browser.js("[...document.querySelectorAll('#next li')].map(li => li.children[1].textContent)")
    # soonest first; "in N min" counts down at the simulation's speed (60x: a minute per second)
    assert [re.sub(r"in \d+ min", "in N min", e) for e in events] == ["press-01: Material shortage in N min",
                                                                     "cnc-01: Breakdown in N min"], events
    assert 55 <= int(re.search(r"in (\d+) min", events[0]).group(1)) <= 60, events
    clock = await browser.js("document.getElementById('clock').textContent")
    assert re.fullmatch(r"\d{1,2}:\d\d:\d\d( [AP]M)?", clock), clock
    assert "1:0" in await browser.js("document.getElementById('elapsed').textContent")  # 1:00 h simulated
    # the page moves the clock on at the simulation's speed between messages (60x: a minute per second)
    await asyncio.sleep(2.2)
    await browser.js("drawClock()")
    assert await browser.js("document.getElementById('clock').textContent") != clock
    await browser.goto(f"{http.url}/presenter?lang=nl&poll")
    await browser.until("document.querySelectorAll('#next li').length === 2")
    assert "Materiaaltekort over" in await browser.js("document.getElementById('next').textContent")


@pytest.mark.timeout(60)
async def test_a_deployed_gateways_page_says_the_scenario_is_unknown_and_what_sent_means(mosquitto, site, browser,
                                                                                        publisher, recorder):
    """A gateway that logs in to MQTT with a user name (a deployed one) hears no scenario message (docs/web.md): the
    page says the scenario and its script are unknown, not "free run" or "nothing scripted any more", and that a
    sent fault acts only where a simulator takes commands for that machine. Dutch and English."""
    import dataclasses

    from contract.payloads import encode_state

    gw = Gateway(dataclasses.replace(mosquitto.url, username="gateway"), site=site, publish_s=0.25,
                 client_id=f"gw-{site}")
    http = HttpEndpoint(gw, "127.0.0.1", 0, auth=Auth(token="s3cret-token"), presenter=True)
    ref = MachineRef(site, "a", "l", "cnc-01")
    cmds = recorder(mosquitto.url, ref.topic(Kind.CMD))
    await gw.start()
    await http.start()
    try:
        assert http._mqtt is None and not http.hears_scenario
        t0 = time.time()  # a scenario message on the broker, which this gateway does not hear
        publisher(scenario_topic(site), encode_scenario(
            ts=t0, speed=60, site=site, area="a", line="l", machines=["cnc-01"], name="bearing-wear", start=t0,
            next=[{"ts": t0 + 3600, "machine": "cnc-01", "fault": "breakdown", "args": {"minutes": 5}}]))
        publisher(ref.topic(Kind.STATE), encode_state([t0], [4]))
        assert await wait_until(lambda: gw.row_of(ref) is not None, 10)
        texts = "['scenario-name', 'description', 'next', 'elapsed'].map(i => document.getElementById(i).textContent)"
        await browser.goto(f"{http.login_url}&next=/presenter%3Flang%3Den%26poll")
        await browser.until(f"document.querySelector('[data-id=\"{ref.path}\"] button') !== null && "
                            "document.getElementById('scenario-name').textContent === 'Scenario unknown'")
        name, description, coming, elapsed = await browser.js(texts)
        assert "does not hear the simulation's scenario messages" in description, description
        assert coming == "not known here: this gateway does not hear the scenario"
        assert elapsed == "time of the machines' latest data"
        await browser.js(f"document.querySelector('[data-id=\"{ref.path}\"] button[data-fault=breakdown]').click()")
        assert await browser.until("document.body.dataset.lastStatus") == "200"
        assert await browser.js("document.getElementById('message').textContent") == (
            "Breakdown sent to cnc-01. Only a simulator that takes commands for cnc-01 acts on it: watch its state.")
        assert await wait_until(lambda: cmds.messages, 5)  # through the gateway's own connection
        await browser.goto(f"{http.url}/presenter?lang=nl&poll")
        await browser.until("document.getElementById('scenario-name').textContent === 'Scenario onbekend'")
        name, description, coming, elapsed = await browser.js(texts)
        assert coming == "hier onbekend: deze gateway hoort het scenario niet" and "vaste installatie" in description
        assert elapsed == "tijd van de laatste machinegegevens"
    finally:
        await http.stop()
        await gw.stop()


def test_the_scenario_message_is_checked():
    good = dict(ts=1.8e9, speed=60, site="s", area="a", line="l", machines=["m1"], name=None,
                next=[{"ts": 1.8e9 + 60, "machine": "m1", "fault": "breakdown", "args": {"minutes": 5}}])
    assert decode_scenario(encode_scenario(**good))["next"][0]["fault"] == "breakdown"
    for change, says in ((dict(speed=0), "speed"), (dict(machines=["no spaces"]), "machine"),
                         (dict(next=[{"ts": 1, "machine": "m2", "fault": "breakdown"}]), r"next\[0\]"),
                         (dict(next=[{"ts": 1, "machine": "m1", "fault": "explode"}]), r"next\[0\]")):
        with pytest.raises(Exception, match=says):
            encode_scenario(**{**good, **change})


def test_the_contract_knows_every_fault_the_simulator_does():
    from simulators.faults import FAULTS

    assert tuple(FAULTS) == FAULT_NAMES


@pytest.mark.timeout(90)
async def test_fieldlab_demo_presenter_announces_its_scenario(own_mosquitto, recorder):
    """`fieldlab demo --presenter --scenario …`: the login link in the terminal, and the scenario message on MQTT
    reaching /api/presenter (the simulated clock, name and next scripted faults), the last one saying it stopped."""
    heard = recorder(own_mosquitto.url, scenario_topic("demo"))
    http_port = free_port()
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fieldlab", "demo", "--presenter", "--scenario", "bearing-wear", "--speed", "600",
        "--duration", "3", "--broker", str(own_mosquitto.url), "--opcua-port", str(free_port()),
        "--http-port", str(http_port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert await wait_until(lambda: heard.messages, 30)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{http_port}/api/presenter") as r:
                info = await r.json()
        assert info["enabled"] and info["scenario"]["name"] == "bearing-wear", info
        out = (await asyncio.wait_for(demo.communicate(), 60))[0].decode()
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    assert demo.returncode == 0, out
    assert re.search(rf"Presenter: http://127.0.0.1:{http_port}/presenter +log in: "
                     rf"http://127.0.0.1:{http_port}/login\?token=\S+", out), out
    first, last = (decode_scenario(heard.messages[i][1]) for i in (0, -1))
    assert first["running"] and not last["running"] and last["ts"] > first["ts"] and first["speed"] == 600
    assert first["machines"] == ["cnc-01", "assembly-01"]
    assert [(e["ts"] - first["start"], e["machine"], e["fault"]) for e in first["next"]] == [
        (2 * 3600, "cnc-01", "slow"), (4 * 3600, "cnc-01", "slow"), (4 * 3600, "cnc-01", "quality"),
        (5.5 * 3600, "cnc-01", "breakdown")]
