"""/metrics and /healthz over real HTTP, with the gateway reading a real Mosquitto."""
import asyncio
import json
import time
import urllib.error
import urllib.request

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import Kind, MachineRef, encode_counts, encode_state
from gateway.http import HttpEndpoint
from gateway.service import Gateway
from tests.helpers import wait_until


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


async def test_metrics_show_counters_and_machine_kpis(mosquitto, site):
    t0 = 1_700_092_800.0  # 2023-11-16T00:00:00Z: a plausible time (contract.TS_MIN..TS_MAX)
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    http = HttpEndpoint(gw, port=0)
    await http.start()
    await gw.start()
    try:
        pub = paho.Client(CallbackAPIVersion.VERSION2)
        pub.connect(mosquitto.url.host, mosquitto.url.port)
        pub.loop_start()
        ref = MachineRef(site, "hall", "line-1", "press-7")
        pub.publish(ref.topic(Kind.STATE), encode_state([t0, t0 + 300.0], [4, 15]), qos=1).wait_for_publish(5)
        pub.publish(ref.topic(Kind.COUNTS), encode_counts([t0, t0 + 500.0], [0, 90], [0, 10], "p", 3.0),
                    qos=1).wait_for_publish(5)
        pub.publish(ref.topic(Kind.COUNTS), b"{broken", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        assert await wait_until(lambda: gw.stats["messages"] == 2 and gw.stats["dead_letters"] == 1), gw.stats
        gw.tick()
        status, ctype, body = await asyncio.to_thread(get, f"{http.url}/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        lines = body.splitlines()
        assert "fieldlab_gateway_messages_total 2" in lines
        assert "fieldlab_gateway_dead_letters_total 1" in lines
        assert "fieldlab_gateway_machines 1" in lines
        labels = f'site="{site}",area="hall",line="line-1",machine="press-7"'
        assert f"fieldlab_machine_oee{{{labels}}} 0.54" in lines
        assert f"fieldlab_machine_availability{{{labels}}} 0.6" in lines
        assert f"fieldlab_machine_data_timestamp_seconds{{{labels}}} {t0 + 500:.3f}" in lines  # the machine's clock
        last = next(float(x.split()[1]) for x in lines if x.startswith("fieldlab_gateway_last_message_timestamp"))
        assert abs(time.time() - last) < 30
        assert all(ln.startswith("#") or " " in ln for ln in lines)  # every sample line has a value
        status, ctype, body = await asyncio.to_thread(get, f"{http.url}/healthz")
        assert (status, ctype) == (200, "application/json; charset=utf-8")
        assert json.loads(body)["status"] == "ok" and json.loads(body)["reasons"] == []
        assert (await asyncio.to_thread(get, f"{http.url}/nope"))[0] == 404
    finally:
        await gw.stop()
        await http.stop()


async def test_taken_port_is_a_clear_error():
    from contract.errors import ServiceError

    first = HttpEndpoint(None, port=0)
    await first.start()
    try:
        with pytest.raises(ServiceError, match=rf"cannot serve HTTP on 127.0.0.1:{first.port}: .*--http-port"):
            await HttpEndpoint(None, port=first.port).start()
    finally:
        await first.stop()


async def test_all_timelines_in_one_request_equal_each_machines_own(mosquitto, site, publisher):
    """/api/timelines: what the dashboard draws, for every machine at once, the same as one by one."""
    import json

    from contract import encode_status

    t0 = 1_800_000_000.0
    gw = Gateway(mosquitto.url, site=site, publish_s=3600, client_id=f"gw-{site}")  # ticks when told
    http = HttpEndpoint(gw, port=0)
    await http.start()
    await gw.start()
    try:
        press, lathe = MachineRef(site, "h", "l1", "press"), MachineRef(site, "h", "l2", "lathe")
        publisher(press.topic(Kind.STATE), encode_state([t0, t0 + 300, t0 + 500], [4, 15, 4], [0, 101, 0]))
        publisher(press.topic(Kind.COUNTS), encode_counts([t0, t0 + 600], [0, 90], [0, 10], "p", 3.0))
        publisher(lathe.topic(Kind.STATE), encode_state([t0, t0 + 400], [4, 12], [0, 201]))
        publisher(lathe.topic(Kind.STATUS), encode_status(t0, "online"))
        assert await wait_until(lambda: gw.stats["messages"] == 4), gw.stats
        gw.tick()
        for window in ("shift", "last_1h", "since_start"):  # since_start last: its pieces are checked below
            status, ctype, body = await asyncio.to_thread(get, f"{http.url}/api/timelines?window={window}")
            assert status == 200 and ctype.startswith("application/json")
            bulk = json.loads(body)
            assert bulk["window"] == window and set(bulk["machines"]) == {press.path, lathe.path}
            for ref in (press, lathe):
                _, _, one = await asyncio.to_thread(get, f"{http.url}/api/machines/{ref.path}/timeline?window={window}")
                assert bulk["machines"][ref.path] == json.loads(one)
        pieces = [(p["start"] - t0, p["end"] - t0, p["category"], p["reason"])
                  for p in bulk["machines"][press.path]["pieces"]]
        assert pieces == [(0, 300, "run", 0), (300, 500, "breakdown", 101), (500, 600, "run", 0)]
        assert (await asyncio.to_thread(get, f"{http.url}/api/timelines?window=week"))[0] == 400
    finally:
        await http.stop()
        await gw.stop()


def test_the_route_table_is_the_openapi_document():
    """One route table (make_app) and the document the fuzz test reads (openapi()) name the same paths."""
    from gateway.http import API_ROUTES, openapi

    http = HttpEndpoint(None, port=0)
    table, spec = http.app[API_ROUTES], openapi()["paths"]
    assert sorted(table) == sorted(spec)
    routes = {(r.method, r.resource.canonical) for r in http.app.router.routes()}
    for path, ops in spec.items():
        for method in ops:
            if "{id}" in path:  # one route takes every machine id (with its slashes): /api/machines/{rest}
                assert (method.upper(), "/api/machines/{rest}") in routes, routes
            else:
                assert (method.upper(), path) in routes, (method, path)


async def test_errors_are_json_sentences():
    http = HttpEndpoint(None, port=0)
    await http.start()
    try:
        for method, path, code in (("GET", "/nope", 404), ("POST", "/api/machines", 405), ("DELETE", "/healthz", 405),
                                   ("GET", "/i18n/de.json", 404)):
            def ask():
                try:
                    with urllib.request.urlopen(urllib.request.Request(http.url + path, method=method), timeout=5) as r:
                        return r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.headers, e.read()
            status, headers, body = await asyncio.to_thread(ask)
            assert status == code and headers["Content-Type"] == "application/json; charset=utf-8", (path, status)
            error = json.loads(body)["error"]
            assert error and "\n" not in error and error.count(". ") == 0, error  # one sentence
            if code == 405:
                assert "GET" in headers["Allow"].split(","), headers  # says what is allowed
    finally:
        await http.stop()
