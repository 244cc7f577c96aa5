"""The REST API and the built-in dashboard, the page checked in a real headless Chromium."""
import asyncio
import contextlib
import json
import os
import re
import shutil
import threading
import urllib.request
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from contract import Kind, MachineRef, encode_counts, encode_state, encode_status
from gateway.config import parse
from gateway.http import HttpEndpoint, openapi
from gateway.service import Gateway
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FIELDLAB_ARTIFACTS", ROOT / "test-artifacts"))
T0 = 1_800_000_000.0


@pytest.fixture
async def served(mosquitto, site, publisher):
    """A gateway with two machines' hand-made history, its HTTP service on a free port."""
    async with serve(mosquitto, site, publisher) as x:
        yield x


@contextlib.asynccontextmanager
async def serve(mosquitto, site, publisher, config=None):
    gw = Gateway(mosquitto.url, site=site, publish_s=3600, config=config)  # ticks only when the test says so
    await gw.start()
    http = HttpEndpoint(gw, "127.0.0.1", 0, sse_poll_s=0.05)
    await http.start()
    press = MachineRef(site, "hall-1", "line-1", "press-07")
    lathe = MachineRef(site, "hall-1", "line-2", "lathe-2")
    # press: Execute 0-300 s, Held (breakdown 101) 300-500 s, Execute 500-600 s; 100 parts at 3 s, 10 rejects;
    # lathe: Execute 0-370 s, Suspended (material shortage 201) 370-400 s, Execute from 400 s
    publisher(press.topic(Kind.STATUS), encode_status(T0, "online"))
    publisher(press.topic(Kind.STATE), encode_state([T0, T0 + 300, T0 + 500], [4, 15, 4], [0, 101, 0]))
    publisher(press.topic(Kind.COUNTS), encode_counts([T0, T0 + 600], [0, 90], [0, 10], "cap", 3.0))
    publisher(lathe.topic(Kind.STATE), encode_state([T0, T0 + 370, T0 + 400], [4, 12, 4], [0, 201, 0]))
    publisher(lathe.topic(Kind.COUNTS), encode_counts([T0, T0 + 400], [0, 39], [0, 1], "shaft", 8.0))
    try:
        assert await wait_until(lambda: gw.stats["messages"] == 5), gw.stats
        gw.tick()
        yield gw, http, press, lathe
    finally:
        await http.stop()
        await gw.stop()


async def get(http, path):
    def fetch():
        try:
            with urllib.request.urlopen(http.url + path, timeout=5) as r:
                return r.status, r.headers.get("Content-Type"), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read()
    return await asyncio.to_thread(fetch)


async def test_rest_api(served):
    gw, http, press, lathe = served
    status, ctype, body = await get(http, "/api/machines")
    assert status == 200 and ctype.startswith("application/json")
    rows = {r["id"]: r for r in json.loads(body)}
    assert set(rows) == {press.path, lathe.path}
    p = rows[press.path]
    assert (p["good"], p["reject"], p["run_s"], p["planned_s"], p["state_name"], p["status"]) == (
        90, 10, 400.0, 600.0, "Execute", "online")
    assert p["oee"] == pytest.approx(90 * 3.0 / 600)  # good parts x ideal cycle / planned time
    _, _, one = await get(http, f"/api/machines/{press.path}")
    assert json.loads(one) == p
    _, _, tl = await get(http, f"/api/machines/{press.path}/timeline?window=since_start")
    pieces = [(x["start"] - T0, x["end"] - T0, x["category"], x["reason"]) for x in json.loads(tl)["pieces"]]
    assert pieces == [(0, 300, "run", 0), (300, 500, "breakdown", 101), (500, 600, "run", 0)]
    _, _, losses = await get(http, f"/api/machines/{press.path}/losses")
    losses = json.loads(losses)
    assert losses["losses"]["unplanned_stops"] == {"s": 200.0, "pp": pytest.approx(100 * 200 / 600)}
    _, _, counts = await get(http, f"/api/machines/{press.path}/counts")
    counts = json.loads(counts)
    assert counts["ideal_cycle_s"] == 3.0 and counts["windows"]["since_start"] == {
        "good": 90, "reject": 10, "planned_s": 600.0, "target": 200}
    status, _, _ = await get(http, f"/api/machines/{lathe.site}/hall-1/line-2/lathe%2D2")  # %-quoted
    assert status == 200
    assert (await get(http, "/api/machines/a/b/c/no%20spaces"))[0] == 404  # not a machine name at all
    assert (await get(http, f"/api/machines/{press.site}/x/y/z"))[0] == 404
    assert (await get(http, f"/api/machines/{press.path}/timeline?window=week"))[0] == 400


