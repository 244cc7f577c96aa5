"""Per-machine row storage (gateway/timeline.py ``_Rows``): one machine's long history costs only its own memory,
and machines whose segments move, grow, shrink and get compacted read exactly as if each were alone."""
import numpy as np

from gateway import oee, timeline

EXECUTE, HELD, SUSPENDED = 4, 15, 12


def states_of(rng, n, t0=0.0):
    ts = t0 + np.cumsum(rng.uniform(1.0, 400.0, n))
    codes = rng.choice([EXECUTE, HELD, SUSPENDED], n)
    return ts, oee.DEFAULT.categorise(np.zeros(n, np.int64), codes, np.zeros(n, np.int64)), rng.integers(0, 3, n)


def test_one_machines_long_history_does_not_grow_the_others():
    """A valid batch at the contract's limit (100,000 state changes) for one machine of 40: with rows in arrays
    as wide as the busiest machine, all 40 machines grew to 131,072 rows (about 430 MB)."""
    n = 40
    tl = timeline.Timeline(machines=n)
    rng = np.random.default_rng(1)
    for m in range(n):  # everyone has a little history
        ts, cat, reason = states_of(rng, 10)
        tl.append_states(np.full(10, m), ts, cat, reason)
    ts, cat, reason = states_of(rng, 100_000, t0=1e6)
    tl.append_states(np.full(ts.size, 7), ts, cat, reason)
    others = np.arange(n) != 7
    assert (tl.p.cap[others] == tl.p.min_cap).all()
    dense = n * tl.p.cap[7] * sum(np.dtype(d).itemsize * int(np.prod(s)) for s, d, _ in tl.p.spec.values())
    assert tl.p.nbytes() < dense / 10, (tl.p.nbytes(), dense)
    assert tl.p.nbytes() < 40e6


def test_machines_growing_unevenly_read_as_if_each_were_alone():
    """Several rounds of appends of very different sizes (segments move to the pool's end, the pool compacts),
    then a prune (segments shrink): every machine's windows equal those of a timeline of that machine alone."""
    rng = np.random.default_rng(7)
    n = 12
    tl = timeline.Timeline(machines=n, capacity=4)
    alone = [timeline.Timeline(machines=1, capacity=4) for _ in range(n)]
    clock = np.zeros(n)
    good = np.zeros(n, np.int64)
    for _ in range(8):
        sizes = rng.choice([0, 1, 3, 50, 700], n)
        ms, tss, cats, reasons, cm, cts, cg = [], [], [], [], [], [], []
        for m in range(n):
            k = int(sizes[m])
            if not k:
                continue
            ts, cat, reason = states_of(rng, k, clock[m])
            clock[m] = ts[-1]
            g = good[m] + np.cumsum(rng.integers(0, 3, k))
            good[m] = g[-1]
            ms.append(np.full(k, m)), tss.append(ts), cats.append(cat), reasons.append(reason)
            cm.append(np.full(k, m)), cts.append(ts + 0.5), cg.append(g)
            one = alone[m]
            one.append_states(np.zeros(k, np.int64), ts, cat, reason)
            one.append_counts(np.zeros(k, np.int64), ts + 0.5, g, np.zeros(k, np.int64), np.full(k, 2.0))
        if ms:
            tl.append_states(np.concatenate(ms), np.concatenate(tss), np.concatenate(cats), np.concatenate(reasons))
            c = np.concatenate(cm)
            tl.append_counts(c, np.concatenate(cts), np.concatenate(cg), np.zeros(c.size, np.int64),
                             np.full(c.size, 2.0))
    assert tl.p.garbage > 0 or tl.p.cap.max() > 4  # segments did move
    end = clock + 100.0
    tl.set_now(np.arange(n), end)
    for m in range(n):
        alone[m].set_now(np.array([0]), end[m:m + 1])

    def check():
        for m in range(n):
            for a, b in ((0.0, end[m]), (end[m] / 3, end[m] / 2), (end[m] - 5000, end[m])):
                np.testing.assert_allclose(tl.query(np.array([m]), np.array([a]), np.array([b])),
                                           alone[m].query(np.array([0]), np.array([a]), np.array([b])),
                                           rtol=1e-12, atol=1e-9, err_msg=f"machine {m} [{a}, {b})")
            got = [r | {"machine": 0} for r in tl.stop_reasons(0.0, end) if r["machine"] == m]
            assert got == alone[m].stop_reasons(0.0, end[m:m + 1])
    check()
    cut = end - 3000.0
    tl.prune(cut, np.zeros(n))
    for m in range(n):
        alone[m].prune(cut[m:m + 1], np.zeros(1))
    check()
