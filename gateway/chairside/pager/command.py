"""``chairside pager``: flags, the policy check, and running the pager until a signal."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from chairside import mqtt_auth

from .policy import PolicyError, levels_at, load_policy
from .service import Pager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``chairside pager``."""
    parser.add_argument("--policy", required=True, help="escalation policy JSON file")
    parser.add_argument("--broker-host", default="127.0.0.1", help="MQTT broker host")
    parser.add_argument("--broker-port", type=int, default=1883, help="MQTT broker port")
    parser.add_argument("--client-id", default="chairside-pager", help="MQTT client id")
    parser.add_argument(
        "--state", default="pager-state.json", help="durable state file (default: %(default)s)"
    )
    parser.add_argument("--ack-listen", default=None, help="ack page address (policy ack.listen)")
    parser.add_argument("--ack-port", type=int, default=None, help="ack page port (policy)")
    parser.add_argument("--base-url", default=None, help="public ack page URL (policy)")
    parser.add_argument(
        "--secret-file", default=None, help="file with the HMAC secret (else env ack.secret_env)"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the policy, show who is on call, exit"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level")
    mqtt_auth.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``chairside pager`` until SIGTERM/SIGINT; returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc)
        return 2
    if args.check:
        on_call_now = levels_at(policy, datetime.now(UTC))
        for level, person in enumerate(on_call_now, start=1):
            print(f"level {level}: {person.id} ({person.name})")
        print("policy OK")
        return 0
    if args.secret_file:
        secret = Path(args.secret_file).read_bytes().strip()
    else:
        secret = os.environ.get(policy.ack.secret_env, "").encode()
    if len(secret) < 16:
        print(f"ack secret missing or shorter than 16 bytes (set {policy.ack.secret_env})")
        return 2
    password = ""
    if policy.smtp is not None and policy.smtp.password_env:
        password = os.environ.get(policy.smtp.password_env, "")
    pager = Pager(
        policy,
        secret=secret,
        state_path=args.state,
        broker_host=args.broker_host,
        broker_port=args.broker_port,
        client_id=args.client_id,
        ack_listen=args.ack_listen,
        ack_port=args.ack_port,
        base_url=args.base_url,
        smtp_password=password,
    )
    try:
        mqtt_auth.apply(pager.client, getattr(args, "mqtt_credentials", None), getattr(args, "mqtt_ca", None))
    except mqtt_auth.CredentialsError as exc:
        print(exc)
        return 2
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pager.start()
    while not done.wait(1.0):
        pass
    pager.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chairside pager", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
