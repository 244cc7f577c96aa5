"""The gateway's MQTT client reads the broker's stream in large chunks and acknowledges in bulk
(contract/mqtt.py): every message must still arrive whole, once and in order, whatever its size."""
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from contract.mqtt import _BufferedSocket, connect


def test_messages_of_any_size_arrive_whole_once_and_in_order(mosquitto, site):
    sizes = [1, 7, 130, 16_383, 16_384, 70_000, 65_536, 65_535, 300_000] + [5, 900, 3] * 300  # within and across chunks
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    got, done = [], threading.Event()

    def on_message(c, u, msg):
        got.append(msg.payload)
        if len(got) == len(payloads):
            done.set()

    topic = f"fieldlab/v1/{site}/a/l/m/telemetry"
    sub = connect(mosquitto.url, f"reads-{site}", on_message=on_message, persistent=True, subscriptions=[(topic, 1)])
    try:
        assert isinstance(sub._sock, _BufferedSocket)
        pub = paho.Client(CallbackAPIVersion.VERSION2)
        pub.max_inflight_messages_set(100)
        pub.connect(mosquitto.url.host, mosquitto.url.port)
        pub.loop_start()
        infos = [pub.publish(topic, p, qos=1) for p in payloads]  # as fast as the broker takes them
        for info in infos:
            info.wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        assert done.wait(20), f"{len(got)} of {len(payloads)} arrived"
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert len(got) == len(payloads)
    assert [len(p) for p in got] == sizes
    assert got == payloads
    # the broker got every PUBACK (sent in bulk): a new session with the same id has nothing left to redeliver
    again = []
    late = connect(mosquitto.url, f"reads-{site}", on_message=lambda c, u, m: again.append(m), persistent=True,
                   subscriptions=[(topic, 1)])
    try:
        threading.Event().wait(0.5)
    finally:
        late.disconnect()
        late.loop_stop()
    assert again == []
