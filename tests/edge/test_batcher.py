"""Batcher: rows that combine tags are built as of each timestamp, whatever order the tags arrived in."""
from contract import Kind, decode
from edge.batcher import Batcher

T = 1_700_092_800.0  # 2023-11-16T00:00:00Z: the times below are seconds after it (a plausible time)


def drained(b):
    return [(k, decode(k, p)) for k, p in b.drain()]


def test_counters_grouped_per_tag_still_give_consistent_rows():
    # An OPC UA publish response lists all GoodCount changes, then all RejectCount changes.
    b = Batcher()
    b.record("good", T, 0)
    b.record("reject", T, 0)
    b.record("good", T + 1.0, 1)
    b.record("good", T + 3.0, 2)
    b.record("reject", T + 2.0, 1)  # the reject happened between the two good parts
    (kind, c), = drained(b)
    assert kind is Kind.COUNTS
    assert (c.ts - T).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert c.good.tolist() == [0, 1, 1, 2]
    assert c.reject.tolist() == [0, 0, 1, 1]  # never drops back: no phantom counter reset downstream


def test_values_carry_over_between_batches():
    b = Batcher()
    b.record("good", T, 5)
    b.record("reject", T, 1)
    drained(b)
    b.record("reject", T + 9.0, 2)
    (_, c), = drained(b)
    assert (c.good.tolist(), c.reject.tolist()) == ([5], [2])


def test_state_reason_as_of_the_change():
    b = Batcher()
    b.record("state", T + 10.0, 15)
    b.record("state", T + 20.0, 4)
    b.record("reason", T + 10.0, 101)
    b.record("reason", T + 20.0, 0)
    (_, s), = drained(b)
    assert s.state.tolist() == [15, 4] and s.reason.tolist() == [101, 0]


def test_a_product_change_splits_the_counts():
    b = Batcher()
    b.record("product", T, "A")
    b.record("ideal_cycle_s", T, 2.0)
    b.record("reject", T, 0)
    for t, g in [(1.0, 1), (2.0, 2), (5.0, 3)]:
        b.record("good", T + t, g)
    b.record("product", T + 4.0, "B")
    b.record("ideal_cycle_s", T + 4.0, 3.0)
    batches = [c for _, c in drained(b)]
    assert [(c.product, c.ideal_cycle_s, c.good.tolist()) for c in batches] == [("A", 2.0, [1, 2]), ("B", 3.0, [3])]  # at 0.0 no good count was known yet


def test_telemetry_is_columnar_with_gaps_as_null():
    b = Batcher()
    b.units["t"] = "degC"
    b.value(T + 1.0, "t", 20.0)
    b.value(T + 1.0, "p", 3.0)
    b.value(T + 2.0, "t", 21.0)
    (_, tel), = drained(b)
    assert (tel.ts - T).tolist() == [1.0, 2.0] and tel.signals["t"].tolist() == [20.0, 21.0]
    assert tel.signals["p"][0] == 3.0 and tel.signals["p"][1] != tel.signals["p"][1]  # NaN
    assert tel.units == {"t": "degC"}


def test_binary_encoding_carries_the_same_telemetry():
    from contract import BINARY_MAGIC

    out = {}
    for encoding in ("json", "binary"):
        b = Batcher(encoding=encoding)
        b.units["t"] = "degC"
        b.value(T + 1.0, "t", 20.0)
        b.value(T + 1.0, "p", 3.0)
        b.value(T + 2.0, "t", 21.0)
        b.record("good", T + 2.0, 1)
        b.record("reject", T + 2.0, 0)
        out[encoding] = dict(b.drain())
    assert out["binary"][Kind.TELEMETRY][:4] == BINARY_MAGIC
    assert out["binary"][Kind.COUNTS] == out["json"][Kind.COUNTS]  # only telemetry has a binary form
    js, binary = (decode(Kind.TELEMETRY, out[e][Kind.TELEMETRY]) for e in ("json", "binary"))
    assert binary.ts.tolist() == js.ts.tolist() == [T + 1.0, T + 2.0] and binary.units == js.units == {"t": "degC"}
    assert binary.signals["t"].tolist() == [20.0, 21.0]
    assert binary.signals["p"][0] == 3.0 and binary.signals["p"][1] != binary.signals["p"][1]  # NaN, as JSON's null


