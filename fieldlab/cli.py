"""The ``fieldlab`` command line. Help texts are written for trainers, not programmers.

Each command is a module in fieldlab/commands/ (``add_parser``, ``run``); this file lists them in order and
turns what goes wrong into exit codes. Nothing heavy is imported before the arguments are parsed."""
from __future__ import annotations

import argparse
import logging
import sys

from . import __version__, logs
from .commands import dashboards, demo, deploy, edge, gateway, oee, sim
from .commands._common import (
    LINE_HELP, _add_levels, _add_mqtt_login, _broker, _count, _duration, _influx_sink, _port, _positive, _size,
    _state_dir, _wait_for_stop, site_config,
)
from .commands.edge import _simulated_source

# the names that lived here before the commands had their own modules: tests and deploy checks use them
__all__ = ["COMMANDS", "EXIT_CONFIG", "LINE_HELP", "_add_levels", "_add_mqtt_login", "_broker", "_count", "_duration",
           "_influx_sink", "_port", "_positive", "_simulated_source", "_size", "_state_dir", "_wait_for_stop",
           "build_parser", "main", "site_config"]

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

#: the commands in the order 'fieldlab --help' lists them
COMMANDS = {"demo": demo, "sim": sim, "edge": edge, "oee": oee, "gateway": gateway, "deploy": deploy,
            "dashboards": dashboards}

EXIT_CONFIG = 78  # EX_CONFIG of sysexits.h: configuration error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fieldlab", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fieldlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import asyncio

    from contract.errors import ContractError, ServiceError
    from contract.yamlfile import ConfigError

    quiet = args.command == "demo"  # the live table owns the terminal; only warnings interrupt it
    restore_logging = logs.setup(logging.INFO if args.verbose or not quiet else logging.WARNING)
    try:
        return asyncio.run(COMMANDS[args.command].run(args))
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
    except OSError as e:  # a directory it may not write, a full disk: one line, not a traceback
        where = f" {e.filename}" if e.filename else ""
        print(f"fieldlab {args.command}: error: cannot use{where}: {e.strerror or e} (check the path, the free "
              "space and who may write there; --state-dir and --buffer choose other places)", file=sys.stderr)
        return 2
    finally:  # main() run in-process (the tests) leaves the root logger as it found it
        if restore_logging:  # None where a test replaced logs.setup
            restore_logging()


if __name__ == "__main__":
    sys.exit(main())
