"""Damaged state files (journal, checkpoint) never stop a start and never count wrong: what is damaged is
moved aside with a warning naming the file and what was lost, and the gateway starts with the rest."""
import json
import logging
import os
import random
import signal
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pytest

from contract import Kind, MachineRef, encode_counts
from contract.mqtt import BrokerUrl
from fieldlab.broker import free_port
from gateway import checkpoint
from gateway.engine import KpiEngine
from gateway.service import Gateway
from tests.gateway.test_restart import (
    T0, close, engine_with_data, publish, publisher, retained_kpi, start_gateway, stop_cleanly,
)

SEED = 20261213  # for the random damage; printed by the tests that use it


def counts(ref: MachineRef, ts: list[float], good: list[int]) -> tuple[str, bytes]:
    return ref.topic(Kind.COUNTS), encode_counts(ts, good, [0] * len(ts))


def write_journal(path, records) -> None:
    j = checkpoint.Journal(path, sync_s=None)
    for topic, payload in records:
        j.append(topic, payload)
    j.close()


def non_utf8_topic_record(topic: str, payload: bytes) -> bytes:
    """A record whose topic bytes are not UTF-8 but whose CRC-32 (bytes 4..8, over the rest) is right."""
    rec = bytearray(checkpoint.record(topic, payload))
    rec[rec.find(topic.encode())] = 0xFF
    rec[4:8] = struct.pack(">I", zlib.crc32(rec[8:]))
    return bytes(rec)


async def restored(gw: Gateway) -> dict[str, tuple[int, int]]:
    """Start the gateway (it restores from its state dir), compute KPIs once, stop: {machine: (good, reject)}."""
    await gw.start()
    try:
        return {r["machine"].machine: (r["good"], r["reject"]) for r in gw.tick()}
    finally:
        await gw.stop()


def aside(path) -> list:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


async def test_a_changed_digit_is_caught_by_the_records_checksum(mosquitto, site, tmp_path, caplog):
    """269 parts changed to 361 by one bad spot on disk: that record is not replayed, the ones after it are."""
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, state_dir=tmp_path)
    m1, m2 = MachineRef(site, "a", "l", "m1"), MachineRef(site, "a", "l", "m2")
    good = [counts(m1, [T0, T0 + 100], [0, 100]), counts(m1, [T0 + 200], [269]), counts(m2, [T0, T0 + 10], [0, 5])]
    path = checkpoint.journal_path(gw.checkpoint_path, 1)
    write_journal(path, good)
    data = path.read_bytes()
    assert data.count(b"269") == 1
    path.write_bytes(data.replace(b"269", b"361"))
    with caplog.at_level(logging.WARNING, "fieldlab.gateway"):
        await gw.start()
    try:
        rows = {r["machine"].machine: (r["good"], r["reject"]) for r in gw.tick()}
        # the intact records stay journaled in its place until a checkpoint covers them
        assert checkpoint.replay(path) == [good[0], good[2]]
    finally:
        await gw.stop()
    assert rows == {"m1": (100, 0), "m2": (5, 0)}  # not 361
    moved = aside(path)
    assert len(moved) == 1 and moved[0].read_bytes() == data.replace(b"269", b"361")
    offset = len(checkpoint.JOURNAL_MAGIC) + len(checkpoint.record(*good[0]))
    assert (f"journal damaged path={path} offset={offset} reason=\"CRC-32 mismatch\" replayed=2 "
            f"lost_bytes={len(checkpoint.record(*good[1]))} lost_records=1; moved aside to {moved[0]}") in caplog.text


