"""The ``fieldlab`` command line. Help texts are written for trainers, not programmers."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from contract.errors import ContractError, ServiceError
from contract.yamlfile import ConfigError, duration, size

from . import __version__, logs

DESCRIPTION = """\
fieldlab: a shop-floor IoT demonstrator.

Simulated (or real) machines are read by edge agents over OPC UA, their data
travels over MQTT to a gateway, and the gateway computes OEE (availability x
performance x quality) for every machine, live.

Start here:   fieldlab demo                 (3 machines, 60x speed, Ctrl-C to stop)
              fieldlab demo --duration 30   (stop by itself after 30 seconds)

Each part can also run on its own, e.g. the simulators on a demo PC and an edge
agent on a Raspberry Pi: see 'fieldlab sim --help', 'fieldlab edge --help' and
'fieldlab gateway --help'."""


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= v <= 200:
        raise argparse.ArgumentTypeError(f"{text}: choose between 1 and 200")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{text}: a port is between 1 and 65535")
    return v


def _duration(text: str) -> float:
    value = duration(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: write a duration like 90, 90s, 2m, 1h or 1d")
    return value


def _size(text: str) -> int:
    value = size(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: write a size like 500MB or 2GB")
    if value < 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 4KB")
    return value


def _add_levels(parser, help_: str) -> None:
    """--site, --area, --line with the demo's defaults."""
    for level, default in (("site", "demo"), ("area", "hall-1"), ("line", "line-1")):
        parser.add_argument(f"--{level}", default=default, help=help_.format(level=level) + f" (default {default})")


