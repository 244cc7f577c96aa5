"""Collect samples as they arrive and cut them into contract batches (columnar, one per kind).

Each tag is recorded as its own time series of (timestamp, value). Sources may
deliver tags in any order (an OPC UA publish response groups notifications per
monitored item, not in the order the machine wrote them), so rows that combine
tags (good + reject, state + reason, counts + product) are built at drain time
"as of" each timestamp: the latest value with a timestamp at or before it.
"""
from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections import Counter
from itertools import groupby

from contract import (
    MAX_BATCH, STATE_MODELS, TS_MAX, TS_MIN, ContractError, Kind, encode_counts, encode_state, encode_telemetry,
    encode_telemetry_binary,
)

log = logging.getLogger("fieldlab.edge")

# A batch is cut into messages of at most this many bytes (and MAX_BATCH samples): a broker refuses a packet
# above its max_packet_size (4 MiB in deploy/) by dropping the connection, and the same message sent again
# after the reconnect would hold up the outbox behind it for ever.
MAX_MESSAGE_BYTES = 256 * 1024

ROLES = ("state", "reason", "good", "reject", "product", "ideal_cycle_s")


class Batcher:
    """``state_map`` translates the machine's own state codes into the model's (from the mapping file).
    Values that cannot be sent (a state code outside the model, a negative or fractional counter) are
    counted in ``rejected`` and logged once per kind of problem, never sent."""

    def __init__(self, model: str = "packml", state_map: dict[int, int] | None = None, encoding: str = "json",
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        """``encoding``: of the telemetry batches, "json" (readable by any MQTT tool) or "binary" (the same
        batch as float64 arrays, far cheaper for the gateway to decode; docs/contract.md)."""
        self.model, self.state_map = model, dict(state_map) if state_map else None
        self.max_message_bytes = max_message_bytes
        self._encode_telemetry = {"json": encode_telemetry, "binary": encode_telemetry_binary}[encoding]
        self._states = STATE_MODELS[model]
        self.rejected: Counter = Counter()  # role -> values not sent
        self._warned: set = set()
        self.units: dict[str, str] = {}
        self._series: dict[str, list[tuple[float, object]]] = {r: [] for r in ROLES}
        self._carry: dict[str, object] = {}  # last value of each tag from earlier batches
        self._rows: dict[float, dict[str, float]] = {}
        self.samples: Counter = Counter()  # samples put into batches, per kind

    def __len__(self) -> int:
        return sum(len(s) for s in self._series.values()) + len(self._rows)

    def _bad_time(self, ts: float, what: str) -> bool:
        """A source time outside the contract's plausible range (a PLC whose clock was never set, a time in
        milliseconds): not sent, counted in ``rejected["time"]``, logged once per tag. The gateway would refuse
        the whole batch; this way only these samples are lost, not the others in the batch."""
        if TS_MIN <= ts < TS_MAX:
            return False
        self.rejected["time"] += 1
        if ("time", what) not in self._warned:
            self._warned.add(("time", what))
            log.warning("value not sent tag=%s time=%r (not a Unix time in seconds from 2000 to 2100: is the "
                        "machine's clock set? counted in rejected)", what, ts)
        return True

    def record(self, role: str, ts: float, value) -> None:
        """A tag changed: ``role`` is one of ROLES."""
        if self._bad_time(ts, role):
            return
        if role in ("state", "reason", "good", "reject"):
            value = self._code(role, value)
            if value is None:
                return
        self._series[role].append((ts, value))

    def assume(self, role: str, value) -> None:
        """A tag the machine does not have, taken as constant (e.g. reject = 0 with only a good counter)."""
        self._carry[role] = value

    def _code(self, role: str, value) -> int | None:
        try:
            whole = not isinstance(value, float) or value.is_integer()
            code = int(value) if whole else None
        except (TypeError, ValueError, OverflowError):
            code = None
        problem = None
        if code is None:
            problem = f"{value!r} is not a whole number"
        elif role == "state":
            if self.state_map is not None:
                if code not in self.state_map:
                    problem = f"machine state code {code} is not in the tag's map"
                code = self.state_map.get(code, code)
            if problem is None and code not in self._states:
                problem = f"{code} is not a {self.model} state"
        elif code < 0:
            problem = f"{code} is negative"
        if problem:
            self.rejected[role] += 1
            if (role, problem) not in self._warned:
                self._warned.add((role, problem))
                log.warning("value not sent role=%s problem=%r (counted in rejected; fix the mapping file)", role,
                            problem)
            return None
        return code

    def value(self, ts: float, name: str, value: float) -> None:
        """A process value (telemetry). One that is not a finite number (text from a device, an infinity from
        an overflowing sensor) is not sent: counted in ``rejected["value"]`` and logged once per signal."""
        if self._bad_time(ts, name):
            return
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not math.isfinite(number):
            self.rejected["value"] += 1
            if ("value", name) not in self._warned:
                self._warned.add(("value", name))
                log.warning("value not sent signal=%s value=%r (not a finite number; counted in rejected)", name,
                            value)
            return
        self._rows.setdefault(ts, {})[name] = number

    def _telemetry(self, ts, signals, units) -> bytes:
        try:
            return self._encode_telemetry(ts, signals, units)
        except ContractError as e:  # binary has limits JSON has not (signals, header size): send JSON
            if ("encoding", str(e)) not in self._warned:
                self._warned.add(("encoding", str(e)))
                log.warning("telemetry sent as JSON, not binary: %s", e)
            return encode_telemetry(ts, signals, units)

    def _fit(self, kind: Kind, n: int, encode) -> list[tuple[Kind, bytes]]:
        """Samples 0..n as messages of at most MAX_BATCH samples and ``max_message_bytes`` (halved until they
        fit; a single sample goes as it is), in time order. ``encode(i, j)``: the message of samples i..j."""
        out, todo = [], [(0, n)]
        while todo:
            i, j = todo.pop()
            payload = encode(i, j) if j - i <= MAX_BATCH else None
            if payload is None or (len(payload) > self.max_message_bytes and j - i > 1):
                mid = (i + j) // 2
                todo += [(mid, j), (i, mid)]  # the first half next: the messages stay in time order
                continue
            out.append((kind, payload))
        return out

    def _asof(self, series: list, role: str, ts: list[float]) -> list:
        times = [t for t, _ in series]
        carry = self._carry.get(role)
        return [series[i - 1][1] if (i := bisect_right(times, t)) else carry for t in ts]

    def drain(self) -> list[tuple[Kind, bytes]]:
        series = {r: sorted(s, key=lambda x: x[0]) for r, s in self._series.items()}  # stable: equal ts keep order
        self._series = {r: [] for r in ROLES}
        out: list[tuple[Kind, bytes]] = []

        if series["state"]:
            ts = [t for t, _ in series["state"]]
            reason = [r or 0 for r in self._asof(series["reason"], "reason", ts)]
            codes = [s for _, s in series["state"]]
            out += self._fit(Kind.STATE, len(ts),
                             lambda i, j: encode_state(ts[i:j], codes[i:j], reason[i:j], self.model))
            self.samples[Kind.STATE] += len(ts)

        ts = sorted({t for r in ("good", "reject") for t, _ in series[r]})
        if ts:
            cols = {r: self._asof(series[r], r, ts) for r in ("good", "reject", "product", "ideal_cycle_s")}
            rows = [row for row in zip(ts, cols["good"], cols["reject"], cols["product"], cols["ideal_cycle_s"])
                    if row[1] is not None and row[2] is not None]
            # one batch per run of the same product, so every count is booked on the product that made it
            for (product, ideal), group in groupby(rows, key=lambda r: (r[3], r[4])):
                t, g, rj, _, _ = zip(*group)
                g, rj = [int(x) for x in g], [int(x) for x in rj]
                p, ict = None if product is None else str(product), None if ideal is None else float(ideal)
                out += self._fit(Kind.COUNTS, len(t), lambda i, j: encode_counts(t[i:j], g[i:j], rj[i:j], p, ict))
                self.samples[Kind.COUNTS] += len(t)

        for role, s in series.items():
            if s:
                self._carry[role] = s[-1][1]

        if self._rows:
            ts = sorted(self._rows)
            names = sorted({n for r in self._rows.values() for n in r})
            signals = {n: [self._rows[t].get(n, float("nan")) for t in ts] for n in names}
            self._rows = {}
            units = {n: self.units[n] for n in names if n in self.units}
            out += self._fit(Kind.TELEMETRY, len(ts), lambda i, j: self._telemetry(
                ts[i:j], {n: v[i:j] for n, v in signals.items()}, units))
            self.samples[Kind.TELEMETRY] += len(ts)
        return out
