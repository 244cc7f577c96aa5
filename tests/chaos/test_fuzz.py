"""Fuzzing the running system (issue 13): generated and mutated contract messages of every kind (JSON and
binary FLT1) at QoS 1 through a real Mosquitto into a running ``fieldlab gateway``, beside a well-behaved
simulated machine whose KPIs must stay exact.

The oracle is the contract itself, run here on the same bytes: the gateway's topic parser
(``parse_topic``), ``contract.decode`` and its own rule of --max-machines, in the order the gateway applies
them. Where the messages go (one site, the gateway's):

- fuzz machines ``a/fz-<n>/fz-<nnn>`` on lines of their own: valid and mutated messages from more machine
  names (60) than --max-machines lets in (40, with the good machine), so the cap refuses some;
- the good machine's own topics: only messages the oracle refuses (one accepted there would change its KPIs,
  which must equal its ledger);
- machine topics with invalid levels inside the gateway's subscription (``_line``, an empty level, 65
  characters, non-ASCII): refused by the topic parser;
- topics outside the subscription (another site, kinds kpi/cmd/other, other depths, v2): acknowledged by the
  broker, never delivered to the gateway, not counted.
"""
from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import uuid
from collections import Counter

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract import (
    BINARY_MAGIC, MAX_BATCH, REASONS, TS_MAX, TS_MIN, ContractError, decode, encode_telemetry_binary, parse_topic,
)
from contract.payloads import BINARY_HEADER
from contract.topics import DEADLETTER_TOPIC, ROOT
from fieldlab.broker import free_port
from gateway.service import INGEST_KINDS
from tests.chaos.conftest import (
    FULL, compare, gateway_cmd, http_json, metric, poll, rss_kib, settled_kpis, sim_cmd,
)

MESSAGES = 100_000 if FULL else 5_000
T0 = 1_767_225_600.0  # 2026-01-01, the fuzz machines' first time: fixed, so a seed repeats the same bytes
CAP = 40  # --max-machines: the good machine and 39 of the 60 fuzz machine names get in, the rest is refused
RSS_LIMIT_KIB = 700 * 1024  # see the test's docstring
LAG = 300  # messages the gateway or the listener may be behind (plus a batch of 100 and its dead letters): well
# below Mosquitto's max_queued_messages (1000), beyond which it drops QoS 1 messages for a slow subscriber
KINDS = ("state", "counts", "telemetry", "binary", "status")
NAMES = ("temperature", "power", "spindle.speed", "Druck_bar", "温度")
ODD = ("1", "", "NaN", None, {}, [], [[1.0]], {"v": 1}, 0.5, -1, True)
TEXTS = ("é", "温度", "🙂", "\u0000", "\ufeff", "\u202e", "x" * 129, "", " ")
NUMBERS = (-1, -0.5, 0.5, 2**53, 2**63, 2**64, 10**30, 1e308, -1e308, 5e-324, float("nan"), float("inf"),
           "NaN", "1.5", True, False, None)
BAD_LEVELS = ("_line", "_x", "", "ü", "m" * 65, "-m", "a b", "機械")


