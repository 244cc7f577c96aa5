"""``fieldlab deploy``: the files of a secure Mosquitto for a plant (fieldlab/deploy.py)."""
from __future__ import annotations

from ._common import add_command


def add_parser(sub) -> None:
    dp = add_command(sub, "deploy", "make a secure MQTT broker set-up: one password and ACL per edge agent, TLS",
                     "Generate the files of a secure Mosquitto for a plant from a list of machines\n"
                     "(see deploy/plant.example.yaml): one MQTT user and random password per edge\n"
                     "agent, an ACL so that an agent may publish only its own machine's data, users\n"
                     "for the gateway, viewers, operators and simulators, mosquitto.conf without\n"
                     "anonymous access, and with --tls a CA and a server certificate; a web login\n"
                     "PIN per operator and presenter (web/). Run it again after changing the plant\n"
                     "file: existing passwords, PINs and certificates are kept.\n\n"
                     "The output directory holds secrets: keep it out of git (./secrets is ignored).\n\n"
                     "examples:\n"
                     "  fieldlab deploy deploy/plant.example.yaml --tls\n"
                     "  mosquitto -c secrets/mosquitto/mosquitto.conf          run the broker with it\n"
                     "  fieldlab deploy plant.yaml --layout compose --tls      for docker-compose.yml\n"
                     "  sudo fieldlab deploy plant.yaml --layout pi            broker, gateway and edge agents on\n"
                     "                                                         one Raspberry Pi (docs/one-pi.md)\n"
                     "  fieldlab deploy plant.yaml --rotate edge-cnc-01        a new password for one agent")
    dp.add_argument("plant", metavar="PLANT.yaml", help="the site (its machines) or the central broker (its sites)")
    dp.add_argument("--out", metavar="DIR", help="where to write (default ./secrets; with --layout pi /etc/fieldlab)")
    dp.add_argument("--tls", action="store_true", help="add a TLS listener on 8883 with a CA and a server "
                    "certificate for broker.hostnames (made with openssl)")
    dp.add_argument("--layout", choices=("standalone", "debian", "compose", "pi"), default="standalone",
                    help="standalone: a complete mosquitto.conf naming the files where they are; debian: a drop-in "
                         "for /etc/mosquitto/conf.d of Debian's mosquitto package; compose: for docker-compose.yml, "
                         "which mounts them at /mosquitto/config; pi: everything on one Raspberry Pi: the debian "
                         "drop-in plus systemd units for the gateway and an edge agent per machine, starter mapping "
                         "files and the dashboard's login, as the plant file's pi: section says (TLS unless "
                         "pi.tls: false; docs/one-pi.md) (default standalone)")
    dp.add_argument("--plain-bind", metavar="ADDRESS", help="address of the unencrypted listener on 1883 (default "
                    "0.0.0.0, with --tls 127.0.0.1; compose: 0.0.0.0 inside the stack's network)")
    dp.add_argument("--rotate", action="append", default=[], metavar="USER", help="give this user a new password "
                    "(repeat for more)")
    dp.add_argument("--broker-user", metavar="USER", help="the user the broker runs as, who must read its files "
                    "(default, when run as root: mosquitto, the user of Debian's package; with --layout compose "
                    "1883, the container's)")


