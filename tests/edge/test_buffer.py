"""The disk outbox: order, durability across reopen, and the bound (drop oldest, counted)."""
from edge.buffer import DiskQueue


def test_order_and_acknowledgement(tmp_path):
    q = DiskQueue(tmp_path / "q.db")
    q.put_many([(f"t/{i}", f"p{i}".encode(), 1, False) for i in range(5)])
    rows = q.peek(0, 3)
    assert [r[1] for r in rows] == ["t/0", "t/1", "t/2"]
    assert [r[1] for r in q.peek(rows[-1][0], 10)] == ["t/3", "t/4"]
    q.delete([rows[0][0], rows[1][0]])
    assert [r[1] for r in q.peek(0, 10)] == ["t/2", "t/3", "t/4"] and len(q) == 3


def test_what_was_put_survives_a_reopen(tmp_path):
    q = DiskQueue(tmp_path / "q.db")
    q.put_many([("a", b"1", 1, False), ("b", b"2", 1, True)])
    # no close(): as after kill -9, only what SQLite committed is there
    again = DiskQueue(tmp_path / "q.db")
    assert [(t, p, qos, r) for _, t, p, qos, r in again.peek(0, 10)] == [("a", b"1", 1, False), ("b", b"2", 1, True)]
    assert again.bytes == q.bytes


def test_the_bound_drops_the_oldest_and_counts_them(tmp_path):
    q = DiskQueue(tmp_path / "q.db", max_bytes=10_000)
    for i in range(100):
        q.put_many([(f"t/{i:03d}", b"x" * 995, 1, False)])  # 1,000 bytes each
    assert q.bytes <= 10_000 and len(q) == 10
    assert q.dropped == 90
    assert q.peek(0, 1)[0][1] == "t/090"  # the newest are kept
    assert DiskQueue(tmp_path / "q.db", max_bytes=10_000).dropped == 90  # the count is kept too
    wal = tmp_path / "q.db-wal"
    on_disk = (tmp_path / "q.db").stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert on_disk < 1.5 * 10_000 + 1.5 * 2**20  # the bound, SQLite's page overhead and about 1 MB of journal


def _steps_of_a_put_when_full(path, rows: int) -> int:
    """SQLite virtual-machine steps (in thousands) of one put into a full outbox of ``rows`` small messages."""
    q = DiskQueue(path, max_bytes=rows * 100)
    q.put_many([("t/x", b"p" * 97, 1, False)] * rows)  # exactly full
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    q.db.set_progress_handler(count, 1000)
    q.put_many([("t/x", b"p" * 97, 1, False)])  # one more: the oldest goes
    q.db.set_progress_handler(None, 0)
    assert len(q) == rows and q.dropped == 1
    q.close()
    return steps[0]


def test_a_full_outbox_drops_without_reading_all_of_it(tmp_path):
    """Issue 13: with the default 100 MB outbox full of small messages each flush cost 0.3 s, because dropping
    the oldest read the whole table. The work of a put must not grow with the outbox."""
    small = _steps_of_a_put_when_full(tmp_path / "a.db", 2_000)
    large = _steps_of_a_put_when_full(tmp_path / "b.db", 40_000)
    assert large < 2 * small + 5, (small, large)


def test_a_second_agent_over_the_same_outbox_is_refused(tmp_path):
    """Two agents over one outbox would send the same batches and delete each other's: the second refuses,
    naming the first; once the first is gone (here: its lock released as at its stop) the outbox is free."""
    import os

    import pytest

    from contract import MachineRef
    from contract.errors import ServiceError
    from contract.mqtt import BrokerUrl
    from edge.agent import EdgeAgent

    ref, broker, outbox = MachineRef("s", "a", "l", "m"), BrokerUrl("127.0.0.1", 1), tmp_path / "outbox.db"
    first = EdgeAgent(ref, broker, source=None, buffer=outbox)
    with pytest.raises(ServiceError, match=rf"outbox .* is in use by another process \(pid {os.getpid()}\)"):
        EdgeAgent(ref, broker, source=None, buffer=outbox)
    first._close_outbox()
    EdgeAgent(ref, broker, source=None, buffer=outbox)._close_outbox()