async def test_openapi_describes_every_route(served):
    gw, http, press, _ = served
    _, _, body = await get(http, "/api/openapi.json")
    spec = json.loads(body)
    assert spec == json.loads(json.dumps(openapi())) and spec["openapi"].startswith("3.")
    for path in spec["paths"]:
        concrete = path.replace("{id}", press.path)
        if concrete == "/api/events" or "get" not in spec["paths"][path]:  # a stream; the writes (test_auth.py)
            continue
        status, _, _ = await get(http, concrete)
        assert status == 200, path


async def test_events_stream_after_every_computation(served):
    gw, http, press, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()

    async def next_event(kind="machines"):  # each computation sends machines, then lines
        lines = []
        while True:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode().rstrip("\r\n")
            if line == "" and any(x.startswith("data:") for x in lines):
                if f"event: {kind}" in lines:
                    return lines
                lines = []
                continue
            lines.append(line)

    first = await next_event()
    assert "event: machines" in first
    lines = json.loads(next(x for x in await next_event("lines") if x.startswith("data:"))[5:])
    assert {r["id"] for r in lines} == {f"{press.site}/hall-1/line-1", f"{press.site}/hall-1/line-2"}
    gw.tick()
    second = await next_event()
    data = json.loads(next(x for x in second if x.startswith("data:"))[5:])
    assert {r["id"] for r in data} == {press.path, f"{press.site}/hall-1/line-2/lathe-2"}
    writer.close()


class Cards(HTMLParser):
    """Collects each machine card's shown numbers: {machine id: {data-kpi: text}}."""

    def __init__(self):
        super().__init__()
        self.cards, self._id, self._kpi = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-id" in a:
            self._id = a["data-id"]
            self.cards[self._id] = {}
        if self._id and ("data-kpi" in a or "data-loss" in a):
            self._kpi = a.get("data-kpi") or "loss:" + a["data-loss"]
            self.cards[self._id][self._kpi] = ""
            if tag == "div" and a.get("data-kpi") == "timeline":
                self._kpi = None
                self.cards[self._id]["pieces"] = a.get("data-pieces")

    def handle_data(self, data):
        if self._id and self._kpi:
            self.cards[self._id][self._kpi] += data

    def handle_endtag(self, tag):
        self._kpi = None


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is missing: apt-get install -y chromium", pytrace=False)
    return path


def pct(v):
    return "–" if v is None else f"{100 * v:.1f} %"


def seconds_of_day(ts: float) -> int:
    t = datetime.fromtimestamp(ts, timezone.utc)
    return t.hour * 3600 + t.minute * 60 + t.second


def machine_time_shown(dom: str) -> int:
    """The status line's "· machine time 8:10:00 AM" (English, whole seconds) as seconds of the day."""
    status = re.search(r'id="status"[^>]*>([^<]*)<', dom).group(1)
    m = re.search(r"· machine time (\d{1,2}):(\d{2}):(\d{2})\s*([AP]M)", status)
    assert m, status
    h, mi, sec = int(m[1]) % 12 + (12 if m[4] == "PM" else 0), int(m[2]), int(m[3])
    return h * 3600 + mi * 60 + sec