def _times(rng: random.Random, t: float, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t += rng.choice((0.0, 0.001, 1.0, rng.uniform(0, 30)))
        out.append(t)
    return out


def _valid(rng: random.Random, kind: str, t: float) -> dict:
    """A valid message of the contract as a JSON object (binary: the telemetry object it is made from)."""
    ts = _times(rng, t, rng.choice((1, 1, 2, 3, 10, 100)))
    if kind == "status":
        return {"v": 1, "ts": t, "status": rng.choice(("online", "offline")), "info": {"agent": "fuzz"}}
    if kind == "state":
        model = rng.choice(("packml", "simple"))
        obj = {"v": 1, "model": model, "ts": ts, "state": [rng.randrange(17 if model == "packml" else 5) for _ in ts]}
        if rng.random() < 0.5:
            obj["reason"] = [rng.choice(list(REASONS)) for _ in ts]
        return obj
    if kind == "counts":
        good = reject = 0
        obj = {"v": 1, "ts": ts, "good": [], "reject": []}
        for _ in ts:
            good, reject = good + rng.randrange(3), reject + (rng.random() < 0.1)
            obj["good"].append(good)
            obj["reject"].append(reject)
        if rng.random() < 0.5:
            obj.update(product=rng.choice(("bracket-A", "gear-B")), ideal_cycle_s=rng.choice((1.0, 40.0)))
        return obj
    names = rng.sample(NAMES, rng.randint(1, 3))
    obj = {"v": 1, "ts": ts, "signals": {k: [rng.choice((None, rng.uniform(-1e3, 1e3), rng.randrange(9)))
                                              for _ in ts] for k in names}}
    if rng.random() < 0.3:
        obj["units"] = {names[0]: "degC"}
    return obj


def _arrays(obj: dict) -> list[tuple[dict, str]]:
    """(container, key) of every array of a message, the signals' too."""
    out = [(obj, k) for k, v in obj.items() if isinstance(v, list)]
    if isinstance(obj.get("signals"), dict):
        out += [(obj["signals"], k) for k, v in obj["signals"].items() if isinstance(v, list)]
    return out


def _element(rng: random.Random, obj: dict, value) -> dict:
    """One element of one array (or a top-level field, if there is no array) replaced by ``value``."""
    arrays = [(c, k) for c, k in _arrays(obj) if c[k]]
    if arrays:
        c, k = rng.choice(arrays)
        c[k][rng.randrange(len(c[k]))] = value
    else:
        obj[rng.choice(list(obj) or ["v"])] = value
    return obj


def _num(x) -> bool:
    return type(x) in (int, float)


TIME_FAULTS = (lambda t: t * 1e3, lambda t: t * 1e6, lambda t: t * 1e9, lambda t: t % 1e6, lambda t: 0.0,
               lambda t: TS_MIN, lambda t: TS_MAX - 1, lambda t: TS_MAX)


def _bad_times(rng: random.Random, obj: dict) -> dict:
    """Milliseconds (JavaScript Date.now()), micro- or nanoseconds, seconds since boot, an unset clock, or
    every time at an edge of the plausible range (the edges inside it are valid)."""
    f, ts = rng.choice(TIME_FAULTS), obj.get("ts")
    obj["ts"] = [f(x) if _num(x) else x for x in ts] if isinstance(ts, list) else f(ts) if _num(ts) else ts
    return obj


def _length(rng: random.Random, obj: dict) -> dict:
    """One array one element longer or shorter than the others."""
    arrays = _arrays(obj)
    if arrays:
        c, k = rng.choice(arrays)
        if c[k] and rng.random() < 0.5:
            c[k].pop()
        else:
            c[k].append(c[k][-1] if c[k] else 1.0)
    return obj


def _nest(rng: random.Random, obj: dict) -> bytes:
    """One field nested deep in arrays: 1,000 levels still parse (orjson's limit is 1,024), 1,100 do not."""
    depth = rng.choice((2, 50, 1000, 1100))
    key = rng.choice(list(obj) or ["v"])
    return json.dumps({**obj, key: "@@"}).encode().replace(b'"@@"', b"[" * depth + b"1.5" + b"]" * depth)


def _oversized(rng: random.Random, obj: dict) -> dict:
    """Every array of the message at the contract's limit, or one past it (times all equal: non-decreasing)."""
    n = rng.choice((MAX_BATCH, MAX_BATCH + 1))
    for c, k in _arrays(obj):
        if c[k]:
            c[k] = [c[k][0]] * n if k == "ts" else [c[k][i % len(c[k])] for i in range(n)]
    return obj


def _drop(rng: random.Random, obj: dict) -> dict:
    key = rng.choice(list(obj) or ["v"])
    return {k: v for k, v in obj.items() if k != key}


def _text(rng: random.Random, obj: dict) -> dict:
    """A name or string of the message made odd: non-ASCII, control characters, too long, empty."""
    text = rng.choice(TEXTS)
    if isinstance(obj.get("signals"), dict) and obj["signals"]:
        old = rng.choice(list(obj["signals"]))
        obj["signals"] = {(text if k == old else k): v for k, v in obj["signals"].items()}
    else:
        obj[rng.choice(("model", "product", "status", "x"))] = text
    return obj


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _repack(rng: random.Random, data: bytes) -> bytes:
    """A binary header that lies about its rows, signals or JSON length."""
    if len(data) < BINARY_HEADER.size:
        return data
    magic, n, k, h = BINARY_HEADER.unpack_from(data)
    n, k, h = rng.choice(((n + 1, k, h), (max(n - 1, 0), k, h), (n, k + 1, h), (n, 0, h), (n, k, h + 8),
                          (0, k, h), (MAX_BATCH + 1, k, h), (n, 4097, h), (2**32 - 1, 0xFFFF, 0xFFFF)))
    return BINARY_HEADER.pack(magic, n & 0xFFFFFFFF, k & 0xFFFF, h & 0xFFFF) + data[BINARY_HEADER.size:]


# mutations of the message as an object: each returns the object, or already the bytes
OBJECT_MUTATIONS = {
    "wrong type": lambda rng, o: {**o, rng.choice(list(o) or ["v"]): rng.choice(ODD)},
    "number": lambda rng, o: _element(rng, o, rng.choice(NUMBERS)),
    "times": _bad_times,
    "backwards": lambda rng, o: {**o, "ts": o["ts"][::-1]} if isinstance(o.get("ts"), list) else o,
    "length": _length,
    "extra key": lambda rng, o: {**o, rng.choice(("x", "V", "units", "info", "reason", "total")): rng.choice(ODD)},
    "missing key": _drop,
    "version": lambda rng, o: {**o, "v": rng.choice((2, 0, -1, "1", 1.0, None, True, 1.5))},
    "unicode": _text,
    "nesting": _nest,
    "oversized": _oversized,
}
# mutations of the bytes, JSON or binary
BYTE_MUTATIONS = {
    "truncated": lambda rng, b: b[:rng.randrange(len(b))] if b else b,
    "random bytes": lambda rng, b: rng.randbytes(rng.choice((1, 4, 12, 100, 1000))),
    "flipped bytes": _flip,
    "empty": lambda rng, b: rng.choice((b"", b"{}", b"[]", b"null", b"0", b'""', b" ", b"\xff\xfe")),
    "trailing": lambda rng, b: b + rng.choice((b"\x00", b" ", b"x", b"{}", b"\x00" * 8)),
    "binary header": _repack,
}
WEIGHTS = [0.04 if name == "oversized" else 1 for name in OBJECT_MUTATIONS]  # a 2 MB message costs 10-50 ms


def _binary(obj: dict) -> bytes:
    """The telemetry object in the binary form, whatever it holds (the arrays written as they are)."""
    try:
        sig = {k: [float("nan") if x is None else x for x in v] for k, v in obj["signals"].items()}
        return encode_telemetry_binary(obj["ts"], sig, obj.get("units"))
    except (ContractError, KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return BINARY_MAGIC + json.dumps(obj, default=str).encode()[:200]  # what cannot be encoded: a broken header


def _payload(rng: random.Random, kind: str, t: float) -> tuple[bytes, str]:
    """(payload, what was done to it): a third valid, the rest with one or two mutations."""
    obj, done = _valid(rng, kind, t), []
    data = None
    for _ in range(0 if rng.random() < 0.33 else rng.choice((1, 1, 2))):
        if data is None and rng.random() < 0.7:
            name = rng.choices(list(OBJECT_MUTATIONS), WEIGHTS)[0]
            got = OBJECT_MUTATIONS[name](rng, obj)
            obj, data = (got, None) if isinstance(got, dict) else (obj, got)
        else:
            if data is None:
                data = _binary(obj) if kind == "binary" else json.dumps(obj).encode()
            name = rng.choice(list(BYTE_MUTATIONS))
            data = BYTE_MUTATIONS[name](rng, data)
        done.append(name)
    if data is None:
        data = _binary(obj) if kind == "binary" else json.dumps(obj).encode()
    return data, "+".join(done) or "valid"


def _topic(rng: random.Random, site: str, good: str, kind: str) -> str:
    """Where a message goes: mostly fuzz machines; the good machine; invalid levels; outside the subscription."""
    k = "telemetry" if kind == "binary" else kind
    if rng.random() < 0.05:  # a payload on another kind's topic
        k = rng.choice(("state", "counts", "telemetry", "status"))
    r = rng.random()
    if r < 0.80:
        return f"{ROOT}/{site}/a/fz-{rng.randrange(3)}/fz-{rng.randrange(20):03d}/{k}"
    if r < 0.88:
        return f"{ROOT}/{good}/{k}"
    if r < 0.94:
        levels = ["a", f"fz-{rng.randrange(3)}", f"fz-{rng.randrange(20):03d}"]
        levels[rng.randrange(3)] = rng.choice(BAD_LEVELS)
        return f"{ROOT}/{site}/{'/'.join(levels)}/{k}"
    return rng.choice((f"{ROOT}/{site}x/a/fz-0/fz-000/{k}", f"{ROOT}/{site}/a/fz-0/fz-000/kpi",
                       f"{ROOT}/{site}/a/fz-0/fz-000/cmd", f"{ROOT}/{site}/a/fz-0/fz-000/State",
                       f"{ROOT}/{site}/a/fz-0/fz-000/{k}/x", f"{ROOT}/{site}/a/fz-0/{k}",
                       f"fieldlab/v2/{site}/a/fz-0/fz-000/{k}", f"{ROOT}/_sys/fuzz/x/y/{k}"))


class Oracle:
    """What the gateway must do with each message, from the contract run here on the same bytes."""

    def __init__(self, site: str, cap: int):
        self.filters = [f"{ROOT}/{site}/+/+/+/{k.value}" for k in INGEST_KINDS]  # the gateway's subscription
        self.known: set[str] = set()  # the machines the gateway holds, by path
        self.cap = cap

    def subscribed(self, topic: str) -> bool:
        return any(paho.topic_matches_sub(f, topic) for f in self.filters)

    def error(self, topic: str, payload: bytes) -> str | None:
        """None if the gateway must accept the message, else the start of its dead letter's reason."""
        try:
            ref, kind = parse_topic(topic)
            decode(kind, payload)
        except ContractError as e:
            return str(e)
        except Exception as e:  # the gateway says "internal error" too: the test fails on it, with the cases
            return f"internal error: {type(e).__name__}: {e}"
        if ref.path not in self.known:
            if len(self.known) >= self.cap:
                return f"machine {ref.path} refused: "
            self.known.add(ref.path)
        return None


class Listener:
    """Counts what the broker delivers on the gateway's subscription, by topic, and keeps the dead letters."""

    def __init__(self, port: int, filters: list[str]):
        self.counts: Counter = Counter()
        self.dead: list[tuple[str, str, bytes]] = []  # (topic, error, digest of the payload it carries)
        ready = []
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-listen-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters + [DEADLETTER_TOPIC]])
        c.on_subscribe = lambda *a: ready.append(1)
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert poll(lambda: ready, 5), "the listener got no SUBACK"

    def _on_message(self, c, u, m) -> None:
        if m.topic == DEADLETTER_TOPIC:
            d = json.loads(m.payload)
            head = base64.b64decode(d["payload_base64"]) if "payload_base64" in d else d["payload"].encode()
            self.dead.append((d["topic"], d["error"], hashlib.sha1(head).digest()))
        else:
            self.counts[m.topic] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(900 if FULL else 150)
