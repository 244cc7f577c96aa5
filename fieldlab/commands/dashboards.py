"""``fieldlab dashboards``: write the Grafana dashboards' JSON, or upload them (dashboards/)."""
from __future__ import annotations

import argparse

from ._common import add_command


def add_parser(sub) -> None:
    db = add_command(sub, "dashboards", "Grafana dashboards: write their JSON, or upload them to a Grafana",
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


async def run(a) -> int:
    import asyncio
    from pathlib import Path

    from contract.errors import ServiceError
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
