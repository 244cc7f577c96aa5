"""``fieldlab demo``: the whole chain on this computer, with a live OEE table (fieldlab/demo.py)."""
from __future__ import annotations

import argparse

from ._common import LINE_HELP, _count, _influx_sink, _port, _positive, add_command, site_config


def add_parser(sub) -> None:
    d = add_command(sub, "demo", "run the whole chain: machines, edge agents, broker, gateway, live OEE table",
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
                   "scripted faults; stops at its end unless --duration (--list-scenarios)")
    d.add_argument("--list-scenarios", action="store_true", help="list the shipped scenarios and stop")
    d.add_argument("--buffers", metavar="CAP[,CAP...]", help=LINE_HELP)
    d.add_argument("--ledger", metavar="FILE", help="at the end, write what the simulated machines really "
                   "did (time per state, good and reject parts) to this JSON file, to check the OEE by hand")
    d.add_argument("--presenter", action="store_true",
                   help="presenter mode for a course: a big-screen page /presenter with the simulated clock, the "
                        "scenario's next events, fault buttons per machine and a start button per scenario; log in "
                        "with the link it prints (docs/web.md)")
    d.add_argument("--influx", metavar="URL", help="also store everything in this InfluxDB 1.x (database fieldlab), "
                   "e.g. http://localhost:8086, for the Grafana dashboards (docs/dashboards.md)")


async def run(a) -> int:
    if a.list_scenarios:
        from simulators.scenario import listing

        print(listing())
        return 0
    from ..demo import Demo
    from ..memory import steady_malloc

    steady_malloc()  # a fieldlab leaves the demo running for days (fieldlab/memory.py)

    return await Demo(machines=a.machines, speed=a.speed, duration=a.duration, broker=a.broker,
                      broker_impl=a.broker_impl, mqtt_port=a.mqtt_port, opcua_port=a.opcua_port,
                      seed=a.seed, ledger=a.ledger, config=site_config(a.config), http_port=a.http_port,
                      scenario=a.scenario, sinks=_demo_sinks(a.influx), line=a.buffers,
                      presenter=a.presenter).run()


def _demo_sinks(url: str | None) -> list:
    """--influx of the demo: the gateway's 1.x sink to database fieldlab, with the gateway's checks."""
    sink = _influx_sink(argparse.Namespace(influx=url, influx_db=None, influx_org=None, influx_bucket=None))
    return [sink] if sink else []
