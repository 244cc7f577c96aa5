"""The operator terminal (issue 15, item 2) in a real headless Chromium on a phone-sized screen: a real Mosquitto, the
real gateway and its web app, a machine with a 10-minute breakdown of reason 0. Without the operator login the page
sends to the login and a write is refused (nothing published); logged in with name and PIN, the operator gives the
stop a reason: the Pareto (the API and the dashboard's) moves its seconds from unclassified to that reason and no
total changes. Rejects counted by hand and a product switch go out as contract messages. About 6 s."""
import asyncio
import json
import time

import aiohttp
import pytest

from contract import Kind, MachineRef, encode_counts, encode_state
from contract.passwords import mosquitto_hash
from gateway import oee
from gateway.auth import Auth
from gateway.http import HttpEndpoint
from gateway.service import Gateway
from tests.gateway.test_dashboard import ARTIFACTS
from tests.gateway.test_presenter import browser  # noqa: F401 (the fixture: headless Chromium over DevTools)
from tests.helpers import wait_until

EXECUTE, HELD = 4, 15


@pytest.fixture
async def terminal(mosquitto, site):
    """The gateway and its web app with one operator, anna (PIN 4711), and a presenter without the operator role."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.2, client_id=f"gw-{site}")
    users = {"anna": (frozenset({"operator"}), mosquitto_hash("4711")),
             "piet": (frozenset({"presenter"}), mosquitto_hash("1234"))}
    http = HttpEndpoint(gw, "127.0.0.1", 0, auth=Auth(users=users))
    await gw.start()
    await http.start()
    yield gw, http
    await http.stop()
    await gw.stop()


def pareto(gw, ref) -> dict:
    return {(r["category"], r["reason"]): r["seconds"] for r in gw.row_of(ref)["windows"]["shift"]["stop_reasons"]}


TOTALS = ("planned_s", "run_s", "good", "reject", "total", "oee", "availability", "performance")


@pytest.mark.timeout(60)
async def test_an_operator_classifies_a_stop_on_a_phone(terminal, browser, mosquitto, site, recorder):  # noqa: F811
    gw, http = terminal
    ref = MachineRef(site, "a", "l", "press-01")
    heard = recorder(mosquitto.url, ref.topic(Kind.OPERATOR), ref.topic(Kind.CMD))
    now = time.time()
    t0 = now - now % 3600 + 60  # inside the current shift (the default shifts start on the hour)
    heard.publish(ref.topic(Kind.STATE), encode_state([t0, t0 + 60, t0 + 660], [EXECUTE, HELD, EXECUTE]))
    heard.publish(ref.topic(Kind.COUNTS), encode_counts([t0, t0 + 900], [0, 500], [0, 0], "A-100", 1.0))
    assert await wait_until(lambda: gw.row_of(ref) and gw.row_of(ref)["good"] == 500 and pareto(gw, ref) == {
        ("breakdown", 0): 600.0})
    before = {k: gw.row_of(ref)[k] for k in TOTALS}
    assert gw.row_of(ref)["breakdown_s"] == 600.0
    await browser.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)

    # without a login: the terminal sends to the login page, and a write is refused; nothing is published
    await browser.goto(f"{http.url}/operator/{ref.path}?lang=en")
    assert await browser.js("location.pathname") == "/login"
    status = await browser.js(f"fetch('/api/machines/{ref.path}/classify', {{method: 'POST', headers: "
                              f"{{'Content-Type': 'application/json'}}, body: JSON.stringify({{ts: {t0 + 60}, "
                              "reason: 201})}).then(r => r.status)")
    assert status == 401
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # a presenter may not (403)
        async with s.post(f"{http.url}/login", json={"user": "piet", "pin": "1234"},
                          headers={"Origin": http.url}) as r:
            assert r.status == 200
        async with s.post(f"{http.url}/api/machines/{ref.path}/classify", json={"ts": t0 + 60, "reason": 201},
                          headers={"Origin": http.url}) as r:
            assert r.status == 403 and "operator role" in (await r.json())["error"]

    # logged in as anna (name and PIN): back on the terminal, with the stop in the list
    await browser.js("document.querySelector('[name=user]').value = 'anna';"
                     "document.querySelector('[name=pin]').value = '4711';"
                     "document.getElementById('login').requestSubmit()")
    await browser.until("location.pathname.startsWith('/operator/') && document.readyState === 'complete'")
    await browser.until("document.querySelectorAll('#stops button[data-start]').length === 1")
    assert await browser.js("document.getElementById('state').dataset.state") == "Execute"
    assert (await browser.js("document.querySelector('#stops button').textContent")).endswith("· 10 min · breakdown")
    await browser.js("document.querySelector('#stops button').click()")
    await browser.until("document.querySelector('#reasons button[data-reason=\"201\"]') !== null")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await browser.screenshot(ARTIFACTS / "operator.png")  # a phone, the stop picked, its reasons (for people)
    assert heard.messages == []
    await browser.js("document.querySelector('#reasons button[data-reason=\"201\"]').click()")
    assert await browser.until("document.body.dataset.lastStatus") == "200"
    assert "Saved: material shortage" in await browser.js("document.getElementById('message').textContent")
    assert await wait_until(lambda: heard.messages)
    sent = json.loads(heard.messages[0][1])
    assert heard.messages[0][0] == ref.topic(Kind.OPERATOR)
    assert (sent["ts"], sent["reason"], sent["by"]) == (t0 + 60, 201, "anna") and abs(sent["at"] - time.time()) < 30

    # the Pareto moves the seconds to reason 201, and no total changes (the engine, the API, the dashboard); the
    # category follows the reason where the conventions map it (material shortage: stopped), else stays breakdown
    cat = oee.CATEGORIES[gw.engine.conv.reasons.get(201, oee.BREAKDOWN)]
    assert await wait_until(lambda: pareto(gw, ref) == {(cat, 201): 600.0}), pareto(gw, ref)
    assert {k: gw.row_of(ref)[k] for k in TOTALS} == before
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{http.url}/api/machines/{ref.path}/losses") as r:
            assert (await r.json())["stop_reasons"] == [{"category": cat, "reason": 201, "seconds": 600.0}]
    await browser.until("document.querySelector('#stops li.none') !== null")  # nothing left to classify
    assert "longer than 2 min has one" in await browser.js("document.querySelector('#stops li.none').textContent")

    # rejects counted by hand: from good to reject; a product switch: a set_product command
    await browser.js("document.getElementById('reject-count').value = '3';"
                     "document.getElementById('rejects').requestSubmit()")
    await browser.until("document.getElementById('message').textContent.includes('3 parts rejected')")
    assert await wait_until(lambda: (gw.row_of(ref)["good"], gw.row_of(ref)["reject"]) == (497, 3))
    assert gw.row_of(ref)["total"] == before["total"]
    await browser.js("document.getElementById('product-name').value = 'B-200';"
                     "document.getElementById('product').requestSubmit()")
    await browser.until("document.getElementById('message').textContent.includes('switch to B-200')")
    assert await wait_until(lambda: len(heard.messages) == 3)
    assert heard.messages[2][0] == ref.topic(Kind.CMD)
    assert json.loads(heard.messages[2][1]) == {"v": 1, "cmd": "set_product", "args": {"product": "B-200"}}

    # the dashboard's Pareto names the reason
    await browser.goto(f"{http.url}/?lang=en&poll")
    text = await browser.until(f"(document.querySelector('[data-id=\"{ref.path}\"] [data-kpi=reasons]') || "
                               "{}).textContent")
    assert "material shortage 10 min" in text, text


async def test_the_terminal_api_says_what_is_wrong(terminal, mosquitto, site, recorder):
    """Each write's mistakes get a JSON sentence and publish nothing; the stops list takes min_s. About 1 s."""
    gw, http = terminal
    ref = MachineRef(site, "a", "l", "press-01")
    heard = recorder(mosquitto.url, ref.topic(Kind.OPERATOR), ref.topic(Kind.CMD))
    now = time.time()
    t0 = now - now % 3600 + 60
    heard.publish(ref.topic(Kind.STATE), encode_state([t0, t0 + 60, t0 + 660], [EXECUTE, HELD, EXECUTE]))
    heard.publish(ref.topic(Kind.COUNTS), encode_counts([t0, t0 + 900], [0, 5], [0, 0], "A-100", 1.0))
    assert await wait_until(lambda: gw.row_of(ref) and gw.row_of(ref)["good"] == 5)
    url = f"{http.url}/api/machines/{ref.path}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{url}/stops?min_s=700") as r:
            assert (await r.json())["stops"] == []
        async with s.get(f"{url}/stops?min_s=-1") as r:
            assert r.status == 400
        async with s.get(f"{url}/stops") as r:
            got = await r.json()
        assert [(x["start"], x["seconds"], x["category"]) for x in got["stops"]] == [(t0 + 60, 600.0, "breakdown")]
        assert 201 in got["reasons"] and 0 not in got["reasons"]
        async with s.post(f"{http.url}/login", json={"user": "anna", "pin": "4711"}, headers={"Origin": http.url}):
            pass
        for path, body, status, says in (
                ("classify", {"ts": t0 + 60, "reason": 999}, 400, "reason"),
                ("classify", {"ts": t0 + 700, "reason": 101}, 409, "no unclassified stop"),
                ("rejects", {"count": 0}, 400, "count"),
                ("rejects", {"count": 6}, 409, "fewer good parts"),
                ("product", {"product": " "}, 400, "product"),
                ("nothing", {}, 404, "a machine takes classify, rejects, product, forget")):
            async with s.post(f"{url}/{path}", json=body, headers={"Origin": http.url}) as r:
                assert (r.status, says in (await r.json())["error"]) == (status, True), (path, body)
        async with s.post(f"{http.url}/api/machines/{site}/a/l/nobody/classify", json={"ts": t0, "reason": 101},
                          headers={"Origin": http.url}) as r:
            assert r.status == 404
    await asyncio.sleep(0.3)
    assert heard.messages == []