async def run(a) -> int:
    import os
    import sys
    from pathlib import Path

    from contract.errors import ServiceError

    from .. import deploy

    plant = deploy.load_plant(a.plant)
    pi = a.layout == "pi"
    if pi and plant.site is None:
        raise ServiceError(f"--layout pi: {a.plant} is a central broker (sites:); one Pi runs one site's machines")
    if pi and a.plain_bind:
        raise ServiceError("--plain-bind: with --layout pi the Pi's own services use plain MQTT on 127.0.0.1 and the "
                           "plant file's pi.tls decides about the network (false: plain on every interface)")
    tls = a.tls or pi and plant.pi.tls  # --layout pi: plain MQTT for the network only where the plant file says so
    layout = "debian" if pi else a.layout  # the Pi's broker is Debian's mosquitto package with a drop-in
    out = Path(a.out or ("/etc/fieldlab" if pi else "secrets"))
    user = a.broker_user if a.broker_user is not None else deploy.default_broker_user(layout)
    r = deploy.generate(plant, out, tls=tls, layout=layout, plain_bind=a.plain_bind,
                        rotate=tuple(a.rotate), broker_user=user)
    what = f"site {plant.site}" if plant.site else f"the central broker of {', '.join(plant.sites)}"
    print(f"secure MQTT set-up for {what} in {r.out} (keep it out of git)")
    for mqtt_user in r.users:
        print(f"  {mqtt_user:<24} {'new password' if mqtt_user in r.new_passwords else 'password kept'}"
              f"   {r.out / 'credentials' / mqtt_user}")
    print("broker files: " + ", ".join(str(f.relative_to(r.out)) for f in r.files))
    if tls:
        print(f"clients trust the broker with {r.out / 'ca.crt'} (copy it to each edge agent: ca_file)")
    if r.blocked:
        print(f"warning: the broker's user ({user}) cannot enter {r.blocked}, so it cannot read its files: write "
              f"them somewhere it can reach, e.g. --out /etc/fieldlab", file=sys.stderr)
    conf = r.out / "mosquitto" / "mosquitto.conf"
    if pi:
        return _pi(plant, r.out, conf)
    _web_login(plant, r.out, deploy.IMAGE_UID if a.layout == "compose" and os.geteuid() == 0 else None)
    if a.layout == "standalone":
        print(f"run the broker:  mosquitto -c {conf}")
    elif a.layout == "debian":
        print(f"use it:  sudo ln -sf {conf} /etc/mosquitto/conf.d/fieldlab.conf && sudo systemctl restart mosquitto")
    else:
        print(f"start the stack:  docker compose --env-file {r.out / 'compose.env'} up -d --build")
    if user is None and a.layout == "compose":
        print("the containers must be able to read them: run this as root, or give them to their users:  "
              f"sudo chown -R 1883:1883 {r.out / 'mosquitto'} && sudo chown -R {deploy.IMAGE_UID}:{deploy.IMAGE_UID} "
              f"{r.out / 'credentials'} {r.out / 'web'}")
    elif user is None:
        print("the broker must be able to read them: run this as root, or as the user the broker runs as, or "
              f"give them to that user:  sudo chown -R USER {r.out / 'mosquitto'}")
    return 0


def _pins(plant, out, new: list[str]) -> None:
    """One line per web user: its role(s), whether its PIN is new, where the PIN is."""
    for user in plant.operators + [u for u in plant.presenters if u not in plant.operators]:
        role = "+".join(r for r, has in (("presenter", user in plant.presenters),
                                         ("operator", user in plant.operators)) if has)
        print(f"  {user:<24} {'new PIN' if user in new else 'PIN kept'} ({role})   {out / 'web' / 'pins' / user}")


def _web_login(plant, out, group: int | None) -> None:
    """The web app's logins (every layout): a PIN per operator and presenter of the plant file and the signing key
    (``group``: the compose stack's gateway container reads the users file and the key with that gid)."""
    from .. import deploy

    _pins(plant, out, deploy.web_login(plant, out, group))
    print(f"web logins (operator terminal, presenter mode): the gateway reads them with "
          f"FIELDLAB_WEB_USERS={out / 'web' / 'users'} FIELDLAB_WEB_KEY_FILE={out / 'web' / 'key'} "
          "(docs/web.md; docker-compose.yml and deploy/systemd/fieldlab-gateway.service do)")
    if plant.presenters:
        print("presenters: run the gateway with --presenter (the compose stack and the systemd unit take it from "
              f"{deploy.PRESENTER_ENV} in compose.env or {out / 'web' / 'gateway.env'})")


def _pi(plant, out, conf) -> int:
    """--layout pi: the units, starter mapping files and web login next to the broker's files; how to start them."""
    from .. import onepi

    r = onepi.generate(plant, out)
    for f in r.mappings:
        print(f"  {f.stem:<24} {'starter mapping file' if f in r.new_mappings else 'mapping file kept'}   {f}")
    _pins(plant, out, r.new_pins)
    if not plant.operators and not plant.presenters:
        import sys

        print("warning: no operators: in the plant file, so nobody can log in to the dashboard: add operators: "
              "[NAME] and run this again", file=sys.stderr)
    agents = " ".join(u.name.removesuffix(".service") for u in r.units if u.name != "fieldlab-gateway.service")
    print("systemd units: " + ", ".join(str(u.relative_to(out)) for u in r.units))
    print("install and start them (docs/one-pi.md, steps 4 and 5):\n"
          f"  sudo ln -sf {conf} /etc/mosquitto/conf.d/fieldlab.conf && sudo systemctl restart mosquitto\n"
          f"  sudo cp {out / 'systemd'}/*.service /etc/systemd/system/ && sudo systemctl daemon-reload\n"
          "  sudo systemctl enable --now fieldlab-gateway\n"
          f"  sudo systemctl enable --now {agents}   # once the machine (or fieldlab sim) runs; until then they "
          "retry every 5 s")
    print(f"dashboard: http://THIS-PI:{plant.pi.http_port}/  (log in at /login as an operator with the PIN in "
          f"{out / 'web' / 'pins'})")
    if plant.presenters:
        print(f"presenter mode: http://THIS-PI:{plant.pi.http_port}/presenter  (log in at /login as a presenter)")
    return 0