def test_fuzzed_messages_beside_a_good_machine(durable_broker, procs, report, tmp_path, seed, request):
    """RSS bound at the end: the gateway starts at about 45 MB and levels off near 170-200 MB after some 30,000
    messages of this mix (the 40 machines' history in the live windows, caches, the allocator's arenas), unless
    the mix held a valid batch at the contract's limit (100,000 state changes or counter readings) for one
    machine: until the timeline kept each machine's rows in a segment of its own (gateway/timeline.py ``_Rows``),
    that one batch grew all 40 machines' rows to 131,072 and RSS stayed near 430 MB until pruning gave the room
    back. 700 MB at the end also catches a leak of some 5 KiB per message over the full run. The peak (sampled
    once per 100 messages) is reported, not bounded (up to 1 GB measured)."""
    rng = random.Random(seed)
    site, http = f"f{uuid.uuid4().hex[:8]}", free_port()
    ledger_file = tmp_path / "ledger.json"
    gw = procs("gateway", gateway_cmd(durable_broker.port, http, tmp_path / "state", site,
                                      "--max-machines", str(CAP)))
    gw.wait_for("gateway reading")
    oracle = Oracle(site, CAP)
    listener = Listener(durable_broker.port, oracle.filters)
    request.addfinalizer(listener.close)
    sim = procs("sim", sim_cmd(durable_broker.port, site, ledger_file, 150 if FULL else 20, machines=1, seed=seed))
    sim.wait_for("publishing:")
    rows = poll(lambda: http_json(f"http://127.0.0.1:{http}/api/machines")[1], 20)
    assert rows, gw.tail()
    good = rows[0]["id"]
    oracle.known.add(good)  # first: the fuzzer starts after it
    good_topics = {f"{ROOT}/{good}/{k.value}" for k in INGEST_KINDS}
    rss_start = rss_peak = rss_kib(gw.popen.pid)

    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-pub-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", durable_broker.port)
    pub.loop_start()
    request.addfinalizer(pub.loop_stop)
    started = time.monotonic()
    sent = Counter()  # all, subscribed, accepted, on the good machine's topics, and by mutation
    expected_dead: list[tuple[str, str, bytes]] = []  # (topic, start of the error, digest of the payload's head)
    t = T0

    def lag() -> float:
        """How far the gateway (its accepted messages and the dead letters it sent), or the listener, is behind
        the fuzzer, in messages (at most a few off: the good machine's messages in flight)."""
        good_seen = sum(listener.counts[tp] for tp in good_topics) - sent["good topics"]
        fuzz_seen, dead = sum(listener.counts.values()) - good_seen, len(listener.dead)
        return max(sent["subscribed"] + good_seen - (metric(http, "fieldlab_gateway_messages_total") or 0) - dead,
                   sent["subscribed"] - fuzz_seen + len(expected_dead) - dead)

    while sent["all"] < MESSAGES:
        batch = []
        for _ in range(min(100, MESSAGES - sent["all"])):
            kind = rng.choice(KINDS)
            t += rng.uniform(-5, 10)  # mostly forwards, sometimes back: late data, accepted
            payload, how = _payload(rng, kind, t)
            topic = _topic(rng, site, good, kind)
            if topic in good_topics and oracle.error(topic, payload) is None:
                topic = f"{ROOT}/{site}/a/fz-0/fz-000/{topic.rsplit('/', 1)[1]}"  # accepted: not on the good one
            if oracle.subscribed(topic):
                error = oracle.error(topic, payload)
                sent["subscribed"] += 1
                sent["good topics"] += topic in good_topics
                if error is None:
                    sent["accepted"] += 1
                else:
                    head = payload[:1024]  # as text, unless binary (docs/contract.md, dead letters)
                    head = head if head[:4] == BINARY_MAGIC else head.decode("utf-8", "replace").encode()
                    expected_dead.append((topic, error, hashlib.sha1(head).digest()))
            sent["all"] += 1
            sent.update(how.split("+"))
            batch.append(pub.publish(topic, payload, qos=1))
        for info in batch:
            info.wait_for_publish(30)
            assert info.rc == paho.MQTT_ERR_SUCCESS and info.is_published(), info.rc
        assert poll(lambda: lag() <= LAG, 60, 0.01), ("fell behind", lag(), dict(sent), gw.tail())
        rss_peak = max(rss_peak, rss_kib(gw.popen.pid))
    publish_s = time.monotonic() - started
    pub.disconnect()
    pub.loop_stop()

    assert sim.popen.wait(120) == 0, sim.tail()

    def seen() -> tuple[dict, dict]:
        """(what the broker delivered and the gateway counted, what the fuzzer's oracle says it must be)"""
        good_seen = sum(listener.counts[tp] for tp in good_topics) - sent["good topics"]
        got = {"fuzz delivered": sum(n for tp, n in listener.counts.items() if tp not in good_topics),
               "accepted": metric(http, "fieldlab_gateway_messages_total"),
               "dead letters": metric(http, "fieldlab_gateway_dead_letters_total"),
               "dead letters delivered": len(listener.dead)}
        return got, {"fuzz delivered": sent["subscribed"] - sent["good topics"],  # the broker matched as we did
                     "accepted": sent["accepted"] + good_seen, "dead letters": len(expected_dead),
                     "dead letters delivered": len(expected_dead)}

    poll(lambda: (lambda got, want: got == want)(*seen()), 30)
    got, want = seen()
    assert got == want, (got, want, dict(sent))
    dead = listener.dead
    for d, e in zip(dead, expected_dead):  # in the order sent: one publisher, one queue
        assert d[0] == e[0] and d[1] and d[1].startswith(e[1]) and d[2] == e[2], (d, e)
    assert metric(http, "fieldlab_gateway_machines") == len(oracle.known)
    assert metric(http, "fieldlab_gateway_tick_failures_total") == 0

    ledger = json.loads(ledger_file.read_text())
    kpis = settled_kpis(durable_broker.port, site, ledger)
    result = compare(kpis, ledger)
    health = http_json(f"http://127.0.0.1:{http}/healthz")
    rss_end, tick_s = rss_kib(gw.popen.pid), metric(http, "fieldlab_gateway_tick_seconds")
    print("fuzz seed", seed, "sent", dict(sent))
    report(scenario="fuzzed contract messages beside a good machine", injected="generated and mutated, JSON and FLT1",
           times=sent["all"], subscribed=sent["subscribed"], accepted=sent["accepted"], dead_letters=len(dead),
           machines=len(oracle.known), publish_s=round(publish_s, 1), recovery_s=None, **result,
           rss_kib=[rss_start, rss_peak, rss_end], tick_s=tick_s)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["run_s_error"] < 1e-3, \
        (result, {m: kpis.get(m) for m in ledger}, ledger)
    assert health[0] == 200, (health, gw.tail())
    assert rss_end < RSS_LIMIT_KIB, (rss_start, rss_peak, rss_end)
    # the fuzz machines' times span 2000-2099: data years apart must not slow every machine's KPIs (the shift
    # calendar laid out over every day between them cost 1-2 s a tick; for 41 machines it takes milliseconds)
    assert tick_s < 1.0, tick_s
    internal = Counter(error[:120] for _, error, _ in dead if "internal error" in error)
    assert not internal, internal
