"""``chairside gateway``: options, settings from them, and running the service until a signal."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from chairside import contract, mqtt_auth
from chairside.config import GatewayConfig
from chairside.model import AlarmStage
from chairside.service import Gateway, default_alarm_stage
from chairside.store import influx

log = logging.getLogger("chairside.service")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-host", default="127.0.0.1", help="broker host")
    parser.add_argument("--mqtt-port", type=int, default=1883, help="broker port")
    parser.add_argument("--client-id", default="chairside-gateway", help="stable MQTT client id")
    parser.add_argument("--influx-url", default="http://127.0.0.1:8086", help="InfluxDB 1.x URL")
    parser.add_argument("--database", default=contract.influx_database(), help="database")
    parser.add_argument(
        "--influx-credentials", type=Path,
        default=Path(os.environ["CHAIRSIDE_INFLUX_CREDENTIALS"]) if os.environ.get("CHAIRSIDE_INFLUX_CREDENTIALS")
        else None,
        help="JSON file {user, password} of an InfluxDB user with WRITE on the database "
        "(written by `chairside install`; default $CHAIRSIDE_INFLUX_CREDENTIALS, which the "
        "installed unit's drop-in sets; never put the password on the command line)",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None,
        help="folder for frozen boot times, the disk spool and dead letters (must persist)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve /metrics and /health on 127.0.0.1:PORT"
    )
    parser.add_argument(
        "--spool-max-mb", type=float, default=256.0, help="bound of the disk spool, MiB"
    )
    parser.add_argument(
        "--site", default="gateway", help="site id for the gateway's own technical alarm events"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="alarm profile JSON (default: the adult profile)"
    )
    parser.add_argument(
        "--watermark-interval-ms", type=int, default=1000,
        help="publish a chair's stored watermark at most this often (docs/contract.md)",
    )
    mqtt_auth.add_arguments(parser)
    # The top-level parser may already define --log-level; don't override its value.
    parser.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, ...")


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        client_id=args.client_id,
        influx_url=args.influx_url,
        database=args.database,
        influx_credentials=getattr(args, "influx_credentials", None),
        state_dir=args.state_dir,
        metrics_port=args.metrics_port,
        spool_max_bytes=int(args.spool_max_mb * 1024 * 1024),
        site=args.site,
        watermark_interval_ms=args.watermark_interval_ms,
    )


def run(args: argparse.Namespace, alarm_stage: AlarmStage | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code."""
    level = str(getattr(args, "log_level", "INFO")).upper()
    logging.getLogger().setLevel(getattr(logging, level, logging.INFO))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    if alarm_stage is None:
        alarm_stage = default_alarm_stage(getattr(args, "profile", None))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            log.debug("cannot install handler for signal %d", sig)
    try:
        gateway = Gateway(config, alarm_stage)
    except influx.CredentialsError as exc:
        log.error("%s", exc)
        return 2
    try:
        gateway.use_broker_login(getattr(args, "mqtt_credentials", None), getattr(args, "mqtt_ca", None))
    except mqtt_auth.CredentialsError as exc:
        log.error("%s", exc)
        return 2
    gateway.start()
    log.info(
        "gateway running: mqtt %s:%d → %s/%s",
        config.mqtt_host,
        config.mqtt_port,
        config.influx_url,
        config.database,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        gateway.stop()
    return 0
