"""/metrics and /healthz over real HTTP, with the gateway reading a real Mosquitto."""
import asyncio
import time
import urllib.error
import urllib.request

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import Kind, MachineRef, encode_counts, encode_state
from gateway.http import HttpEndpoint
from gateway.service import Gateway


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


async def test_metrics_show_counters_and_machine_kpis(mosquitto, site):
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}")
    http = HttpEndpoint(gw, port=0)
    await http.start()
    await gw.start()
    try:
        pub = paho.Client(CallbackAPIVersion.VERSION2)
        pub.connect(mosquitto.url.host, mosquitto.url.port)
        pub.loop_start()
        ref = MachineRef(site, "hall", "line-1", "press-7")
        pub.publish(ref.topic(Kind.STATE), encode_state([0.0, 300.0], [4, 15]), qos=1).wait_for_publish(5)
        pub.publish(ref.topic(Kind.COUNTS), encode_counts([0.0, 500.0], [0, 90], [0, 10], "p", 3.0),
                    qos=1).wait_for_publish(5)
        pub.publish(ref.topic(Kind.COUNTS), b"{broken", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        for _ in range(100):
            if gw.stats["messages"] == 2 and gw.stats["dead_letters"] == 1:
                break
            await asyncio.sleep(0.05)
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
        assert f"fieldlab_machine_data_timestamp_seconds{{{labels}}} 500.000" in lines  # the machine's own clock
        last = next(float(x.split()[1]) for x in lines if x.startswith("fieldlab_gateway_last_message_timestamp"))
        assert abs(time.time() - last) < 30
        assert all(ln.startswith("#") or " " in ln for ln in lines)  # every sample line has a value
        assert await asyncio.to_thread(get, f"{http.url}/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
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