async def test_dashboard_in_headless_chromium(served, tmp_path):
    gw, http, press, lathe = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path}/p",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=4000", "--window-size=1600,900"]
    # ?poll: no open event stream, so Chromium's virtual time can run out and it dumps the page; the digits are
    # compared in English
    page = http.url + "/?lang=en&poll"
    # the page shows times in the browser's time zone: fixed here, so the test knows what it must show
    proc = await asyncio.create_subprocess_exec(*args, "--dump-dom", page, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ, "TZ": "UTC"})
    try:
        dom, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    console = [line for line in err.decode(errors="replace").splitlines() if ":CONSOLE" in line]
    assert not console, "the page wrote to the console:\n" + "\n".join(console)
    cards = Cards()
    cards.feed(dom.decode())
    assert set(cards.cards) == {press.path, lathe.path}
    # the machines' own clock (simulated time in a demo) is shown too: the latest sample serve() published (the
    # press's counts at T0 + 600 s), not the browser's clock
    assert machine_time_shown(dom.decode()) == pytest.approx(seconds_of_day(T0 + 600), abs=1)
    _, _, body = await get(http, "/api/machines")
    for row in json.loads(body):
        shown, shift = cards.cards[row["id"]], row["windows"]["shift"]  # the page opens on "This shift"
        assert shown["oee"] == pct(shift["oee"])
        assert (shown["availability"], shown["performance"], shown["quality"]) == (
            pct(shift["availability"]), pct(shift["performance"]), pct(shift["quality"]))
        assert (shown["good"], shown["reject"]) == (str(shift["good"]), str(shift["reject"]))
        assert shown["state"] == (row["state_name"] if row["status"] != "offline" else "offline")
        for name, loss in row["losses"].items():
            assert shown[f"loss:{name}"] == f"{loss['pp'] or 0:.1f} pp"
    assert cards.cards[press.path]["target"] == "200"  # 600 s planned at 3 s per part
    # the shift's stops with their reason: minutes, and seconds for a stop under a minute (was "0 min")
    assert cards.cards[press.path]["reasons"] == "Stops this shift: breakdown 3 min"
    assert cards.cards[lathe.path]["reasons"] == "Stops this shift: material shortage 30 s"
    # each line here has one machine: "1 machine, its times and counts" (it said "1 machines")
    assert dom.decode().count("· 1 machine, its times and counts") == 2 and "1 machines" not in dom.decode()
    # the state timelines (one request for all machines): as many pieces drawn as the API has
    _, _, body = await get(http, "/api/timelines?window=last_1h")
    timelines = json.loads(body)["machines"]
    assert {m: cards.cards[m]["pieces"] for m in cards.cards} == {
        m: str(len(t["pieces"])) for m, t in timelines.items()}
    assert cards.cards[press.path]["pieces"] == "3"
    # the picture, for people (kept as a test artifact)
    shot = ARTIFACTS / "dashboard.png"
    proc = await asyncio.create_subprocess_exec(*args, f"--screenshot={shot}", page,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(proc.wait(), 60)
    assert shot.stat().st_size > 10_000


def chromium_args(tmp_path, *more) -> list[str]:
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path}/p",
            "--window-size=1600,900", *more]


async def run_chromium(args) -> str:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode()


def pct_nl(v):
    return "–" if v is None else f"{100 * v:.1f}".replace(".", ",") + " %"


async def test_dashboard_in_dutch(mosquitto, site, publisher, tmp_path):
    """Issue 14, item 3: the page in Dutch (?lang=nl): Dutch words, decimal commas, the site's own reason names
    (site configuration 'reasons:'), and a screenshot kept as a test artifact."""
    config = parse({"reasons": {101: {"en": "bearing failure", "nl": "lagerschade"}}})
    async with serve(mosquitto, site, publisher, config) as (gw, http, press, lathe):
        dom = await run_chromium(chromium_args(tmp_path, "--virtual-time-budget=4000", "--dump-dom",
                                               http.url + "/?lang=nl&poll"))
        assert '<html lang="nl">' in dom
        dom = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # what is shown (the catalogues are in the page)
        for dutch in ("Deze ploeg", "Beschikbaarheid", "Kwaliteit", "Storingen", "goed", "afkeur",
                      "Stops deze ploeg: lagerschade 3 min", "Produceren"):
            assert dutch in dom, dutch
        assert "This shift" not in dom and "Availability" not in dom
        cards = Cards()
        cards.feed(dom)
        _, _, body = await get(http, "/api/machines")
        for row in json.loads(body):
            shown, shift = cards.cards[row["id"]], row["windows"]["shift"]
            assert (shown["oee"], shown["availability"]) == (pct_nl(shift["oee"]), pct_nl(shift["availability"]))
        assert "," in cards.cards[press.path]["oee"]  # 45,0 %: a decimal comma
        _, _, names = await get(http, "/api/reasons")  # the site's names, for any page or client
        assert json.loads(names) == {"101": {"en": "bearing failure", "nl": "lagerschade"}}
        assert cards.cards[press.path]["loss:unplanned_stops"] == "33,3 pp"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard-nl.png"
        await run_chromium(chromium_args(tmp_path, "--virtual-time-budget=4000", f"--screenshot={shot}",
                                         http.url + "/?lang=nl&poll"))
        assert shot.stat().st_size > 10_000