def test_values_that_are_not_finite_numbers_are_counted_not_sent():
    """An infinity from an overflowing sensor, or text from a device, must not cost the flush its other data."""
    b = Batcher()
    b.value(T + 1.0, "t", 20.0)
    b.value(T + 1.0, "t2", float("inf"))
    b.value(T + 2.0, "t", "n/a")
    b.value(T + 2.0, "t2", 5)
    b.record("good", T + 2.0, 1)
    b.record("reject", T + 2.0, 0)
    got = dict(drained(b))
    assert b.rejected["value"] == 2
    tel = got[Kind.TELEMETRY]
    assert (tel.ts - T).tolist() == [1.0, 2.0] and tel.signals["t"][0] == 20.0 and tel.signals["t2"][1] == 5.0
    assert got[Kind.COUNTS].good.tolist() == [1]


def test_telemetry_too_wide_for_the_binary_form_goes_as_json():
    """The binary form carries at most 4,096 signals and 64 KB of names; a machine with more still gets all
    of its data through (as JSON), and the state and counts of the same flush with it."""
    from contract import BINARY_MAGIC

    for names in ([f"s{i}" for i in range(5000)], [f"ns=2;s=Line1.Cell4.Robot7.Axis{i}.MotorTemperatureFiltered"
                                                  for i in range(1200)]):
        b = Batcher(encoding="binary")
        for i, name in enumerate(names):
            b.value(T + 1.0, name, float(i))
        b.record("state", T + 1.0, 4)
        b.record("good", T + 1.0, 3)
        b.record("reject", T + 1.0, 0)
        out = dict(b.drain())
        assert out[Kind.TELEMETRY][:1] == b"{" and out[Kind.TELEMETRY][:4] != BINARY_MAGIC
        tel = decode(Kind.TELEMETRY, out[Kind.TELEMETRY])
        assert len(tel.signals) == len(names) and tel.signals[names[-1]][0] == len(names) - 1
        assert {Kind.STATE, Kind.COUNTS} <= set(out)


def test_times_the_gateway_would_refuse_are_counted_not_sent(caplog):
    """Issue 13: a PLC whose clock was never set (1970) or a source in milliseconds. The gateway refuses a whole
    batch with such a time; the edge drops only those samples, counts and names them, and the rest goes."""
    from contract import TS_MAX, TS_MIN

    b = Batcher()
    b.record("state", 12.5, 4)  # seconds since boot
    b.record("state", T + 1.0, 4)
    b.record("good", T * 1000, 9)  # milliseconds
    b.record("good", TS_MIN, 1)  # the first plausible time ...
    b.record("reject", TS_MIN, 0)
    b.record("good", TS_MAX - 1, 2)  # ... and the last whole second before the range ends
    b.value(TS_MAX, "temp", 20.0)  # the end of the range is outside it
    b.value(T + 1.0, "temp", 21.0)
    got = dict(drained(b))
    assert b.rejected["time"] == 3 and sum(b.rejected.values()) == 3
    assert (got[Kind.STATE].ts - T).tolist() == [1.0]
    assert got[Kind.COUNTS].ts.tolist() == [TS_MIN, TS_MAX - 1]
    assert (got[Kind.TELEMETRY].ts - T).tolist() == [1.0]
    warned = [r.getMessage() for r in caplog.records if "not a Unix time" in r.getMessage()]
    assert len(warned) == 3 and any("tag=temp" in w for w in warned)  # once per tag


def test_codes_that_cannot_be_sent_are_counted_per_role():
    """Negative or fractional counters and codes, states outside the model: counted under their own role."""
    b = Batcher()
    b.record("good", T, -1)
    b.record("reject", T, 0.5)
    b.record("state", T, 4.5)
    b.record("state", T, 99)
    b.record("reason", T, -3)
    b.record("good", T + 1, 2.0)  # a whole float is a whole number
    b.record("reject", T + 1, 0)
    b.record("state", T + 1, 4)
    b.record("reason", T + 1, 0)
    assert dict(b.rejected) == {"good": 1, "reject": 1, "state": 2, "reason": 1}
    got = dict(drained(b))
    assert got[Kind.COUNTS].good.tolist() == [2] and got[Kind.STATE].state.tolist() == [4]


def test_a_counter_row_waits_until_both_counters_are_known():
    """With only good known (reject never seen nor assumed), no counts row can be sent; once reject is
    assumed (the machine has no reject counter) every good reading goes."""
    b = Batcher()
    b.record("good", T, 1)
    assert Kind.COUNTS not in dict(drained(b))
    b.assume("reject", 0)
    b.record("good", T + 1, 2)
    (_, c), = drained(b)
    assert (c.good.tolist(), c.reject.tolist()) == ([2], [0])