@pytest.mark.parametrize("damage", ["topic not UTF-8", "garbage", "cut short", "old format"])
async def test_a_damaged_journal_is_replayed_up_to_the_damage_and_the_gateway_starts(mosquitto, site, tmp_path,
                                                                                     caplog, damage):
    rng = random.Random(SEED)
    print(f"seed={SEED}")
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, state_dir=tmp_path)
    m1, m2 = MachineRef(site, "a", "l", "m1"), MachineRef(site, "a", "l", "m2")
    a, b, c = counts(m1, [T0, T0 + 100], [0, 100]), counts(m2, [T0, T0 + 10], [0, 5]), counts(m1, [T0 + 200], [150])
    path = checkpoint.journal_path(gw.checkpoint_path, 1)
    if damage == "old format":  # a journal of the format before checksums, with a topic that is not UTF-8
        old = b"".join(struct.pack(">HI", len(t.encode()), len(p)) + t.encode() + p for t, p in (a, b))
        path.write_bytes(old + struct.pack(">HI", 3, 2) + b"\xff\xfe\xfd{}")
        expect = {}
    else:
        write_journal(path, [a])
        last = checkpoint.record(*c)
        rest = {"topic not UTF-8": non_utf8_topic_record(*c) + checkpoint.record(*b),  # reading goes on after it
                "garbage": rng.randbytes(64) + checkpoint.record(*b) + last,
                "cut short": checkpoint.record(*b) + last[: rng.randrange(1, len(last))]}[damage]  # a power cut
        path.write_bytes(path.read_bytes() + rest)
        expect = {"m1": (150 if damage == "garbage" else 100, 0), "m2": (5, 0)}
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING, "fieldlab.gateway"):
        rows = await restored(gw)
    assert rows == expect
    moved = aside(path)
    assert len(moved) == 1 and moved[0].read_bytes() == damaged
    assert f"journal damaged path={path} " in caplog.text and f"moved aside to {moved[0]}" in caplog.text
    if damage == "old format":
        assert 'reason="not a journal of this format' in caplog.text and f"lost_bytes={len(damaged)}" in caplog.text


def altered(path, key: str) -> None:
    """Flip one byte of one array and save the file again with NumPy: a readable file (the zip's own
    CRCs are right) that is not what the gateway wrote."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data[key].reshape(-1).view(np.uint8)[0] ^= 0x10
    np.savez(path, **data)


async def test_an_altered_checkpoint_is_moved_aside_and_the_journals_after_it_replayed(mosquitto, site, tmp_path,
                                                                                     caplog):
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, state_dir=tmp_path)
    path = gw.checkpoint_path
    e, _ = engine_with_data(None)
    arrays, doc = checkpoint.capture(e, [MachineRef(site, "a", "l", "m1"), MachineRef(site, "a", "l", "m2")], {})
    checkpoint.write(path, arrays, {**doc, "journal": 1})
    altered(path, "c.pre")  # the counters' prefix sums: good parts
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        checkpoint.read(path, KpiEngine())
    m9 = MachineRef(site, "a", "l", "m9")
    write_journal(checkpoint.journal_path(path, 2), [counts(m9, [T0, T0 + 10], [0, 7])])
    with caplog.at_level(logging.WARNING, "fieldlab.gateway"):
        rows = await restored(gw)
    assert rows == {"m9": (7, 0)}
    moved = aside(path)
    assert len(moved) == 1
    assert f"checkpoint {path} not used (checksum mismatch" in caplog.text and str(moved[0]) in caplog.text


@pytest.mark.parametrize("poison", ["engine.now_ts", "calendar_span"])
def test_a_checkpoint_with_an_implausible_time_is_refused(tmp_path, caplog, poison):
    """A time in milliseconds (here with a right checksum: a bug that wrote it) would make every later start
    lay out a calendar of millennia; it is refused, saying why, and moved aside."""
    e, t = engine_with_data(None)
    arrays, doc = checkpoint.capture(e, [MachineRef("s", "a", "l", "m1"), MachineRef("s", "a", "l", "m2")], {})
    if poison == "calendar_span":
        doc["calendar_span"] = [doc["calendar_span"][0], doc["calendar_span"][1] * 1000]
        why = r"implausible time: calendar_span\[1\] = \d{13}\.0 is not a Unix time in seconds"
    else:
        arrays["engine.now_ts"][1] *= 1000
        why = r"implausible time: engine\.now_ts\[1\] = \d{13}\.0 is not a Unix time in seconds"
    path = tmp_path / "gw.checkpoint.npz"
    checkpoint.write(path, arrays, doc)
    with pytest.raises(checkpoint.CheckpointError, match=why + r" from 2000-01-01 to 2100-01-01 \(milliseconds\?\)"):
        checkpoint.read(path, KpiEngine())
    with caplog.at_level(logging.WARNING, "fieldlab.gateway"):
        assert checkpoint.load(path, KpiEngine()) is None
    assert not path.exists() and len(aside(path)) == 1
    assert f"checkpoint {path} not used (implausible time: {poison}[1] = " in caplog.text


def gateway_cmd(port: int, site: str, state_dir, http_port: int) -> list[str]:
    return [sys.executable, "-m", "fieldlab", "gateway", "--broker", f"mqtt://127.0.0.1:{port}", "--site", site,
            "--state-dir", str(state_dir), "--http-port", str(http_port), "--checkpoint-every", "3600"]


def checkpoint_path(port: int, site: str, state_dir):
    """Where the gateway of ``gateway_cmd`` keeps its checkpoint (its default client id names it)."""
    return Gateway(BrokerUrl.parse(f"mqtt://127.0.0.1:{port}"), site=site, state_dir=state_dir).checkpoint_path


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET, retried until it answers 200 or ``timeout`` passes."""
    deadline, got = time.monotonic() + timeout, (0, b"")
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            got = (e.code, e.read())
        except OSError:
            pass
        time.sleep(0.1)
    return got