LINE_HELP = ("couple the machines into a line, in order, with buffers of CAP parts between them (one number "
             "for every buffer, or one per buffer): a stop upstream starves the next machine, a full buffer blocks "
             "the one before it (docs/simulators.md, \"A line with buffers\"); not with --scenario (a scenario "
             "file has its own line: key)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fieldlab", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fieldlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help, description):
        sp = sub.add_parser(name, help=help, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("-v", "--verbose", action="store_true", help="show what every part is doing (log lines)")
        return sp

    d = add("demo", "run the whole chain: machines, edge agents, broker, gateway, live OEE table",
            "Run the whole chain on this computer and show live OEE per machine.\n\n"
            "Starts simulated machines (each with its own OPC UA server), one edge agent\n"
            "per machine, an MQTT broker (unless you name one with --broker) and the\n"
            "gateway, then shows a table that refreshes every second. Time runs faster\n"
            "than real time (--speed), so a shift passes in minutes. Stop with Ctrl-C.\n\n"
            "examples:\n"
            "  fieldlab demo                          3 machines at 60x speed until Ctrl-C\n"
            "  fieldlab demo --duration 30 --speed 60 half an hour of production in 30 s\n"
            "  fieldlab demo --broker mqtt://broker.local:1883   use the fieldlab's broker")
    d.add_argument("--machines", type=_count, default=3, metavar="N", help="how many machines (default 3)")
    d.add_argument("--speed", type=_positive, default=60.0, metavar="K",
                   help="simulated time runs K times faster than the clock: 60 = one hour per minute (default 60)")
    d.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                   help="stop by itself after this many real seconds (default: run until Ctrl-C)")
    d.add_argument("--broker", metavar="URL", help="use this MQTT broker, e.g. mqtt://localhost:1883, "
                   "instead of starting a private one")
    d.add_argument("--broker-impl", choices=("auto", "mosquitto", "amqtt"), default="auto",
                   help="which private broker to start: mosquitto if installed, otherwise the built-in "
                   "Python broker amqtt (default auto)")
    d.add_argument("--mqtt-port", type=_port, default=1883, metavar="PORT",
                   help="port of the private broker (default 1883)")
    d.add_argument("--opcua-port", type=_port, default=4840, metavar="PORT",
                   help="OPC UA port of the first machine; the next machines use the next ports (default 4840)")
    d.add_argument("--seed", type=int, default=1, help="same seed, same production run (default 1)")
    d.add_argument("--config", metavar="FILE", help="site configuration (YAML): time zone, shifts, breaks, "
                   "OEE conventions; see docs/examples/site.yaml")
    d.add_argument("--http-port", type=_port, default=8080, metavar="PORT",
                   help="port of the gateway's live dashboard, REST API, /metrics and /healthz on 127.0.0.1 "
                        "(default 8080)")
    d.add_argument("--scenario", metavar="NAME-or-FILE", help="run a course scenario: its machines, seed and "
                   "scripted faults; stops at its end unless --duration (fieldlab sim --list-scenarios)")
    d.add_argument("--buffers", metavar="CAP[,CAP...]", help=LINE_HELP)
    d.add_argument("--ledger", metavar="FILE", help="at the end, write what the simulated machines really "
                   "did (time per state, good and reject parts) to this JSON file, to check the OEE by hand")
    d.add_argument("--influx", metavar="URL", help="also store everything in this InfluxDB 1.x (database fieldlab), "
                   "e.g. http://localhost:8086, for the Grafana dashboards (docs/dashboards.md)")

    s = add("sim", "run simulated machines with OPC UA (and Modbus TCP) servers for other tools",
            "Run simulated machines on their own, each with an OPC UA server (and, if asked,\n"
            "a Modbus TCP server), so that other tools (UaExpert, Node-RED, a Modbus client,\n"
            "an edge agent on a Pi) can read them.\n\n"
            "Faults on cue: every machine has OPC UA methods (InjectBreakdown, SlowDown, ...),\n"
            "and with --broker it also takes commands from MQTT; 'fieldlab sim inject --help'.\n\n"
            "examples:\n  fieldlab sim --machines 3 --speed 1     real-time machines on ports 4840-4842\n"
            "  fieldlab sim --modbus-port 5020         also Modbus TCP on ports 5020-5022\n"
            "  fieldlab sim --broker mqtt://localhost:1883   also take fault commands over MQTT\n"
            "  fieldlab sim inject cnc-01 breakdown --minutes 5 --opcua opc.tcp://127.0.0.1:4840/fieldlab/")
    s.add_argument("--machines", type=_count, default=3, metavar="N", help="how many machines (default 3)")
    s.add_argument("--speed", type=_positive, default=1.0, metavar="K", help="time runs K times faster (default 1)")
    s.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this many seconds")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for the whole network "
                   "(default 127.0.0.1, this computer only)")
    s.add_argument("--opcua-port", type=_port, default=4840, metavar="PORT", help="port of the first machine (default 4840)")
    s.add_argument("--modbus-port", type=_port, default=None, metavar="PORT",
                   help="also serve each machine over Modbus TCP, the first on PORT, the next on PORT+1 ... "
                        "(register map: docs/simulators.md). Modbus values carry no time stamps: with an edge "
                        "agent reading Modbus, keep --speed 1")
    s.add_argument("--seed", type=int, default=1, help="same seed, same production run (default 1)")
    s.add_argument("--ledger", metavar="FILE", help="write what the machines really did to this JSON file at the end")
    s.add_argument("--scenario", metavar="NAME-or-FILE", help="run a course scenario (YAML): its machines, seed and "
                   "scripted faults instead of --machines and --seed; stops at its end unless --duration")
    s.add_argument("--list-scenarios", action="store_true", help="list the shipped scenarios and stop")
    s.add_argument("--buffers", metavar="CAP[,CAP...]", help=LINE_HELP)
    s.add_argument("--one-server", action="store_true", help="serve every machine from one OPC UA server on "
                   "--opcua-port (each an object below Objects) instead of one server per port: about 40 MiB "
                   "and 1.7 s of start-up less per machine")
    s.add_argument("--broker", metavar="URL", help="take fault commands from this MQTT broker, e.g. "
                   "mqtt://localhost:1883, on fieldlab/v1/SITE/AREA/LINE/<machine>/cmd")
    _add_mqtt_login(s)
    s.add_argument("--publish", metavar="URL", help="also publish every machine's data straight to this MQTT "
                   "broker in the fieldlab format (docs/contract.md), as an edge agent would, without one: "
                   "fieldlab/v1/SITE/AREA/LINE/<machine>/... (the login options apply to it too)")
    _add_levels(s, "with --broker or --publish: {level} name in the topics")
    ssub = s.add_subparsers(dest="sim_command", metavar="inject")
    _add_inject(ssub)

    e = add("edge", "read one machine (OPC UA, Modbus TCP, digital I/O) and publish its data to MQTT",
            "Run an edge agent: it reads one machine and publishes state changes,\n"
            "counters and process values to MQTT in the fieldlab format (docs/contract.md).\n"
            "While the broker is unreachable everything is kept on disk and sent later.\n\n"
            "A mapping file (YAML) says which machine, broker, source and tags; examples\n"
            "in docs/examples/edge-*.yaml, every key in docs/edge-on-a-pi.md.\n\n"
            "examples:\n"
            "  fieldlab edge --config /etc/fieldlab/edge.yaml           run from a mapping file\n"
            "  fieldlab edge --config edge.yaml --check                 check the file, then stop\n"
            "  fieldlab edge discover opc.tcp://192.168.0.10:4840 -o edge.yaml   write a starter file\n"
            "  fieldlab edge --opcua opc.tcp://127.0.0.1:4840/fieldlab/ --object cnc-01 \\\n"
            "                --broker mqtt://localhost:1883     a fieldlab simulated machine, no file")
    e.add_argument("--config", metavar="FILE", help="the mapping file (YAML); on a Pi /etc/fieldlab/edge.yaml")
    e.add_argument("--check", action="store_true", help="check the mapping file, say what it will read, and stop")
    e.add_argument("--opcua", metavar="URL", help="without a file: OPC UA endpoint of a fieldlab simulated machine")
    e.add_argument("--object", metavar="NAME", help="without a file: browse name of the machine object under Objects")
    e.add_argument("--namespace", default="urn:fieldlab:sim", help="without a file: namespace URI of its variables")
    e.add_argument("--broker", metavar="URL", help="MQTT broker, e.g. mqtt://localhost:1883 (overrides the file's)")
    _add_levels(e, "without a file: {level} name in the topic")
    e.add_argument("--machine", help="without a file: machine name in the topic (default: the --object name)")
    e.add_argument("--buffer", metavar="FILE", help="the store-and-forward outbox (SQLite): data waits here while "
                   "the broker is unreachable (default: ~/.local/state/fieldlab/edge-<site>-<area>-<line>-<machine>.db)")
    e.add_argument("--buffer-size", type=_size, default=None, metavar="SIZE",
                   help="at most this much is kept; the oldest data is dropped beyond it (default 100MB)")
    e.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this many seconds")
    esub = e.add_subparsers(dest="edge_command", metavar="discover")
    dsc = esub.add_parser("discover", help="browse an OPC UA server and write a starter mapping file",
                          description="Browse an OPC UA server's variables and write a starter mapping file\n"
                                      "with guessed tags, to check and edit by hand.\n\n"
                                      "example:\n  fieldlab edge discover opc.tcp://192.168.0.10:4840 -o edge.yaml",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    dsc.add_argument("url", metavar="opc.tcp://HOST:PORT", help="the server's endpoint")
    dsc.add_argument("-o", "--output", metavar="FILE", help="write the file here (default: print it)")
    dsc.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    dsc.add_argument("--username", help="OPC UA user, if the server wants one (password from $OPCUA_PASSWORD)")

    o = add("oee", "compute OEE from an event log file (JSON Lines or CSV), to check exercises by hand",
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

    g = add("gateway", "compute OEE from MQTT data and publish KPIs",
            "Run the gateway: it reads every machine's data from MQTT, computes OEE\n"
            "for all machines together and publishes the KPIs as retained MQTT messages\n"
            "(fieldlab/v1/<site>/<area>/<line>/<machine>/kpi).\n\n"
            "example:\n  fieldlab gateway --broker mqtt://localhost:1883")
    g.add_argument("--broker", required=True, metavar="URL", help="MQTT broker, e.g. mqtt://localhost:1883 or, "
                   "with a user, mqtts://gateway@broker.local:8883")
    _add_mqtt_login(g)
    g.add_argument("--site", default="+", help="only this site (default: all sites)")
    g.add_argument("--scope", action="append", metavar="SITE/AREA/LINE",
                   help="only these lines (+ for any level), e.g. --scope acme/hall-1/+ ; repeat for more. Run "
                        "several gateways with different scopes against one broker to share the work: each "
                        "machine is computed by exactly one of them")
    g.add_argument("--config", metavar="FILE", help="site configuration (YAML): time zone, shifts, breaks, "
                   "OEE conventions; see docs/examples/site.yaml")
    g.add_argument("--http-port", type=_port, default=8080, metavar="PORT",
                   help="port for the live dashboard (/), the REST API (/api), /metrics (Prometheus) and /healthz "
                        "(default 8080)")
    g.add_argument("--http-host", default="127.0.0.1", metavar="ADDRESS",
                   help="address for the HTTP endpoint; 0.0.0.0 for the whole network (default 127.0.0.1). "
                        "It has no login: everyone who reaches it sees the KPIs (it cannot change anything)")
    g.add_argument("--influx", metavar="URL", help="also store everything in InfluxDB, e.g. http://localhost:8086: "
                   "1.x (or 2.x/3.x in 1.x compatibility mode) with --influx-db, a user as http://user@host:8086 "
                   "with the password in $FIELDLAB_INFLUX_PASSWORD; 2.x's own API with --influx-org and "
                   "--influx-bucket and the API token in $FIELDLAB_INFLUX_TOKEN (scheme: docs/storage.md)")
    g.add_argument("--influx-db", metavar="NAME", help="InfluxDB 1.x database (default fieldlab; created if missing)")
    g.add_argument("--influx-org", metavar="ORG", help="InfluxDB 2.x organisation (name or ID); with --influx-bucket")
    g.add_argument("--influx-bucket", metavar="BUCKET", help="InfluxDB 2.x bucket to write to; with --influx-org")
    g.add_argument("--state-dir", metavar="DIR", help="where the gateway keeps its checkpoint, so KPIs continue "
                   "after a restart or a crash (default $XDG_STATE_HOME/fieldlab or ~/.local/state/fieldlab; "
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
    g.add_argument("--duration", type=_positive, default=None, metavar="SECONDS", help="stop after this many seconds")

    dp = add("deploy", "make a secure MQTT broker set-up: one password and ACL per edge agent, TLS",
             "Generate the files of a secure Mosquitto for a plant from a list of machines\n"
             "(see deploy/plant.example.yaml): one MQTT user and random password per edge\n"
             "agent, an ACL so that an agent may publish only its own machine's data, users\n"
             "for the gateway, viewers and operators, mosquitto.conf without anonymous access,\n"
             "and with --tls a CA and a server certificate. Run it again after changing the\n"
             "plant file: existing passwords and certificates are kept.\n\n"
             "The output directory holds secrets: keep it out of git (./secrets is ignored).\n\n"
             "examples:\n"
             "  fieldlab deploy deploy/plant.example.yaml --tls\n"
             "  mosquitto -c secrets/mosquitto/mosquitto.conf          run the broker with it\n"
             "  fieldlab deploy plant.yaml --layout compose --tls      for docker-compose.yml\n"
             "  fieldlab deploy plant.yaml --rotate edge-cnc-01        a new password for one agent")
    dp.add_argument("plant", metavar="PLANT.yaml", help="the site (its machines) or the central broker (its sites)")
    dp.add_argument("--out", default="secrets", metavar="DIR", help="where to write (default ./secrets)")
    dp.add_argument("--tls", action="store_true", help="add a TLS listener on 8883 with a CA and a server "
                    "certificate for broker.hostnames (made with openssl)")
    dp.add_argument("--layout", choices=("standalone", "debian", "compose"), default="standalone",
                    help="standalone: a complete mosquitto.conf naming the files where they are; debian: a drop-in "
                         "for /etc/mosquitto/conf.d of Debian's mosquitto package; compose: for docker-compose.yml, "
                         "which mounts them at /mosquitto/config (default standalone)")
    dp.add_argument("--plain-bind", metavar="ADDRESS", help="address of the unencrypted listener on 1883 (default "
                    "0.0.0.0, with --tls 127.0.0.1; compose: 0.0.0.0 inside the stack's network)")
    dp.add_argument("--rotate", action="append", default=[], metavar="USER", help="give this user a new password "
                    "(repeat for more)")
    dp.add_argument("--broker-user", metavar="USER", help="the user the broker runs as, who must read its files "
                    "(default, when run as root: mosquitto, the user of Debian's package; with --layout compose "
                    "1883, the container's)")

    db = add("dashboards", "Grafana dashboards: write their JSON, or upload them to a Grafana",
             "The fieldlab Grafana dashboards (shop-floor overview, machine detail, losses, shift\n"
             "report) are generated from Python code (dashboards/) and read the gateway's InfluxDB\n"
             "(docs/storage.md) with InfluxQL. docs/dashboards.md says what each one shows.\n\n"
             "examples:\n"
             "  fieldlab dashboards build                      regenerate dashboards/json\n"
             "  FIELDLAB_GRAFANA_TOKEN=glsa_... fieldlab dashboards push --url http://localhost:3000 \\\n"
             "      --influx-url http://influxdb:8086 --influx-user grafana   upload (datasource if missing)")
    dbsub = db.add_subparsers(dest="dashboards_command", metavar="build|push", required=True)
    dbb = dbsub.add_parser("build", help="write every dashboard's JSON (default: dashboards/json in the source tree)",
                           description="Write every dashboard's JSON model, as Grafana's file provisioning reads it.")
    dbb.add_argument("--out", metavar="DIR", help="write into DIR instead of dashboards/json")
    dbb.add_argument("--check", action="store_true", help="write nothing; fail if the files differ from the code")
    dbp = dbsub.add_parser("push", help="upload the dashboards (and the data source, if missing) to a Grafana",
                           description="Upload the dashboards into the folder 'fieldlab' of a running Grafana, and\n"
                                       "create the InfluxDB data source (uid fieldlab-influxdb) if it has none.\n"
                                       "Running it twice changes nothing: unchanged dashboards are not saved.\n"
                                       "The token: a Grafana service account token (Editor; Admin to create the\n"
                                       "data source) in $FIELDLAB_GRAFANA_TOKEN or a file (--token-file).",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    dbp.add_argument("--url", required=True, metavar="URL", help="Grafana's address, e.g. http://localhost:3000")
    dbp.add_argument("--token-file", metavar="FILE", help="read the token from FILE (default: $FIELDLAB_GRAFANA_TOKEN)")
    dbp.add_argument("--token", metavar="TOKEN", help="the token itself; avoid it: it shows in the process list "
                     "and the shell history")
    dbp.add_argument("--influx-url", default="http://localhost:8086", metavar="URL",
                     help="for a new data source: InfluxDB's address as Grafana's server reaches it "
                          "(default http://localhost:8086; in docker-compose http://influxdb:8086)")
    dbp.add_argument("--influx-db", default="fieldlab", metavar="NAME", help="for a new data source: the database "
                     "(default fieldlab; InfluxDB 2.x: the database of a DBRP mapping)")
    dbp.add_argument("--influx-user", metavar="USER", help="for a new data source: a read-only InfluxDB user; its "
                     "password from $FIELDLAB_INFLUX_PASSWORD or --influx-password-file")
    dbp.add_argument("--influx-password-file", metavar="FILE", help="read the InfluxDB user's password from FILE")
    dbp.add_argument("--no-datasource", action="store_true", help="do not check or create the data source")
    return p


INJECT_HELP = """\
Inject a fault into a running simulated machine, live, for a demonstration.
The fault starts at the simulated time it arrives, walks the machine's normal
PackML path and is booked in the simulator's ledger, so the OEE the gateway
shows can be checked against what really happened.

faults:
  breakdown    the machine breaks down: Held for --minutes (default 5), reason 101
  microstops   a burst of --count short jams (default 5) of 10 s, 30 s apart, reason 102
  slow         it runs at --factor of its speed (default 0.5) for --minutes (default 10)
  quality      for --minutes (default 10): --reject-rate P of the parts are rejected,
               or --temp C: the temperature runs C degC above its setpoint and the
               rejects follow it (give one of the two)
  material     material runs out: Suspended for --minutes (default 5), reason 201
  reset        clear every injected fault now; the machine returns to normal

A breakdown, jams or a shortage that finds the machine already stopped starts
when the machine is back in Execute.

Send it one of two ways:
  --opcua URL   call the machine's OPC UA method (fieldlab sim prints each
                machine's URL); the simulator answers with what it did
  --broker URL  publish an MQTT command to fieldlab/v1/SITE/AREA/LINE/MACHINE/cmd
                (fieldlab sim --broker URL, or fieldlab demo, listens); MQTT
                gives no answer: check the machine's state

examples:
  fieldlab sim inject cnc-01 breakdown --minutes 5 --opcua opc.tcp://127.0.0.1:4840/fieldlab/
  fieldlab sim inject moulder-01 quality --reject-rate 0.3 --minutes 20 --broker mqtt://localhost:1883
  fieldlab sim inject cnc-01 reset --broker mqtt://localhost:1883"""

#: inject option -> fault parameter
INJECT_OPTIONS = {"minutes": "minutes", "count": "count", "factor": "factor", "reject_rate": "reject_rate",
                  "temp": "temp_c"}


def _add_inject(sub) -> None:
    from simulators.faults import FAULTS

    i = sub.add_parser("inject", help="inject a fault into a running simulated machine (OPC UA or MQTT)",
                       description=INJECT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("-v", "--verbose", action="store_true", help="show what every part is doing (log lines)")
    i.add_argument("machine", metavar="MACHINE", help="the machine's name, e.g. cnc-01")
    i.add_argument("fault", metavar="FAULT", choices=list(FAULTS), help=f"one of: {', '.join(FAULTS)}")
    i.add_argument("--minutes", type=_positive, metavar="N", help="how long the fault lasts, in simulated minutes")
    i.add_argument("--count", type=int, metavar="K", help="microstops: how many jams (1-100, default 5)")
    i.add_argument("--factor", type=_positive, metavar="F",
                   help="slow: fraction of the normal speed, e.g. 0.6 = 60 %% (default 0.5)")
    i.add_argument("--reject-rate", type=float, metavar="P",
                   help="quality: probability that a part is rejected, 0-1, e.g. 0.3")
    i.add_argument("--temp", type=float, metavar="C",
                   help="quality: degC the temperature runs above its setpoint (rejects follow it)")
    how = i.add_mutually_exclusive_group(required=True)
    how.add_argument("--opcua", metavar="URL", help="the machine's OPC UA endpoint, e.g. opc.tcp://127.0.0.1:4840/fieldlab/")
    how.add_argument("--broker", metavar="URL", help="MQTT broker, e.g. mqtt://localhost:1883 or, with a user, "
                     "mqtt://trainer@broker.local:1883")
    _add_mqtt_login(i)
    _add_levels(i, "with --broker: {level} name in the topic")


async def _inject(a) -> int:
    from contract import MachineRef, encode_command
    from simulators import faults

    given = {param: getattr(a, opt) for opt, param in INJECT_OPTIONS.items() if getattr(a, opt) is not None}
    takes = {p.name for p in faults.FAULTS[a.fault].params}
    for opt, param in INJECT_OPTIONS.items():
        if param in given and param not in takes:
            raise ServiceError(f"--{opt.replace('_', '-')} does not apply to {a.fault} (see fieldlab sim inject --help)")
    fault, params = faults.check(a.fault, given)
    if a.opcua:
        print(await _inject_opcua(a.opcua, a.machine, fault, params), flush=True)
        return 0
    from contract.mqtt import connect, wait_published

    topic = MachineRef(a.site, a.area, a.line, a.machine).topic("cmd")
    client = connect(_broker(a))
    try:
        if not wait_published([client.publish(topic, encode_command(fault, **params), qos=1)], 5.0):
            raise ServiceError(f"the MQTT broker at {a.broker} did not acknowledge the command")
    finally:
        client.disconnect()
        client.loop_stop()
    what = ", ".join(f"{k} {v:g}" for k, v in params.items())
    print(f"sent {fault}{' (' + what + ')' if what else ''} to {topic}; a listening simulator applies it now "
          f"(MQTT gives no answer: watch the machine's state)", flush=True)
    return 0


async def _inject_opcua(url: str, machine: str, fault: str, params: dict) -> str:
    from asyncua import Client, ua

    from simulators import faults
    from simulators.opcua import NAMESPACE

    method, args = faults.method_for(fault, params)
    client = Client(url, timeout=5)
    try:
        await client.connect()
    except (OSError, asyncio.TimeoutError) as e:
        raise ServiceError(f"cannot reach the OPC UA server {url}: {e or type(e).__name__} "
                           "(is fieldlab sim running? it prints each machine's URL)") from None
    try:
        try:
            ns = await client.get_namespace_index(NAMESPACE)
        except ValueError:
            raise ServiceError(f"{url} is not a fieldlab simulator (no namespace {NAMESPACE})") from None
        try:
            obj = await client.nodes.objects.get_child(f"{ns}:{machine}")
        except ua.UaStatusCodeError:
            names = [(await n.read_browse_name()) for n in await client.nodes.objects.get_children()]
            here = ", ".join(q.Name for q in names if q.NamespaceIndex == ns)
            raise ServiceError(f"no machine {machine!r} at {url} (this server has: {here or 'none'})") from None
        variants = [ua.Variant(float(v) if vt == "Double" else int(v), getattr(ua.VariantType, vt)) for vt, v in args]
        try:
            return await obj.call_method(f"{ns}:{method}", *variants)
        except ua.UaStatusCodeError as e:
            raise ServiceError(f"the simulator refused {method}: {e} (its log says why)") from None
    finally:
        await client.disconnect()


async def _wait_for_stop(duration: float | None, every: float | None = None, on_tick=None,
                         done: asyncio.Event | None = None) -> None:
    """Wait for Ctrl-C / SIGTERM, ``duration`` seconds or ``done``, calling ``on_tick`` every ``every`` seconds."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set() and not (done and done.is_set()):
            step = every or (0.1 if done else 3600.0)
            if deadline is not None:
                step = min(step, deadline - time.monotonic())
                if step <= 0:
                    return
            try:
                await asyncio.wait_for(stop.wait(), step)
            except asyncio.TimeoutError:
                if on_tick:
                    on_tick()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def site_config(path: str | None):
    from gateway.config import SiteConfig, load

    return load(path) if path else SiteConfig()


async def _sim(a) -> int:
    if a.sim_command == "inject":
        return await _inject(a)
    from simulators.opcua import SimClock, Simulation

    from .memory import steady_malloc

    steady_malloc()  # machines a fieldlab leaves running for days (fieldlab/memory.py)

    from simulators import scenario as scenarios

    from .demo import demo_machines

    if a.list_scenarios:
        for name in scenarios.available():
            s = scenarios.load(name)
            print(f"{name:32} {scenarios.format_time(s.duration_s):>7}  {s.description.splitlines()[0]}")
        return 0
    scen = scenarios.load(a.scenario) if a.scenario else None
    if scen and a.buffers:
        raise ServiceError("--buffers does not go with --scenario: a scenario file says whether its machines are a line")
    url = publish = None
    if a.broker or a.publish:
        from contract import MachineRef

        url = _broker(a) if a.broker else None
        publish = _broker(a, a.publish) if a.publish else None
        MachineRef(a.site, a.area, a.line, "m")  # check the names before anything starts
    clock = SimClock(time.time(), a.speed)
    machines = scen.machines(clock.t0) if scen else demo_machines(a.machines, clock.t0, a.seed, a.buffers)
    # a scenario stops at exactly its end (unless --duration says otherwise)
    end = clock.t0 + scen.duration_s if scen and a.duration is None else None
    if scen:
        print(scenarios.describe(scen), flush=True)
    sim = Simulation(machines, clock, host=a.host, base_port=a.opcua_port, modbus_base_port=a.modbus_port,
                     end=end, typed=True, shared=a.one_server)
    await sim.start()
    agents: list = []
    outbox = tempfile.TemporaryDirectory(prefix="fieldlab-sim-")  # the publishers' outboxes
    try:
        for name, ep in sim.endpoints.items():
            modbus = f"  modbus://{sim.modbus_endpoints[name]}" if a.modbus_port else ""
            print(f"{name}: {ep}{modbus}", flush=True)
        if url:
            await sim.listen(url, a.site, a.area, a.line)
            print(f"fault commands: fieldlab/v1/{a.site}/{a.area}/{a.line}/<machine>/cmd on {url}", flush=True)
        if publish:
            agents = await _publishers(sim, publish, a, outbox.name)
            print(f"publishing: fieldlab/v1/{a.site}/{a.area}/{a.line}/<machine>/... to {publish}", flush=True)
        sim.run()
        await _wait_for_stop(a.duration, done=sim.finished if end else None)
        await sim.freeze()
        for i, agent in enumerate(agents):  # hand over the last values, then let the outbox drain
            await agent.stop(settle_s=0.3 if i == 0 else 0.0)
        agents = []
        ledgers = sim.ledgers()
        for name, led in ledgers.items():
            print(f"{name}: good {led['good']}, reject {led['reject']}, run {led['run_s'] / 60:.1f} of "
                  f"{led['elapsed_s'] / 60:.1f} min, {led['breakdowns']} breakdowns")
        if scen:
            print(scenarios.describe_expected(scen))
        if a.ledger:
            with open(a.ledger, "w") as f:
                json.dump(ledgers, f, indent=2)
    finally:
        for agent in agents:
            await agent.stop()
        await sim.stop()
        outbox.cleanup()
    return 0


async def _publishers(sim, url, a, outbox: str) -> list:
    """One edge agent per machine, fed straight from the simulation (simulators.feed.SimulationTap)."""
    from contract import MachineRef
    from edge.agent import EdgeAgent
    from simulators.feed import SimulationTap

    agents = []
    for s in sim.servers:
        name = s.machine.spec.name
        agent = EdgeAgent(MachineRef(a.site, a.area, a.line, name), url, SimulationTap(s),
                          buffer=Path(outbox) / f"edge-{name}.db")
        await agent.start()
        agents.append(agent)
    return agents


async def _edge(a) -> int:
    from .memory import steady_malloc

    steady_malloc()  # an agent on a Pi runs for months: RSS must not creep by fragmentation (fieldlab/memory.py)
    from contract import MachineRef
    from contract.mqtt import BrokerUrl
    from edge import config as edge_config
    from edge.agent import EdgeAgent
    from edge.batcher import Batcher

    if a.edge_command == "discover":
        return await _discover(a)
    if a.config:
        cfg = edge_config.load(a.config)
        if a.broker:  # another address for the same broker identity (user, password, certificates)
            url, b = BrokerUrl.parse(a.broker), cfg.broker
            if b.tls and not url.tls:
                raise ServiceError(f"--broker {a.broker}: {cfg.path} connects with TLS (mqtts://); the password "
                                   "must not travel unencrypted: use an mqtts:// address")
            tls = {"ca_file": b.ca_file, "cert_file": b.cert_file, "key_file": b.key_file} if url.tls else {}
            cfg.broker = dataclasses.replace(url, username=url.username or b.username,
                                             password=url.password or b.password, **tls)
        source = _simulated_source(cfg) if cfg.source_type == "sim" else edge_config.build_source(cfg)
    elif a.opcua and a.object and a.broker:
        from edge.opcua import OpcUaSource  # only here: a Modbus or GPIO agent does not load asyncua (~28 MB)

        ref = MachineRef(a.site, a.area, a.line, a.machine or a.object)
        cfg = edge_config.EdgeConfig("(command line)", ref, BrokerUrl.parse(a.broker), "opcua", {"endpoint": a.opcua})
        source = OpcUaSource(a.opcua, a.object, a.namespace)
    else:
        raise ServiceError("give a mapping file with --config FILE (see docs/examples/edge-opcua.yaml), or "
                           "--opcua, --object and --broker for a fieldlab simulated machine")
    if a.check:
        print(_describe(cfg))
        return 0
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "fieldlab"
    buffer = a.buffer or cfg.buffer_path or state / f"edge-{cfg.machine.path.replace('/', '-')}.db"
    batcher = Batcher(cfg.state_model, cfg.state_map, cfg.encoding)
    names = {t.name for t in cfg.tags}
    if cfg.source_type in ("opcua", "modbus") and cfg.tags and "good" in names and "reject" not in names:
        batcher.assume("reject", 0)  # a machine without a reject counter: every part counted is good
    agent = EdgeAgent(cfg.machine, cfg.broker, source, buffer=buffer, flush_s=cfg.flush_s,
                      max_buffer_bytes=a.buffer_size or cfg.buffer_bytes, wait_for_broker=False,
                      heartbeat_s=cfg.heartbeat_s, batcher=batcher)
    await agent.start()
    print(f"edge agent for {cfg.machine.path}: {cfg.source_type} {_source_address(cfg)} -> {cfg.broker}", flush=True)
    try:
        await _wait_for_stop(a.duration)
    finally:
        await agent.stop()
    return 0


def _source_address(cfg) -> str:
    s = cfg.source
    return s.get("endpoint") or (f"{s['host']}:{s['port']}" if "host" in s else s.get("machine") or "pins")


def _simulated_source(cfg):
    from simulators.feed import MachineFeed

    s = cfg.source
    return MachineFeed(s["machine"], seed=s["seed"], speed=s["speed"])


def _describe(cfg) -> str:
    lines = [f"{cfg.path}: OK",
             f"  machine   {cfg.machine.path}  (topics {cfg.machine.topic('state').rsplit('/', 1)[0]}/...)",
             f"  broker    {cfg.broker}" + (f" as {cfg.broker.username}" if cfg.broker.username else "")
             + (" with password" if cfg.broker.password else ""),
             f"  source    {cfg.source_type} {_source_address(cfg)}",
             f"  outbox    {cfg.buffer_path or '(default path)'}, at most {cfg.buffer_bytes // 2**20} MB",
             f"  publish   every {cfg.flush_s:g} s, heartbeat every {cfg.heartbeat_s:g} s, telemetry as "
             f"{cfg.encoding}"]
    for t in cfg.tags:
        where = {k: v for k, v in t.options.items() if k not in ("register", "pin_spec", "light_spec")}
        lines.append(f"  tag       {t.name:<14} {where}" + (f" [{t.unit}]" if t.unit else "")
                     + (f" map {t.state_map}" if t.state_map else ""))
    return "\n".join(lines)


async def _discover(a) -> int:
    from edge import discover

    out = Path(a.output) if a.output else None
    if out and out.exists() and not a.force:
        raise ServiceError(f"{out} exists; choose another file or add --force")
    variables, namespaces = await discover.browse(a.url, username=a.username,
                                                  password=os.environ.get("OPCUA_PASSWORD"))
    text = discover.starter_file(a.url, variables, namespaces)
    if out:
        out.write_text(text)
        print(f"wrote {out}: {len(variables)} variables, {len(discover.guess(variables))} tags guessed; "
              f"check it, then: fieldlab edge --config {out} --check", flush=True)
    else:
        print(text, end="")
    return 0


async def _gateway(a) -> int:
    from gateway.service import Gateway

    from . import table
    from .memory import steady_malloc

    steady_malloc()  # a service that runs for weeks: RSS must not creep by fragmentation (fieldlab/memory.py)

    from gateway.http import HttpEndpoint

    if a.scope and a.site != "+":
        raise ServiceError("give either --site or --scope (a scope names its site: --scope SITE/AREA/LINE)")
    sinks = [sink] if (sink := _influx_sink(a)) else []
    gw = Gateway(_broker(a), site=a.site, config=site_config(a.config), sinks=sinks,
                 scope=a.scope, state_dir=_state_dir(a.state_dir), checkpoint_s=a.checkpoint_every,
                 client_id=a.client_id, max_machines=a.max_machines, mqtt_grace_s=a.mqtt_grace)
    http = HttpEndpoint(gw, a.http_host, a.http_port)
    await http.start()
    try:
        await gw.start()
        print(f"gateway reading {a.broker}; live dashboard on {http.url}/, REST API {http.url}/api/openapi.json, "
              f"metrics on {http.url}/metrics", flush=True)
        await _wait_for_stop(a.duration, every=5.0, on_tick=lambda: print(table.render(gw.rows) + "\n", flush=True))
    finally:
        await gw.stop()
        await http.stop()
    print(table.render(gw.rows))
    return 0


def _add_mqtt_login(p) -> None:
    p.add_argument("--password-file", metavar="FILE", help="the MQTT user's password (the user is in the --broker "
                   "URL); or set $FIELDLAB_MQTT_PASSWORD. Never put it in the URL: it would show in the process list")
    p.add_argument("--ca-file", metavar="FILE", help="with mqtts://: the CA certificate that signed the broker's "
                   "(default: the system's CAs)")
    p.add_argument("--cert-file", metavar="FILE", help="with mqtts://: a client certificate, if the broker wants one")
    p.add_argument("--key-file", metavar="FILE", help="with --cert-file: its private key (PEM, not encrypted)")


def _broker(a, address: str | None = None):
    """--broker (or another ``address``) with the login of _add_mqtt_login: password from a file or
    $FIELDLAB_MQTT_PASSWORD."""
    from contract.mqtt import BrokerUrl

    url = BrokerUrl.parse(address or a.broker, ca_file=getattr(a, "ca_file", None),
                          cert_file=getattr(a, "cert_file", None), key_file=getattr(a, "key_file", None))
    if url.password:
        raise ServiceError("--broker: do not put the password in the address (it shows in the process list); "
                           "use --password-file FILE or $FIELDLAB_MQTT_PASSWORD")
    from contract.secrets import read_secret

    password = read_secret("--password-file", getattr(a, "password_file", None), "FIELDLAB_MQTT_PASSWORD")
    if password and not url.username:
        raise ServiceError("a password needs a user: write it in the address, like mqtt://gateway@broker.local:1883")
    return dataclasses.replace(url, password=password) if password else url


def _state_dir(given: str | None) -> Path | None:
    """--state-dir: a directory, 'none' (no checkpoint), or by default the user's state directory."""
    if given is not None:
        return None if given.strip().lower() == "none" else Path(given).expanduser()
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "fieldlab"


def _influx_sink(a):
    """InfluxV1Sink for --influx [--influx-db], InfluxV2Sink for --influx with --influx-org and --influx-bucket;
    None without any --influx* option. Secrets only from the environment (the command line shows in the
    process list)."""
    from urllib.parse import unquote, urlsplit

    from gateway.influx import InfluxV1Sink, InfluxV2Sink

    if (a.influx, a.influx_db, a.influx_org, a.influx_bucket) == (None, None, None, None):
        return None
    v2 = a.influx_org is not None or a.influx_bucket is not None
    if not a.influx:
        given = "--influx-org/--influx-bucket" if v2 else "--influx-db"
        raise ServiceError(f"{given} without --influx: give the database's address too, like "
                           "--influx http://localhost:8086")
    u = urlsplit(a.influx)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ServiceError(f"--influx {a.influx!r}: write the database's address like http://localhost:8086")
    if u.password:
        raise ServiceError("--influx: do not put the password in the address (it shows in the process list); "
                           "set FIELDLAB_INFLUX_PASSWORD")
    base = f"{u.scheme}://{u.hostname}:{u.port or 8086}{u.path.rstrip('/')}"
    if not v2:
        return InfluxV1Sink(base, a.influx_db or "fieldlab", username=unquote(u.username) if u.username else None,
                            password=os.environ.get("FIELDLAB_INFLUX_PASSWORD"))
    if not a.influx_org or not a.influx_bucket:
        missing = "--influx-bucket" if a.influx_org else "--influx-org"
        raise ServiceError(f"InfluxDB 2.x needs both --influx-org and --influx-bucket; {missing} is missing")
    if a.influx_db is not None:
        raise ServiceError("--influx-db is for InfluxDB 1.x; with --influx-org and --influx-bucket the data goes "
                           "to the bucket")
    if u.username:
        raise ServiceError("--influx: InfluxDB 2.x signs in with an API token, not a user; remove the user from "
                           "the address and set FIELDLAB_INFLUX_TOKEN")
    token = os.environ.get("FIELDLAB_INFLUX_TOKEN", "").strip()
    if not token:
        raise ServiceError("InfluxDB 2.x needs an API token with write access to the bucket: set "
                           "FIELDLAB_INFLUX_TOKEN (never on the command line: it shows in the process list)")
    return InfluxV2Sink(base, a.influx_org, a.influx_bucket, token)


async def _oee(a) -> int:
    from gateway import eventlog

    from . import report

    cfg = site_config(a.config)
    log = eventlog.read(a.file)
    start = eventlog.parse_time(a.start, "--from") if a.start else log.first
    end = eventlog.parse_time(a.end, "--to") if a.end else log.last
    if end <= start:
        raise eventlog.EventLogError(f"the report ends ({end}) before it starts ({start}); check --from and --to")
    given = {"micro_stop_s": a.micro_stop, "micro_stops_as": a.micro_stops_as, "setup_as": a.setup_as,
             "startup_s": a.startup}
    conv = dataclasses.replace(cfg.conventions, **{k: v for k, v in given.items() if v is not None})
    if a.config:
        cal = cfg.calendar(start, end)
        log.planned += [(s, e, "site configuration") for s, e in zip(cal[0::2], cal[1::2])]
    rows = eventlog.report(log, start, end, a.every, conv)
    print(json.dumps(rows, indent=2) if a.json else report.render(rows))
    return 0


async def _demo(a) -> int:
    from .demo import Demo
    from .memory import steady_malloc

    steady_malloc()  # a fieldlab leaves the demo running for days (fieldlab/memory.py)

    return await Demo(machines=a.machines, speed=a.speed, duration=a.duration, broker=a.broker,
                      broker_impl=a.broker_impl, mqtt_port=a.mqtt_port, opcua_port=a.opcua_port,
                      seed=a.seed, ledger=a.ledger, config=site_config(a.config), http_port=a.http_port,
                      scenario=a.scenario, sinks=_demo_sinks(a.influx), line=a.buffers).run()


def _demo_sinks(url: str | None) -> list:
    """--influx of the demo: the gateway's 1.x sink to database fieldlab, with the gateway's checks."""
    sink = _influx_sink(argparse.Namespace(influx=url, influx_db=None, influx_org=None, influx_bucket=None))
    return [sink] if sink else []


async def _dashboards(a) -> int:
    from dashboards import build

    if a.dashboards_command == "build":
        if a.check:
            stale = build.stale(Path(a.out) if a.out else build.JSON_DIR)
            if stale:
                raise ServiceError(f"out of date: {', '.join(stale)}; regenerate with: {build.REGENERATE}")
            print("the dashboards' JSON is up to date")
            return 0
        for path, changed in build.write(Path(a.out) if a.out else build.JSON_DIR):
            print(f"{path}: {'written' if changed else 'unchanged'}")
        return 0
    from dashboards import push

    token = push.token_from(a.token, a.token_file)
    ds = None
    if not a.no_datasource:
        password = push.read_secret("--influx-password-file", a.influx_password_file, push.INFLUX_PASSWORD_ENV)
        if password and not a.influx_user:
            raise ServiceError("an InfluxDB password without --influx-user: give the user too")
        ds = push.Datasource(a.influx_url, a.influx_db, a.influx_user, password)
    await asyncio.to_thread(push.Pusher(a.url, token).push, ds)
    return 0


async def _deploy(a) -> int:
    from . import deploy

    plant = deploy.load_plant(a.plant)
    user = a.broker_user if a.broker_user is not None else deploy.default_broker_user(a.layout)
    r = deploy.generate(plant, Path(a.out), tls=a.tls, layout=a.layout, plain_bind=a.plain_bind,
                        rotate=tuple(a.rotate), broker_user=user)
    what = f"site {plant.site}" if plant.site else f"the central broker of {', '.join(plant.sites)}"
    print(f"secure MQTT set-up for {what} in {r.out} (keep it out of git)")
    for mqtt_user in r.users:
        print(f"  {mqtt_user:<24} {'new password' if mqtt_user in r.new_passwords else 'password kept'}"
              f"   {r.out / 'credentials' / mqtt_user}")
    print("broker files: " + ", ".join(str(f.relative_to(r.out)) for f in r.files))
    if a.tls:
        print(f"clients trust the broker with {r.out / 'ca.crt'} (copy it to each edge agent: ca_file)")
    if r.blocked:
        print(f"warning: the broker's user ({user}) cannot enter {r.blocked}, so it cannot read its files: write "
              f"them somewhere it can reach, e.g. --out /etc/fieldlab", file=sys.stderr)
    conf = r.out / "mosquitto" / "mosquitto.conf"
    if a.layout == "standalone":
        print(f"run the broker:  mosquitto -c {conf}")
    elif a.layout == "debian":
        print(f"use it:  sudo ln -sf {conf} /etc/mosquitto/conf.d/fieldlab.conf && sudo systemctl restart mosquitto")
    else:
        print(f"start the stack:  docker compose --env-file {r.out / 'compose.env'} up -d --build")
    if user is None and a.layout == "compose":
        print("the containers must be able to read them: run this as root, or give them to their users:  "
              f"sudo chown -R 1883:1883 {r.out / 'mosquitto'} && sudo chown -R {deploy.IMAGE_UID}:{deploy.IMAGE_UID} "
              f"{r.out / 'credentials'}")
    elif user is None:
        print("the broker must be able to read them: run this as root, or as the user the broker runs as, or "
              f"give them to that user:  sudo chown -R USER {r.out / 'mosquitto'}")
    return 0


EXIT_CONFIG = 78  # EX_CONFIG of sysexits.h: configuration error

COMMANDS = {"demo": _demo, "sim": _sim, "edge": _edge, "gateway": _gateway, "oee": _oee, "deploy": _deploy,
            "dashboards": _dashboards}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = args.command == "demo"  # the live table owns the terminal; only warnings interrupt it
    logs.setup(logging.INFO if args.verbose or not quiet else logging.WARNING)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except ConfigError as e:  # a mistake in a file: retrying will not help (the systemd unit stops trying)
        print(f"fieldlab {args.command}: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (ServiceError, ContractError, ValueError) as e:  # EventLogError is a ValueError
        print(f"fieldlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `fieldlab oee log.csv | head`: the reader has seen enough
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
