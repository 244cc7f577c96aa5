"""``fieldlab gateway``: OEE from MQTT data, KPIs back to MQTT, the live dashboard and /metrics."""
from __future__ import annotations

import argparse

from ._common import (
    _add_mqtt_login, _broker, _count, _influx_sink, _not_negative, _port, _positive, _state_dir, _wait_for_stop,
    add_command, site_config,
)


def add_parser(sub) -> None:
    g = add_command(sub, "gateway", "compute OEE from MQTT data and publish KPIs",
                    "Run the gateway: it reads every machine's data from MQTT, computes OEE\n"
                    "for all machines together and publishes the KPIs as retained MQTT messages\n"
                    "(fieldlab/v1/<site>/<area>/<line>/<machine>/kpi).\n\n"
                    "example:\n  fieldlab gateway --broker mqtt://localhost:1883")
    g.add_argument("--broker", metavar="URL", help="MQTT broker (required), e.g. mqtt://localhost:1883 or, "
                   "with a user, mqtts://gateway@broker.local:8883")
    _add_mqtt_login(g)
    g.add_argument("--site", default="+", help="only this site (default: all sites)")
    g.add_argument("--scope", action="append", metavar="SITE/AREA/LINE",
                   help="only these lines (+ for any level), e.g. --scope acme/hall-1/+ ; repeat for more. Run "
                        "several gateways with different scopes against one broker to share the work: each "
                        "machine is computed by exactly one of them")
    g.add_argument("--config", metavar="FILE", help="site configuration (YAML): time zone, shifts, breaks, "
                   "OEE conventions; see docs/examples/site.yaml")
    g.add_argument("--sparkplug", action="append", metavar="GROUP",
                   help="also read this Sparkplug B group (spBv1.0/GROUP/#): its devices become machines "
                        "<site>/GROUP/<edge node>/<device>; repeat for more; or sparkplug: in the --config file "
                        "(docs/contract.md, Sparkplug B)")
    g.add_argument("--http-port", type=_port, default=8080, metavar="PORT",
                   help="port for the live dashboard (/), the REST API (/api), /metrics (Prometheus) and /healthz "
                        "(default 8080)")
    g.add_argument("--http-host", default="127.0.0.1", metavar="ADDRESS",
                   help="address for the HTTP endpoint; 0.0.0.0 for the whole network (default 127.0.0.1). "
                        "Everyone who reaches it sees the KPIs; changing anything (operator terminal, presenter "
                        "mode) needs a login (docs/web.md)")
    g.add_argument("--presenter", action=argparse.BooleanOptionalAction, default=False,
                   help="presenter mode for a course: the page /presenter with fault buttons per machine, sent as "
                        "commands on the machines' cmd topics for a simulator that takes them (fieldlab sim "
                        "--broker). Presenters log in with a name and PIN of $FIELDLAB_WEB_USERS (fieldlab deploy: "
                        "presenters:); without a users file a login link with a random token is printed instead "
                        "(docs/web.md)")
    g.add_argument("--influx", metavar="URL", help="also store everything in InfluxDB, e.g. http://localhost:8086: "
                   "1.x (or 2.x/3.x in 1.x compatibility mode) with --influx-db, a user as http://user@host:8086 "
                   "with the password in $FIELDLAB_INFLUX_PASSWORD; 2.x's own API with --influx-org and "
                   "--influx-bucket and the API token in $FIELDLAB_INFLUX_TOKEN (scheme: docs/storage.md)")
    g.add_argument("--influx-db", metavar="NAME", help="InfluxDB 1.x database (default fieldlab; created if missing)")
    g.add_argument("--influx-org", metavar="ORG", help="InfluxDB 2.x organisation (name or ID); with --influx-bucket")
    g.add_argument("--influx-bucket", metavar="BUCKET", help="InfluxDB 2.x bucket to write to; with --influx-org")
    g.add_argument("--state-dir", metavar="DIR", help="where the gateway keeps its checkpoint, so KPIs continue "
                   "after a restart or a crash (default: systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/fieldlab or "
                   "~/.local/state/fieldlab; "
                   "'none': no checkpoint)")
    g.add_argument("--checkpoint-every", type=_positive, default=10.0, metavar="SECONDS",
                   help="write the checkpoint this often (default 10; and always at a clean stop)")
    g.add_argument("--client-id", metavar="ID", help="the gateway's MQTT client id (default fieldlab-gateway-<site "
                   "or scope>-<host name>): the broker keeps the gateway's session under it, so it must be stable "
                   "and used by no other client; a second process with the same id is reported in the log and "
                   "/healthz")
    g.add_argument("--max-machines", type=_count, default=1000, metavar="N",
                   help="at most this many machines (default 1000); data of any more is refused to the dead-letter "
                        "topic, so one faulty producer inventing machine names cannot exhaust the gateway")
    g.add_argument("--mqtt-grace", type=_positive, default=30.0, metavar="SECONDS",
                   help="/healthz fails when the broker has been unreachable this long (default 30)")
    g.add_argument("--table", type=_not_negative, default=None, metavar="SECONDS",
                   help="print the KPI table every SECONDS (default: 5 in a terminal, never when the output goes "
                        "to a log such as systemd's journal, where it would push everything else out; 0: never)")
    g.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this many seconds")
    gsub = g.add_subparsers(dest="gateway_command", metavar="forget")
    fg = gsub.add_parser("forget", help="remove a machine (a test machine, say) from the KPIs, the dashboard and the API",
                         description="Ask the running gateway(s) to forget a machine: its history and KPIs are\n"
                                     "dropped, its retained KPI message is cleared, and it leaves the dashboard\n"
                                     "and the API. If it sends data again, it comes back with a fresh start.\n"
                                     "The request is a command on the machine's cmd topic (docs/contract.md),\n"
                                     "so the MQTT user needs the right to write it (an operator in deploy).\n\n"
                                     "example:\n  fieldlab gateway forget demo/area-1/line-1/test-01 "
                                     "--broker mqtt://localhost:1883",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    fg.add_argument("machine", metavar="SITE/AREA/LINE/MACHINE", help="the machine's full name, as in its topics")
    fg.add_argument("--broker", metavar="URL", required=True, help="MQTT broker, e.g. mqtt://localhost:1883")
    _add_mqtt_login(fg)
    fg.add_argument("--wait", type=_positive, default=5.0, metavar="SECONDS",
                    help="wait this long for a gateway to clear the machine's KPIs (default 5)")


async def run(a) -> int:
    import sys

    from contract.errors import ServiceError
    from gateway.service import Gateway

    from .. import table
    from ..memory import steady_malloc

    steady_malloc()  # a service that runs for weeks: RSS must not creep by fragmentation (fieldlab/memory.py)

    from gateway.http import HttpEndpoint

    if getattr(a, "gateway_command", None) == "forget":
        return await _forget(a)
    if not a.broker:
        raise ServiceError("--broker is required, e.g. --broker mqtt://localhost:1883")
    if a.scope and a.site != "+":
        raise ServiceError("give either --site or --scope (a scope names its site: --scope SITE/AREA/LINE)")
    sinks = [sink] if (sink := _influx_sink(a)) else []
    config = site_config(a.config)
    if a.sparkplug:  # added to the site file's groups (and its mapping), or on their own
        from gateway.sparkplug import parse_settings

        if config.sparkplug is None:
            config.sparkplug = parse_settings({"groups": a.sparkplug, **({"site": a.site} if a.site != "+" else {})},
                                              "--sparkplug")
        else:
            config.sparkplug.groups += [g for g in parse_settings({"groups": a.sparkplug}, "--sparkplug").groups
                                        if g not in config.sparkplug.groups]
    gw = Gateway(_broker(a), site=a.site, config=config, sinks=sinks,
                 scope=a.scope, state_dir=_state_dir(a.state_dir), checkpoint_s=a.checkpoint_every,
                 client_id=a.client_id, max_machines=a.max_machines, mqtt_grace_s=a.mqtt_grace)
    http = HttpEndpoint(gw, a.http_host, a.http_port, presenter=a.presenter)
    await http.start()
    try:
        await gw.start()
        print(f"gateway reading {a.broker}; live dashboard on {http.url}/, REST API {http.url}/api/openapi.json, "
              f"metrics on {http.url}/metrics", flush=True)
        every = (5.0 if sys.stdout.isatty() else 0) if a.table is None else a.table
        await _wait_for_stop(a.duration, every=every or None,
                             on_tick=(lambda: print(table.render(gw.rows) + "\n", flush=True)) if every else None)
    finally:
        await gw.stop()
        await http.stop()
    if every:  # the last figures, where the table was wanted
        print(table.render(gw.rows))
    return 0


async def _forget(a) -> int:
    import asyncio
    import getpass
    import time

    from contract import Kind, MachineRef, encode_command
    from contract.errors import ServiceError
    from contract.mqtt import connect, wait_published

    parts = a.machine.split("/")
    if len(parts) != 4 or not all(parts):
        raise ServiceError(f"{a.machine!r}: give the machine as SITE/AREA/LINE/MACHINE, as in its topics "
                           f"(fieldlab/v1/SITE/AREA/LINE/MACHINE/...)")
    ref = MachineRef(*parts)
    url = _broker(a)
    kpis: list[bytes] = []
    client = connect(url, on_message=lambda c, u, msg: kpis.append(msg.payload))
    try:
        if not wait_published([client.publish(ref.topic(Kind.CMD), encode_command(
                "forget", by=url.username or getpass.getuser()), qos=1)], 5.0):
            raise ServiceError(f"the MQTT broker at {a.broker} did not acknowledge the request")
        # the gateway answers by clearing the machine's retained KPIs: look until they are gone
        deadline = time.monotonic() + a.wait
        while True:
            kpis.clear()
            client.subscribe(ref.topic(Kind.KPI), qos=1)
            await asyncio.sleep(0.5)
            client.unsubscribe(ref.topic(Kind.KPI))
            if not any(kpis):
                print(f"forgot {ref.path}: it is gone from the KPIs, the dashboard and the API until it sends "
                      f"again", flush=True)
                return 0
            if time.monotonic() > deadline:
                print(f"fieldlab gateway forget: {ref.path} still has KPIs after {a.wait:g} s: is a gateway running "
                      f"with this machine in its --site or --scope?", flush=True)
                return 1
    finally:
        client.disconnect()
        client.loop_stop()