def test_a_gateway_process_starts_over_a_corrupt_journal_and_keeps_computing(durable_broker, tmp_path):
    site = f"t{uuid.uuid4().hex[:8]}"
    m1, m2 = MachineRef(site, "a", "l", "m1"), MachineRef(site, "a", "l", "m2")
    state_dir, http_port = tmp_path / "state", free_port()
    path = checkpoint.journal_path(checkpoint_path(durable_broker.port, site, state_dir), 1)
    write_journal(path, [counts(m1, [T0, T0 + 100], [0, 42])])
    tail = checkpoint.record(*counts(m2, [T0, T0 + 10], [0, 9]))
    path.write_bytes(path.read_bytes() + b"\x00\xffgarbage" + non_utf8_topic_record(*counts(m2, [T0], [0]))
                     + checkpoint.record(*counts(m2, [T0, T0 + 10], [0, 7])) + tail[:-3])
    pub = publisher(durable_broker.port)
    gw = None
    try:
        gw, out = start_gateway(gateway_cmd(durable_broker.port, site, state_dir, http_port))
        assert get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200, "".join(out)
        publish(pub, m1.topic(Kind.COUNTS), encode_counts([T0 + 200], [50], [0]))  # continues the replayed counter
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (retained_kpi(durable_broker.port, m1.topic(Kind.KPI), 0.3)
                                               or {}).get("good") != 50:
            pass
        assert gw.poll() is None, "".join(out)
        stop_cleanly(gw, out)
    finally:
        close(gw, pub)
    log = "".join(out)
    assert f"journal damaged path={path} " in log and "replayed=2" in log, log
    assert (retained_kpi(durable_broker.port, m1.topic(Kind.KPI)) or {}).get("good") == 50, log
    kpi = retained_kpi(durable_broker.port, m2.topic(Kind.KPI))
    assert (kpi["good"], kpi["window"]["start"]) == (7, T0)
    assert len(aside(path)) == 1


