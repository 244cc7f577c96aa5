"""Boundary cases of the batcher, each pinning a mutant the other tests let through (bench/mutants.py;
docs/RELIABILITY.md, "Mutation testing")."""
from contract import Kind, decode
from edge.batcher import Batcher

T = 1_700_092_800.0  # 2023-11-16T00:00:00Z


def test_pending_samples_count_state_counter_and_telemetry_rows():
    """Pins edge/batcher.py:47 (``+ len(self._rows)`` -> ``-``): what waits for the next batch, tag samples and
    telemetry rows together; an empty batcher is falsy."""
    b = Batcher()
    b.record("state", T, 4)
    b.record("good", T, 1)
    for i in range(3):
        b.value(T + i, "temp", 20.0 + i)
    b.value(T, "power", 1.5)  # the same row as the first temp
    assert len(b) == 2 + 3
    b.drain()
    assert len(b) == 0 and not b


def test_samples_sent_are_counted_per_kind():
    """Pins edge/batcher.py:135, :148 and :168 (``+=`` -> ``-=``): the heartbeat's count of samples put into
    batches, per kind, over two drains."""
    b = Batcher()
    for drain in range(2):
        t = T + 10 * drain
        b.record("state", t, 4)
        b.record("state", t + 1, 15)
        for i in range(3):
            b.record("good", t + i, 10 * drain + i)
        b.record("reject", t, 0)
        b.value(t, "temp", 20.0)
        b.drain()
    assert b.samples == {Kind.STATE: 4, Kind.COUNTS: 6, Kind.TELEMETRY: 2}


def test_the_latest_value_of_a_tag_carries_over_to_the_next_batch():
    """Pins edge/batcher.py:152 (``s[-1][1]`` -> ``s[-0][1]``, the first value): good went 5 then 6 in one batch;
    a reject alone in the next is booked with 6 good, not 5."""
    b = Batcher()
    b.record("good", T, 5)
    b.record("good", T + 1, 6)
    b.record("reject", T, 0)
    b.drain()
    b.record("reject", T + 9, 1)
    (kind, payload), = b.drain()
    assert decode(kind, payload).good.tolist() == [6]
