"""The ``chairside`` command: one entry point, one subcommand per service/tool.

Each subcommand lives in its own module exposing ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their subcommand is
used, so a broken optional dependency cannot stop the gateway from starting.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gateway": ("chairside.gateway_command", "run the MQTT → InfluxDB gateway with the alarm engine"),
    "simulate": ("chairside.sim.simulator", "run simulated chair boxes (real firmware, host layer)"),
    "demo": ("chairside.sim.demo", "start services, simulated chairs, gateway and a live view"),
    "pager": ("chairside.pager.command", "run the on-call pager"),
    "drill": ("chairside.staff.drill", "send a labelled emergency drill through the real chain"),
    "staff": ("chairside.staff.commands", "acknowledge an alarm, change a chair's limit, start/end a session"),
    "report": ("chairside.record.report_command", "a session's record as PDF (for the chart) and PNG"),
    "export": ("chairside.record.export_command", "a session as a FHIR R4 Bundle, to a file or a FHIR server"),
    "dashboards": ("chairside.install.grafana_push", "build or push the Grafana dashboards"),
    "provision": ("chairside.install.provision", "create, rotate or revoke a chair box's credentials"),
    "certs": ("chairside.install.pki", "create the clinic CA and server/box certificates"),
    "flash": ("chairside.install.flash", "build and flash the firmware to a board over USB"),
    "serial-bridge": ("chairside.ingest.serial_bridge", "bridge a USB-serial box to MQTT"),
    "install": ("chairside.install.server", "install or upgrade a clinic server (idempotent; --root DIR)"),
    "backup": ("chairside.install.backup", "back up InfluxDB and the state folders, or --restore one"),
    "doctor": ("chairside.install.doctor", "check the installed server: broker, InfluxDB, health, certs, clock, boxes"),
    "station": ("chairside.station.command", "the nurses' station web app and its staff accounts"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chairside",
        description="Chairside per-chair vital-signs monitoring (adjunct monitoring software; "
        "not a validated medical device).",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        child.set_defaults(_module=module_name)
        module = _try_import(module_name)
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(child)
    return parser


def _try_import(module_name: str) -> object | None:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        logging.getLogger("chairside.cli").debug("%s unavailable: %s", module_name, exc)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(args._module)
    result = module.run(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