@pytest.mark.timeout(60)
async def test_forget_a_test_machine_through_the_api(terminal, mosquitto, site, recorder):
    """POST /api/machines/{id}/forget (issue 15: "and an API call"): refused without the operator login, nothing
    sent; with it, the forget command goes out and the machine leaves the API. About 1 s."""
    gw, http = terminal
    ref, other = MachineRef(site, "a", "l", "test-01"), MachineRef(site, "a", "l", "press-01")
    heard = recorder(mosquitto.url, ref.topic(Kind.CMD))
    now = time.time()
    for r in (ref, other):
        heard.publish(r.topic(Kind.COUNTS), encode_counts([now - 100, now - 50], [0, 5], [0, 0], "A-100", 1.0))
    assert await wait_until(lambda: gw.row_of(ref) and gw.row_of(other))
    url = f"{http.url}/api/machines/{ref.path}/forget"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.post(url, json={}, headers={"Origin": http.url}) as r:
            assert r.status == 401
        await asyncio.sleep(0.3)
        assert heard.messages == []
        async with s.post(f"{http.url}/login", json={"user": "anna", "pin": "4711"}, headers={"Origin": http.url}):
            pass
        async with s.post(url, json={}, headers={"Origin": http.url}) as r:
            assert r.status == 200, await r.text()
        assert await wait_until(lambda: gw.row_of(ref) is None)
        async with s.get(f"{http.url}/api/machines") as r:
            assert [m["id"] for m in await r.json()] == [other.path]
    assert [json.loads(p)["args"]["by"] for _, p, _ in heard.messages] == ["anna"]
