"""The gateway's MQTT client reads the broker's stream in large chunks and acknowledges in bulk
(contract/mqtt.py): every message must still arrive whole, once and in order, whatever its size."""
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from contract.mqtt import _BufferedSocket, connect


def test_messages_of_any_size_arrive_whole_once_and_in_order(mosquitto, site):
    chunk = _BufferedSocket.CHUNK
    sizes = [1, 7, 130, 16_383, 16_384, 70_000, 65_536, 65_535, chunk - 1, chunk, chunk + 1, 3 * chunk] + [
        5, 900, 3, 8_900] * 300  # within and across chunks (the 8,900s land on every offset of a chunk's end)
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
    assert sub.fieldlab_fast_messages > len(payloads) // 2  # most were whole in the buffer: the fast path
    _nothing_left_to_redeliver(mosquitto, f"reads-{site}", topic)


def _nothing_left_to_redeliver(mosquitto, client_id, topic):
    """The broker got every PUBACK (sent in bulk): the same session, resumed, gets only a marker published
    after it is back (the broker sends what it still holds for a session first, so nothing can come late)."""
    again, marker = [], threading.Event()

    def on_message(c, u, m):
        again.append(m.payload)
        if m.payload == b"marker":
            marker.set()

    late = connect(mosquitto.url, client_id, on_message=on_message, persistent=True, subscriptions=[(topic, 1)])
    try:
        pub = paho.Client(CallbackAPIVersion.VERSION2)
        pub.connect(mosquitto.url.host, mosquitto.url.port)
        pub.loop_start()
        pub.publish(topic, b"marker", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        assert marker.wait(10)
    finally:
        late.disconnect()
        late.loop_stop()
    assert again == [b"marker"]


def test_the_fast_path_keeps_what_paho_would_tell_the_callback(mosquitto, site):
    """QoS 0 and 1, retained or not, topics in UTF-8: the same message attributes as paho's own reader gives
    (a per-topic callback turns the fast path off, so the same client class shows paho's result too)."""
    def receive(mode: str, client_id: str, fast: bool, n: int, send=()) -> tuple[list, int]:
        got, done = [], threading.Event()

        def on_message(c, u, msg):
            got.append((msg.topic.replace(mode, "MODE"), msg.payload, msg.qos, msg.retain, msg.dup, msg.mid > 0,
                        msg.info.mid == msg.mid))
            if len(got) == n:
                done.set()

        def paho_path(c):  # runs in the network thread before anything is read after CONNACK
            c.message_callback_add(f"fieldlab/v1/{site}/a/{mode}/nothing/telemetry", lambda *a: None)

        sub = connect(mosquitto.url, client_id, on_message=on_message, on_connect=None if fast else paho_path,
                      subscriptions=[(f"fieldlab/v1/{site}/a/{mode}/+/telemetry", 1)])
        try:
            if send:
                pub = paho.Client(CallbackAPIVersion.VERSION2)
                pub.max_inflight_messages_set(len(send))  # none held back: QoS 0 and 1 go out in call order
                pub.connect(mosquitto.url.host, mosquitto.url.port)
                pub.loop_start()
                for info in [pub.publish(t.replace("MODE", mode), p, qos=q, retain=r) for t, p, q, r in send]:
                    info.wait_for_publish(10)
                pub.disconnect()
                pub.loop_stop()
            assert done.wait(20), f"{len(got)} of {n} arrived"
            return got, sub.fieldlab_fast_messages
        finally:
            sub.disconnect()
            sub.loop_stop()

    sent = [(f"fieldlab/v1/{site}/a/MODE/pr\u00e9sse-{i % 3}/telemetry", bytes([i]) * (1 + i * 37 % 500), i % 2,
             i % 5 == 0) for i in range(200)]
    retained = {}
    for t, p, q, r in sent:
        if r:
            retained[t] = (p, q)
    results = {}
    for fast in (True, False):
        mode = "fast" if fast else "paho"
        live, used = receive(mode, f"live-{site}-{mode}", fast, len(sent), sent)
        assert (used > 0) is fast
        late, used = receive(mode, f"late-{site}-{mode}", fast, len(retained))
        assert (used > 0) is fast
        # in order per QoS: the broker may send QoS 0 messages ahead of QoS 1 ones waiting for a PUBACK window
        results[fast] = (sorted(live, key=lambda m: m[2]), sorted(late))
    assert results[True] == results[False]
    # a live subscriber gets retain=False (MQTT 3.1.1, 3.3.1.3); a later one the last retained message of a
    # topic, with retain=True
    assert results[True] == (
        sorted([(t, p, q, False, False, q > 0, True) for t, p, q, r in sent], key=lambda m: m[2]),
        sorted((t, p, q, True, False, q > 0, True) for t, (p, q) in retained.items()))


def test_filling_the_buffer_leaves_errors_and_the_end_to_pahos_next_read():
    """_BufferedSocket.fill reads ahead for the fast path; whatever the socket says instead of data (nothing
    yet, the end, an error) must reach paho's next recv exactly as the socket said it."""
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    buffered = _BufferedSocket(a)
    buffered.fill()  # nothing there yet: nothing happens, no error
    assert buffered.buffered() == 0
    b.sendall(b"\x30\x03\x00\x01x")
    assert _wait(lambda: _readable(a))
    buffered.fill()
    assert buffered.buffered() == 5 and buffered.recv(1) == b"\x30" and buffered.recv(10) == b"\x03\x00\x01x"
    b.close()  # the peer is gone: recv says b"" (paho: connection lost), once the buffer is read
    assert _wait(lambda: _readable(a))
    buffered.fill()
    assert buffered.recv(1) == b""
    a.close()

    class Failing:  # a socket whose next read fails once, then would have data
        calls = 0

        def recv(self, n):
            self.calls += 1
            if self.calls == 1:
                raise ConnectionResetError("reset by the broker")
            return b"\x30"

    failing = _BufferedSocket(Failing())
    failing.fill()  # the read ahead meets the error and keeps it for paho's next recv
    try:
        failing.recv(1)
    except ConnectionResetError as e:
        assert str(e) == "reset by the broker"
    else:
        raise AssertionError("the error of the read ahead was lost")
    assert failing.recv(1) == b"\x30"  # and only once


def test_a_publish_packet_is_taken_only_when_whole_and_well_formed():
    from contract.mqtt import _publish_at

    topic = b"fieldlab/v1/s/a/l/m/telemetry"
    qos1 = bytes([0x32, 2 + len(topic) + 2 + 3]) + len(topic).to_bytes(2, "big") + topic + b"\x00\x07abc"
    assert _publish_at(qos1, 0, len(qos1)) == (0x32, 2, len(qos1))
    assert _publish_at(qos1, 0, len(qos1) - 1) is None  # not all read yet
    assert _publish_at(b"\x34" + qos1[1:], 0, len(qos1)) is None  # QoS 2: paho's
    assert _publish_at(b"\x90\x03\x00\x01\x00", 0, 5) is None  # a SUBACK: paho's
    empty = bytes([0x30, 2 + 3]) + b"\x00\x00abc"  # an empty topic is malformed: paho reports it
    assert _publish_at(empty, 0, len(empty)) is None
    long_topic = bytes([0x30, 2 + 1]) + b"\x00\x05x"  # a topic longer than the packet
    assert _publish_at(long_topic, 0, len(long_topic)) is None


def _readable(sock) -> bool:
    import select
    return bool(select.select([sock], [], [], 0)[0])


def _wait(ok, timeout=5.0) -> bool:
    import time
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
