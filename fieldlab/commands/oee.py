"""``fieldlab oee``: OEE from an event log file, to check exercises by hand."""
from __future__ import annotations

from ._common import _duration, add_command, site_config


def add_parser(sub) -> None:
    o = add_command(sub, "oee", "compute OEE from an event log file (JSON Lines or CSV), to check exercises by hand",
                    "Compute OEE, its losses, MTBF and MTTR from an event log: machine states,\n"
                    "counter readings and planned stops, in JSON Lines (.jsonl) or CSV. The format\n"
                    "is described field by field in docs/oee.md, with example files in docs/examples/.\n\n"
                    "examples:\n"
                    "  fieldlab oee docs/examples/oee-com-shift.jsonl\n"
                    "  fieldlab oee log.csv --every 1h             one table per hour\n"
                    "  fieldlab oee log.csv --micro-stop 5m --json  other small-stop threshold, JSON out")
    o.add_argument("file", help="the event log (.jsonl or .csv)")
    o.add_argument("--from", dest="start", metavar="TIME", help="start of the report (default: first event); "
                   "ISO 8601 like 2026-12-01T06:00:00Z or Unix seconds")
    o.add_argument("--to", dest="end", metavar="TIME", help="end of the report (default: last event)")
    o.add_argument("--tz", metavar="ZONE", help="time zone of times written without an offset, e.g. "
                   "Europe/Amsterdam (default: the --config site's time zone, else UTC); docs/oee.md")
    o.add_argument("--every", type=_duration, metavar="DURATION", help="split into windows of this length, e.g. 1h")
    o.add_argument("--config", metavar="FILE", help="site configuration (YAML): its breaks and shifts are planned "
                   "downtime, its conventions apply (the options below override them)")
    o.add_argument("--micro-stop", type=_duration, metavar="DURATION",
                   help="stops shorter than this are small stops (default 2m)")
    o.add_argument("--micro-stops-as", choices=("performance", "availability"),
                   help="book small stops as a performance loss (default) or an availability loss")
    o.add_argument("--setup-as", choices=("availability", "excluded"),
                   help="planned setup/changeover: an availability loss (default), or outside planned time")
    o.add_argument("--startup", type=_duration, metavar="DURATION",
                   help="rejects this long after a setup are start-up rejects (default 10m)")
    o.add_argument("--json", action="store_true", help="print JSON instead of tables")


async def run(a) -> int:
    import dataclasses
    import json

    from gateway import eventlog

    from .. import report

    cfg = site_config(a.config)
    tz = eventlog.zone(a.tz or (cfg.timezone if a.config else None))
    log = eventlog.read(a.file, tz)
    start = eventlog.parse_time(a.start, "--from", tz) if a.start else log.first
    end = eventlog.parse_time(a.end, "--to", tz) if a.end else log.last
    if end <= start:
        raise eventlog.EventLogError(f"the report ends ({end}) before it starts ({start}); check --from and --to")
    given = {"micro_stop_s": a.micro_stop, "micro_stops_as": a.micro_stops_as, "setup_as": a.setup_as,
             "startup_s": a.startup}
    conv = dataclasses.replace(cfg.conventions, **{k: v for k, v in given.items() if v is not None})
    if a.config:
        cal = cfg.calendar(start, end)
        log.planned += [(s, e, "site configuration") for s, e in zip(cal[0::2], cal[1::2])]
    rows = eventlog.report(log, start, end, a.every, conv, tz)
    print(json.dumps(rows, indent=2) if a.json else report.render(rows))
    if not a.json:
        print(eventlog.notes(log, rows, tz), end="")
    return 0
