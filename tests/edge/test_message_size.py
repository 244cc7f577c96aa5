"""Batches cut into messages a broker takes (edge/batcher.py ``_fit``): a message above the broker's
max_packet_size made Mosquitto drop the agent's connection, and the agent sent the same message again after
every reconnect, so its outbox waited behind it for ever (docs/RELIABILITY.md)."""
import asyncio

import numpy as np

from contract import MAX_BATCH, Kind, MachineRef, decode
from edge.agent import EdgeAgent
from edge.batcher import Batcher
from fieldlab.broker import PrivateMosquitto

T0 = 1_800_000_000.0


def test_a_big_batch_becomes_messages_within_the_limits_in_time_order():
    b = Batcher(max_message_bytes=20_000)
    n = 3000
    for i in range(n):
        t = T0 + i
        b.record("state", t, [4, 15][i % 2])
        b.record("good", t, i)
        b.record("reject", t, i // 10)
        b.value(t, "temperature", 20.0 + i / 100)
        b.value(t, "power", 1.5)
    out = b.drain()
    for kind in (Kind.STATE, Kind.COUNTS, Kind.TELEMETRY):
        msgs = [p for k, p in out if k is kind]
        assert len(msgs) > 1 and all(len(p) <= 20_000 for p in msgs), (kind, [len(p) for p in msgs])
        ts = np.concatenate([decode(kind, p).ts for p in msgs])
        np.testing.assert_array_equal(ts, T0 + np.arange(n))  # every sample once, in order
    goods = np.concatenate([decode(Kind.COUNTS, p).good for k, p in out if k is Kind.COUNTS])
    np.testing.assert_array_equal(goods, np.arange(n))


def test_no_message_has_more_samples_than_the_contract_allows():
    b = Batcher(max_message_bytes=10**9)
    n = MAX_BATCH + 5
    for i in range(n):
        b.record("good", T0 + i * 0.01, i)
        b.record("reject", T0 + i * 0.01, 0)
    msgs = [decode(Kind.COUNTS, p) for _, p in b.drain()]  # decode() refuses more than MAX_BATCH samples
    assert len(msgs) == 2 and sum(m.ts.size for m in msgs) == n


class Burst:
    """A source that hands the batcher a burst of telemetry at start (as a long-buffered PLC might)."""

    def __init__(self, rows: int):
        self.rows = rows
        self.stats = {}

    async def start(self, batcher) -> None:
        for i in range(self.rows):
            batcher.value(T0 + i * 0.1, "temperature", 20.0 + i / 1000)
            batcher.value(T0 + i * 0.1, "pressure", 3.0 + i / 1000)

    async def stop(self) -> None:
        pass


async def test_a_broker_with_a_small_packet_limit_gets_everything(tmp_path, site, recorder):
    broker = PrivateMosquitto(extra_conf="allow_anonymous true\nmax_packet_size 30000\n", workdir=tmp_path)
    await asyncio.to_thread(broker.start)
    ref = MachineRef(site, "a", "l", "m1")
    rec = recorder(broker.url, ref.topic(Kind.TELEMETRY))
    agent = EdgeAgent(ref, broker.url, Burst(4000), buffer=tmp_path / "q.db", flush_s=0.1,
                      batcher=Batcher(max_message_bytes=24_000))
    try:
        await agent.start()
        deadline = asyncio.get_running_loop().time() + 15
        while asyncio.get_running_loop().time() < deadline:
            if sum(decode(Kind.TELEMETRY, p).ts.size for _, p, _ in list(rec.messages)) >= 4000:
                break
            await asyncio.sleep(0.1)
        got = np.concatenate([decode(Kind.TELEMETRY, p).ts for _, p, _ in list(rec.messages)])
        np.testing.assert_array_equal(np.sort(got), T0 + np.arange(4000) * 0.1)
        deadline = asyncio.get_running_loop().time() + 10
        while agent.backlog and asyncio.get_running_loop().time() < deadline:  # the last acks come in
            await asyncio.sleep(0.1)
        assert agent.backlog == 0  # nothing held up in the outbox
    finally:
        await agent.stop(drain_s=1.0)
        await asyncio.to_thread(broker.stop)