def test_power_cut_while_messages_arrive_loses_at_most_what_follows_the_cut(durable_broker, tmp_path):
    """kill -9 while a producer sends, then the journal cut at a random byte (what a power cut leaves):
    the restarted gateway has every record before the cut and every message it had not acknowledged
    (the broker sends those again), each counted once; it lost at most the records after the cut."""
    rng = random.Random(SEED)
    print(f"seed={SEED}")
    site = f"t{uuid.uuid4().hex[:8]}"
    state_dir, http_port = tmp_path / "state", free_port()
    path = checkpoint.journal_path(checkpoint_path(durable_broker.port, site, state_dir), 1)
    cmd = gateway_cmd(durable_broker.port, site, state_dir, http_port)
    sent = [counts(MachineRef(site, "a", "l", f"m{k:03d}"), [T0, T0 + 10], [0, 1]) for k in range(600)]
    pub = publisher(durable_broker.port)
    gw = None
    try:
        gw, out = start_gateway(cmd)
        producer = threading.Thread(target=lambda: [publish(pub, t, p) for t, p in sent])
        producer.start()
        one = len(checkpoint.record(*sent[0]))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (path.stat().st_size if path.exists() else 0) < 100 * one:
            time.sleep(0.005)
        gw.send_signal(signal.SIGKILL)
        gw.wait(5)
        producer.join(30)
        data = path.read_bytes()
        assert producer.is_alive() is False and len(data) < len(sent) * one, "killed after the producer was done"
        ends = {t: data.find(t.encode()) + len(t) + len(p) for t, p in sent if data.find(t.encode()) >= 0}
        cut = rng.randrange(0, len(data) + 1)
        os.truncate(path, cut)
        journaled, kept = set(ends), {t for t, end in ends.items() if end <= cut}
        print(f"{len(journaled)} of {len(sent)} journaled when killed; cut at byte {cut} of {len(data)}: "
              f"{len(kept)} records before it")
        gw, out = start_gateway(cmd)
        must = kept | {t for t, _ in sent if t not in journaled}  # before the cut, or never acknowledged
        deadline, got = time.monotonic() + 20, {}
        while time.monotonic() < deadline and not must <= set(got):
            status, body = get(f"http://127.0.0.1:{http_port}/api/machines")
            got = {MachineRef(r["site"], r["area"], r["line"], r["machine"]).topic(Kind.COUNTS): r["good"]
                   for r in json.loads(body or b"[]")} if status == 200 else {}
            time.sleep(0.2)
        stop_cleanly(gw, out)
    finally:
        close(gw, pub)
    log = "".join(out)
    assert "Traceback" not in log, log
    assert must <= set(got), f"lost {sorted(must - set(got))[:5]} ..."
    assert set(got) <= {t for t, _ in sent}  # beyond ``must``: cut records the broker sent again (unacknowledged)
    assert set(got.values()) == {1}, "a machine's parts counted twice"
    if cut > len(checkpoint.JOURNAL_MAGIC) and cut not in ends.values():  # cut inside a record
        assert f"journal damaged path={path} " in log and 'reason="record cut short"' in log, log


def test_a_checkpoint_whose_prune_cut_passes_the_data_is_refused(tmp_path):
    """KpiEngine.prune's cut (tl.kept_from) after a machine's latest data would make the engine drop all its
    data as too late, for good; such a checkpoint is refused like a poisoned time."""
    e, t = engine_with_data(None)
    arrays, doc = checkpoint.capture(e, [MachineRef("s", "a", "l", "m1"), MachineRef("s", "a", "l", "m2")], {})
    path = tmp_path / "gw.checkpoint.npz"
    checkpoint.write(path, arrays, doc)
    checkpoint.read(path, KpiEngine())  # as captured: fine
    arrays["tl.kept_from"][1] = arrays["engine.now_ts"][1] + 3600
    checkpoint.write(path, arrays, doc)
    with pytest.raises(checkpoint.CheckpointError, match=r"tl\.kept_from\[1\] = .* is after the machine's latest data"):
        checkpoint.read(path, KpiEngine())


def test_a_closed_journal_refuses_to_write(tmp_path):
    """Review: a closed journal kept its descriptor number, which the process may reuse for a socket; a write
    after a failed rotation went there. Now it refuses, and closing twice closes nothing else."""
    j = checkpoint.Journal(tmp_path / "gw.journal-00000001")
    j.append("t", b"x")
    j.close()
    with pytest.raises(OSError, match="is closed"):
        j.append("t", b"y")
    other = os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT)  # likely the number the journal had
    j.close()
    os.write(other, b"still open")
    os.close(other)
