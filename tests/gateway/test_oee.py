"""The OEE math against hand-worked examples (pure functions, no I/O)."""
import numpy as np
import pytest

from gateway import oee


def ratios(planned_s, run_s, ideal_s, good, reject, ideal_good_s):
    """A, P, Q, OEE and the cross-check for plain inputs (no stop categories), through oee.derive."""
    T = np.zeros((np.size(planned_s), oee.N_TOT))
    T[:, oee.RUN] = run_s
    T[:, oee.STOPPED] = np.asarray(planned_s, float) - np.asarray(run_s, float)
    T[:, oee.GOOD], T[:, oee.REJECT], T[:, oee.IDEAL], T[:, oee.IDEAL_GOOD] = good, reject, ideal_s, ideal_good_s
    k = oee.derive(T)
    return k["availability"], k["performance"], k["quality"], k["oee"], k["oee_simple"]


def test_vorne_worked_example():
    """Vorne, "Calculate OEE" (oee.com/calculating-oee): 480 min shift, 60 min breaks, 47 min down,
    ideal cycle 1.0 s, 19,271 parts of which 423 rejects -> A 88.81 %, P 86.11 %, Q 97.80 %, OEE 74.79 %."""
    planned, run = 420 * 60.0, 373 * 60.0
    good, reject = 18848, 423
    a, p, q, o, simple = ratios([planned], [run], [19271 * 1.0], [good], [reject], [good * 1.0])
    assert round(100 * a[0], 2) == 88.81
    assert round(100 * p[0], 2) == 86.11
    assert round(100 * q[0], 2) == 97.80
    assert round(100 * o[0], 2) == 74.79
    assert o[0] == pytest.approx(simple[0], rel=1e-12)  # A x P x Q == good x ideal / planned


def test_undefined_ratios_are_nan_not_zero_or_one():
    # no planned time; planned but never ran; ran but made nothing
    a, p, q, o, _ = ratios([0, 100, 100], [0, 0, 50], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0])
    assert np.isnan(a[0]) and np.isnan(p[0]) and np.isnan(q[0]) and np.isnan(o[0])
    assert a[1] == 0 and np.isnan(p[1]) and o[1] == 0  # OEE follows the simple formula: nothing good made
    assert a[2] == 0.5 and p[2] == 0 and np.isnan(q[2]) and o[2] == 0


def test_performance_above_one_is_shown_not_capped():
    _, p, _, _, _ = ratios([100], [100], [120], [10], [0], [120])
    assert p[0] == pytest.approx(1.2)


def test_counter_increase_reads_resets_like_prometheus():
    m = np.array([0, 0, 0, 0, 1, 1])
    values = np.array([10, 20, 5, 8, 3, 4])
    last = np.array([-1, 1])  # machine 0: first sample is the baseline; machine 1 was at 1
    np.testing.assert_array_equal(oee.counter_increase(m, values, last), [0, 10, 5, 3, 2, 1])
