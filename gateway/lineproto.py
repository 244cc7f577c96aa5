"""InfluxDB line protocol from columnar batches, built column-wise with NumPy.

One batch of one machine becomes one line per timestamp::

    telemetry,site=acme,area=hall-1,line=line-1,machine=press-07 power=7.52,temperature=61.3 1764547200000

The tags of a batch are the same on every line, so they are escaped and joined once;
each field column is turned into text in one NumPy call (``astype(str)`` gives the
shortest text that reads back as the same float), NaN values are left out of their
line (line protocol has no NaN), and a line without any field is dropped. Integer
fields get the ``i`` suffix. Timestamps are written in milliseconds (``precision=ms``).
Escaping follows the InfluxDB line protocol reference: commas, spaces and equals signs
in tag keys, tag values and field keys; commas and spaces in measurement names;
double quotes and backslashes in string field values.
"""
from __future__ import annotations

import numpy as np

PRECISION = "ms"


def _escape(text: str, chars: str) -> str:
    text = text.replace("\\", "\\\\")
    for c in chars:
        text = text.replace(c, "\\" + c)
    return text


def key(text: str) -> str:
    """A tag key, tag value or field key."""
    return _escape(str(text), ", =")


def series(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,tag=value,...`` with tags sorted by key (what InfluxDB stores them as)."""
    parts = [_escape(measurement, ", ")] + [f"{key(k)}={key(v)}" for k, v in sorted(tags.items()) if v != ""]
    return ",".join(parts)


def string_field(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def lines(prefix: str | list[str], ts: np.ndarray, fields: dict[str, np.ndarray],
          integers: frozenset[str] = frozenset(), strings: dict[str, str] | None = None) -> list[str]:
    """Lines for one series: ``prefix`` from :func:`series` (or one prefix per row, for many series at
    once), timestamps in seconds, one array per field.

    ``integers`` names fields written as integers; ``strings`` are constant string fields of every line.
    Rows are grouped by which fields they have (NaN = absent): each group is formatted with one format
    string, so the per-line work is a single ``%`` on a tuple (2.8 M values/s here with full rows, see
    bench/bench_storage.py). Sparse rows in many different patterns (OPC UA values arrive per tag)
    are joined row by row instead, which is cheaper there. A row with only NaN is left out.
    """
    ts = np.asarray(ts, np.float64)
    if ts.size == 0:
        return []
    names = sorted(fields)
    cols = [np.asarray(fields[k]) for k in names]
    present = np.stack([np.ones(ts.size, bool) if c.dtype.kind in "iub" else np.isfinite(c) for c in cols]) \
        if cols else np.zeros((0, ts.size), bool)
    # one number per row saying which fields it has; rows with the same pattern share one format string
    pattern = (present.astype(np.int64) << np.arange(len(cols))[:, None]).sum(axis=0) if len(cols) < 63 else None
    if pattern is None:  # very wide rows: one group per row pattern via unique rows
        _, pattern = np.unique(present.T, axis=0, return_inverse=True)
    stamps = np.round(ts * 1000.0).astype(np.int64)
    tail = "".join(f",{key(k)}={string_field(v)}".replace("%", "%%") for k, v in sorted((strings or {}).items()))
    groups = np.unique(pattern)
    if groups.size > 16 and groups.size * 8 > ts.size:  # sparse rows in many patterns: join row by row
        return _row_by_row(prefix, names, cols, present, stamps, integers, tail.replace("%%", "%"))
    out, order = [], []
    for pat in groups:
        rows = np.flatnonzero(pattern == pat)
        have = [j for j in range(len(cols)) if present[j, rows[0]]]
        if not have:
            continue
        body = ",".join(f"{key(names[j]).replace('%', '%%')}=" + ("%di" if names[j] in integers else "%r")
                        for j in have)
        values = [(cols[j][rows].astype(np.int64) if names[j] in integers else cols[j][rows].astype(np.float64))
                  .tolist() for j in have]
        if isinstance(prefix, str):
            fmt = f"{prefix.replace('%', '%%')} {body}{tail} %d"
        else:
            fmt = f"%s {body}{tail} %d"
            values.insert(0, [prefix[i] for i in rows])
        out += [fmt % row for row in zip(*values, stamps[rows].tolist())]
        order.append(rows)
    if len(order) > 1:  # back in time order
        idx = np.argsort(np.concatenate(order), kind="stable")
        out = [out[i] for i in idx]
    return out


def _row_by_row(prefix, names, cols, present, stamps, integers, tail) -> list[str]:
    """The same lines, built per row: cheaper when rows have many different sets of fields."""
    parts: list[list[str]] = [[] for _ in range(stamps.size)]
    for j, name in enumerate(names):
        rows = np.flatnonzero(present[j])
        k = key(name)
        if name in integers:
            texts = [f"{k}={v}i" for v in cols[j][rows].astype(np.int64).tolist()]
        else:
            texts = [f"{k}={v!r}" for v in cols[j][rows].astype(np.float64).tolist()]
        for i, t in zip(rows.tolist(), texts):
            parts[i].append(t)
    prefixes = [prefix] * stamps.size if isinstance(prefix, str) else prefix
    return [f"{prefixes[i]} {','.join(p)}{tail} {s}" for i, (p, s) in enumerate(zip(parts, stamps.tolist())) if p]
