"""The site configuration (YAML): time zone, shifts, daily breaks and the OEE conventions.

Every mistake is a ConfigError that names the file, the key and the fix. Example,
with every key (all are optional): docs/examples/site.yaml.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import yaml

from contract import PACKML, SIMPLE
from contract.yamlfile import ConfigError, duration, yaml_error

from . import oee

KEYS = ("timezone", "shifts", "breaks", "conventions", "sparkplug", "reasons")
CONVENTION_KEYS = ("micro_stop", "micro_stops_as", "setup_as", "startup", "packml", "simple", "reasons")
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")




@dataclass(frozen=True)
class Period:
    name: str
    start_min: int  # minutes after local midnight
    end_min: int  # may be <= start: the period runs past midnight


@dataclass
class SiteConfig:
    timezone: str = "UTC"
    shifts: list[Period] = field(default_factory=lambda: [Period("night", 22 * 60, 6 * 60),
                                                           Period("early", 6 * 60, 14 * 60),
                                                           Period("late", 14 * 60, 22 * 60)])
    breaks: list[Period] = field(default_factory=list)
    conventions: oee.Conventions = oee.DEFAULT
    #: without a shift list in the file, time is never "outside the shifts" (24/7 planned)
    shifts_limit_planned_time: bool = False
    #: the site's own names of stop reasons, {code: {language: text}}, shown by the web pages (the wire keeps codes)
    reason_names: dict[int, dict[str, str]] = field(default_factory=dict)
    #: Sparkplug B groups to read (gateway/sparkplug.py Settings); None: off
    sparkplug: object = None

    def __post_init__(self) -> None:
        self.tz  # read the zone file now, while starting: not first in a KPI computation (it may fail then)

    @property
    def tz(self) -> ZoneInfo:
        """The site's time zone, read once (ZoneInfo's own cache may let it go; reading the zone file again in
        a KPI computation failed them all while file descriptors ran out)."""
        if getattr(self, "_tz", (None,))[0] != self.timezone:
            self._tz = (self.timezone, ZoneInfo(self.timezone))
        return self._tz[1]

    def _days(self, t0: float, t1: float):
        tz = self.tz
        day = dt.datetime.fromtimestamp(t0, tz).date() - dt.timedelta(days=1)
        last = dt.datetime.fromtimestamp(t1, tz).date() + dt.timedelta(days=1)
        while day <= last:
            yield day
            day += dt.timedelta(days=1)

    def _at(self, day: dt.date, minutes: int) -> float:
        local = dt.datetime.combine(day, dt.time(minutes // 60, minutes % 60), self.tz)
        return local.timestamp()

    def _periods(self, periods: list[Period], t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        starts, ends = [], []
        for day in self._days(t0, t1):
            for p in periods:
                s = self._at(day, p.start_min)
                e = self._at(day + dt.timedelta(days=1 if p.end_min <= p.start_min else 0), p.end_min)
                starts.append(s)
                ends.append(e)
        return np.array(starts), np.array(ends)

    def calendar(self, t0: float, t1: float) -> np.ndarray:
        """Planned downtime between t0 and t1 (breaks, and time outside every shift if shifts are set),
        as merged boundaries for gateway.timeline."""
        from .timeline import merge_calendar

        bs, be = self._periods(self.breaks, t0, t1)
        if self.shifts_limit_planned_time:
            ss, se = self._periods(self.shifts, t0, t1)
            on = merge_calendar(ss, se)  # when some shift runs
            off_s = np.concatenate([[t0 - 2 * 86400], on[1::2]])
            off_e = np.concatenate([on[0::2], [t1 + 2 * 86400]])
            bs, be = np.concatenate([bs, off_s]), np.concatenate([be, off_e])
        return merge_calendar(bs, be)

    def shift_start(self, now: np.ndarray) -> np.ndarray:
        """Start of the shift each time in ``now`` falls in (or the last shift that started before it)."""
        now = np.asarray(now, np.float64)
        ok = np.isfinite(now)
        if not ok.any():
            return np.full(now.shape, np.nan)
        # the shifts around each hour that occurs in ``now`` (a day either side), not those of every day from the
        # earliest machine's time to the latest: one machine years from the others cost every tick 0.5 s
        hours = np.unique(np.floor(now[ok] / 3600.0)) * 3600.0
        starts = np.unique(np.concatenate([self._periods(self.shifts, h, h)[0] for h in hours]))
        i = np.searchsorted(starts, np.where(ok, now, 0.0), "right") - 1
        return np.where(ok & (i >= 0), starts[np.maximum(i, 0)], np.nan)

    def day_start(self, now: np.ndarray) -> np.ndarray:
        """Local midnight before each time in ``now``."""
        now = np.asarray(now, np.float64)
        out = np.full(now.shape, np.nan)
        ok = np.isfinite(now)
        hours = np.floor(now[ok] / 3600.0)
        cache = {}
        for h in np.unique(hours):  # the offset is the same within an hour: few zone look-ups
            local = dt.datetime.fromtimestamp(h * 3600.0, self.tz)
            cache[h] = self._at(local.date(), 0)
        out[ok] = [cache[h] for h in hours]
        return out


def _where(path, key: str) -> str:
    return f"{path}: {key}"


def _clock(value, path, key: str) -> int:
    text = str(value).strip() if value is not None else ""
    if isinstance(value, int) and not isinstance(value, bool):  # YAML reads 06:00 as base 60
        text = f"{value // 60:02d}:{value % 60:02d}"
    m = _CLOCK.match(text)
    if not m:
        raise ConfigError(f"{_where(path, key)} = {value!r}: write a time of day as \"HH:MM\", e.g. \"06:00\"")
    return int(m.group(1)) * 60 + int(m.group(2))


def _duration(value, path, key: str) -> float:
    seconds = duration(value)
    if seconds is None:
        raise ConfigError(f"{_where(path, key)} = {value!r}: write a duration like 90s, 2m or 1h")
    return seconds


def _periods(items, path, key: str, need_name: bool) -> list[Period]:
    if not isinstance(items, list):
        raise ConfigError(f"{_where(path, key)}: write a list, e.g. - {{name: early, start: \"06:00\", end: \"14:00\"}}")
    out = []
    for i, item in enumerate(items):
        k = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{_where(path, k)}: write {{start: \"HH:MM\", end: \"HH:MM\"}}")
        unknown = set(item) - {"name", "start", "end", "label"}
        if unknown:
            raise ConfigError(f"{_where(path, k)}: unknown key {sorted(unknown)[0]!r}; use name, start, end")
        name = item.get("name") or item.get("label") or (None if need_name else f"break {i + 1}")
        if not name:
            raise ConfigError(f"{_where(path, k)}.name: give the shift a name, e.g. early")
        start, end = _clock(item.get("start"), path, f"{k}.start"), _clock(item.get("end"), path, f"{k}.end")
        if start == end:
            raise ConfigError(f"{_where(path, k)}: start and end are equal; a period needs a length")
        out.append(Period(str(name), start, end))
    return out


def _categories(mapping, table: dict, path, key: str) -> dict[int, int]:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{_where(path, key)}: write a mapping of state -> category, e.g. {{Idle: setup}}")
    names = {name.lower(): code for code, name in table.items()} if table else {}
    cats = {c: i for i, c in enumerate(oee.CATEGORIES) if c != "small_stop"}
    out = {}
    for state, cat in mapping.items():
        code = names.get(str(state).lower()) if names else None
        if code is None:
            try:
                code = int(state)
            except (TypeError, ValueError):
                code = None
        if code is None or (table and code not in table) or code < 0:
            valid = ", ".join(table.values()) if table else "whole numbers >= 0"
            raise ConfigError(f"{_where(path, key)}: {state!r} is not a state; use one of: {valid}")
        if str(cat).lower() not in cats:
            raise ConfigError(f"{_where(path, key)}.{state}: {cat!r} is not a category; use one of: "
                              f"{', '.join(cats)}")
        out[code] = cats[str(cat).lower()]
    return out


def _reason_names(mapping, path) -> dict[int, dict[str, str]]:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{_where(path, 'reasons')}: write code -> text per language, e.g. "
                          "{201: {en: material shortage, nl: materiaaltekort}}")
    out = {}
    for code, texts in mapping.items():
        key = f"reasons.{code}"
        if isinstance(code, bool) or not isinstance(code, int) or code < 0:
            raise ConfigError(f"{_where(path, key)}: {code!r} is not a reason code; use whole numbers >= 0")
        if isinstance(texts, str):
            texts = {"en": texts}
        if not isinstance(texts, dict) or not texts or not all(
                isinstance(k, str) and re.fullmatch(r"[a-z]{2}", k) and isinstance(v, str) and v.strip()
                for k, v in texts.items()):
            raise ConfigError(f"{_where(path, key)}: write a text per language, e.g. {{en: jam, nl: vastloper}}")
        out[code] = {k: v.strip() for k, v in texts.items()}
    return out


def load(path: str | Path) -> SiteConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:  # in words, with the line (contract/yamlfile.py)
        raise yaml_error(path, e, text) from None
    return parse(data or {}, path)


def parse(data: dict, path="config") -> SiteConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a mapping with keys {', '.join(KEYS)}")
    unknown = set(data) - set(KEYS)
    if unknown:
        raise ConfigError(f"{_where(path, sorted(unknown)[0])}: unknown key; the keys are {', '.join(KEYS)}")
    cfg = SiteConfig()
    if "timezone" in data:
        try:
            ZoneInfo(str(data["timezone"]))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{_where(path, 'timezone')} = {data['timezone']!r}: write a zone name like "
                              "Europe/Amsterdam or UTC") from None
        cfg.timezone = str(data["timezone"])
    if "shifts" in data:
        cfg.shifts = _periods(data["shifts"], path, "shifts", need_name=True)
        cfg.shifts_limit_planned_time = bool(cfg.shifts)
        if not cfg.shifts:
            raise ConfigError(f"{_where(path, 'shifts')}: empty; list at least one shift or leave the key out")
    if "breaks" in data:
        cfg.breaks = _periods(data["breaks"], path, "breaks", need_name=False)
    if "reasons" in data:
        cfg.reason_names = _reason_names(data["reasons"], path)
    conv = data.get("conventions") or {}
    if not isinstance(conv, dict):
        raise ConfigError(f"{_where(path, 'conventions')}: write a mapping, e.g. {{micro_stop: 2m}}")
    unknown = set(conv) - set(CONVENTION_KEYS)
    if unknown:
        raise ConfigError(f"{_where(path, 'conventions.' + sorted(unknown)[0])}: unknown key; the keys are "
                          f"{', '.join(CONVENTION_KEYS)}")
    kw = {}
    if "micro_stop" in conv:
        kw["micro_stop_s"] = _duration(conv["micro_stop"], path, "conventions.micro_stop")
    if "startup" in conv:
        kw["startup_s"] = _duration(conv["startup"], path, "conventions.startup")
    for key, allowed in (("micro_stops_as", ("performance", "availability")), ("setup_as", ("availability", "excluded"))):
        if key in conv:
            if conv[key] not in allowed:
                raise ConfigError(f"{_where(path, 'conventions.' + key)} = {conv[key]!r}: use "
                                  f"{' or '.join(allowed)}")
            kw[key] = conv[key]
    if "packml" in conv:
        kw["packml"] = _categories(conv["packml"], PACKML, path, "conventions.packml")
    if "simple" in conv:
        kw["simple"] = _categories(conv["simple"], SIMPLE, path, "conventions.simple")
    if "reasons" in conv:
        kw["reasons"] = {**oee.DEFAULT_REASONS, **_categories(conv["reasons"], {}, path, "conventions.reasons")}
    cfg.conventions = oee.Conventions(**kw)
    if data.get("sparkplug") is not None:
        from .sparkplug import parse_settings
        cfg.sparkplug = parse_settings(data["sparkplug"], path)
    return cfg
