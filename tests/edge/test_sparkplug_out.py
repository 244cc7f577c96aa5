"""edge/sparkplug.py without a broker: bdSeq per start, the outbox's DDATA. Pure Python, well under a second.
(Against a real broker and the npm Sparkplug packages: tests/interop/test_sparkplug_edge.py.)"""
from contract import Kind, encode_counts, encode_state
from contract import sparkplug as spb
from edge.sparkplug import Settings, SparkplugOut

T0 = 1_700_092_800.0


def test_bdseq_counts_up_per_start_and_is_kept_next_to_the_outbox(tmp_path):
    path = tmp_path / "q.db.bdseq"
    settings = Settings("g", "n", "d")
    assert [SparkplugOut(settings, "packml", path).bdseq for _ in range(3)] == [0, 1, 2]
    path.write_text("255\n")
    assert SparkplugOut(settings, "packml", path).bdseq == 0


def test_flushes_become_one_ddata_each_with_ideal_cycle_and_product_only_when_they_change(tmp_path):
    out = SparkplugOut(Settings("g", "n", "d"), "packml", tmp_path / "bdseq")
    first = out.to_outbox([(Kind.STATE, encode_state([T0], [4])),
                           (Kind.COUNTS, encode_counts([T0, T0 + 1], [0, 1], [0, 0], "A", 2.0))])
    second = out.to_outbox([(Kind.COUNTS, encode_counts([T0 + 2], [2], [0], "A", 2.0))])
    (topic, payload, qos, retain), = first
    assert (topic, qos, retain) == ("spBv1.0/g/DDATA/n/d", 0, False)
    names = lambda rows: [(m.name, m.value) for m in spb.decode_payload(rows[0][1]).metrics]
    assert names(first) == [("State", 4), ("Reason", 0), ("IdealCycleTime", 2.0), ("Product", "A"), ("Good", 0),
                            ("Reject", 0), ("Good", 1), ("Reject", 0)]
    assert names(second) == [("Good", 2), ("Reject", 0)]
    assert out.to_outbox([]) == []