async def test_a_plain_headless_screenshot_shows_figures(served, tmp_path):
    """Issue 14: `chromium --headless --screenshot URL` showed only "connecting…": the page now carries the latest
    figures itself, so they are drawn before any request (no ?poll, no virtual time)."""
    gw, http, press, lathe = served
    dom = await run_chromium(chromium_args(tmp_path, "--dump-dom", http.url + "/"))
    cards = Cards()
    cards.feed(dom)
    assert set(cards.cards) == {press.path, lathe.path}
    assert cards.cards[press.path]["oee"] not in ("", "–")
    assert re.search(r'<span class="meta" id="status">2 machines · updated [^<]+</span>', dom), dom[:3000]
    # the browser's language (English here) when nothing else is said
    assert '<html lang="en">' in dom and '<button data-lang="en" aria-pressed="true">' in dom


async def test_oversized_or_slow_requests_do_not_hurt_the_gateway(served):
    gw, http, press, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    writer.write(b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n")  # a request line over the limit (8 KiB)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.split(b" ", 2)[1] == b"400", answer[:100]  # aiohttp refuses it as a bad request
    writer.close()
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", http.port)
    slow_w.write(b"GET /api/machines HTTP/1.1\r\n")  # and then nothing more: it is closed, not served forever
    await slow_w.drain()
    assert (await get(http, "/healthz"))[0] == 200  # others are served meanwhile
    stopping = asyncio.create_task(http.stop())  # stopping does not wait for the dawdler
    await asyncio.wait_for(stopping, 5)
    assert await asyncio.wait_for(slow_r.read(), 5) == b""
    slow_w.close()


async def test_a_frozen_gateway_looks_frozen_on_the_page(mosquitto, site, publisher, tmp_path):
    """Issue 13, defect 3: the page showed the last figures as if current when the gateway had stopped
    computing. Now a banner says why, and the figures are greyed out."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    http = HttpEndpoint(gw, "127.0.0.1", 0)
    await http.start()
    await gw.start()
    release = threading.Event()
    try:
        ref = MachineRef(site, "hall-1", "line-1", "press-07")
        publisher(ref.topic(Kind.STATE), encode_state([T0], [4]))
        assert await wait_until(lambda: gw.rows)
        real = gw.engine.snapshot
        gw.engine.snapshot = lambda: (release.wait(60), real())[1]  # the computation hangs from now on
        assert await wait_until(lambda: gw.health()["status"] == "failing", 10)
        args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path}/p",
                "--virtual-time-budget=3000", "--dump-dom", http.url + "/?poll"]
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        dom = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        assert "<body class=\"stale\">" in dom, dom[dom.find("<body"):dom.find("<body") + 400]
        banner = dom.split('id="stale"', 1)[1].split("</div>", 1)[0]
        assert "hidden" not in banner.split(">", 1)[0] and "Gateway not healthy: KPIs are stale" in banner
        status, _, body = await get(http, "/api/timelines")  # waits for the state a little, not for ever
        assert status == 503 and b"try again" in body
    finally:
        release.set()
        await gw.stop()
        await http.stop()
