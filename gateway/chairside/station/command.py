"""``chairside station``: the nurses' station web app, and its staff accounts.

    chairside station serve --site clinic1 --users /etc/chairside/station-users.json \\
        --tls-cert pki/server.crt --tls-key pki/server.key --grafana-url https://grafana.clinic.lan \\
        --influx-url http://127.0.0.1:8086 --influx-credentials /etc/chairside/influx/grafana.json
    chairside station user add "RN Jones" --role nurse --users /etc/chairside/station-users.json
    chairside station user list --users ...

``serve`` listens on ``--host``/``--port`` (default 0.0.0.0:8443) with TLS
when ``--tls-cert``/``--tls-key`` are given (the clinic CA's server
certificate: ``chairside certs --pki-dir DIR server --host station.clinic.lan``);
without them it serves plain HTTP and says so on its log (tests and a demo on
loopback only).  ``user add`` asks for the password twice on the terminal, or
reads one line from standard input with ``--password-stdin`` (the installer).

``--influx-url`` (with ``--database`` and ``--influx-credentials``, a
read-only login is enough) turns on the session record download
(``/chair/<chair>/report``, the PDF of ``chairside report``); ``--no-records``
turns it off.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from chairside import contract, mqtt_auth
from chairside.alarms.profile import DEFAULT_PROFILE_PATH, load_profile
from chairside.record.query import InfluxReader
from chairside.store.influx import read_credentials

from .accounts import ROLES, AccountError, Accounts
from .board import Board
from .feed import Feed
from .report import RecordSource
from .web import Station, server_ssl

log = logging.getLogger("chairside.station")
START_TIMEOUT_S = 20.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class StationConfig:
    site: str
    users: Path
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_credentials: Path | None = None
    mqtt_ca: Path | None = None
    host: str = "0.0.0.0"
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    grafana_url: str | None = None
    profile: Path = DEFAULT_PROFILE_PATH
    audit_log: Path | None = None
    answer_timeout_s: float = 10.0
    heartbeat_s: float = 5.0
    influx_url: str | None = None
    """None: no session record download"""
    database: str = contract.influx_database()
    influx_credentials: Path | None = None
    report_tz: str = "UTC"
    influx_timeout_s: float = 20.0

    def records(self) -> RecordSource | None:
        """The session record source (raises ValueError: credentials file, time zone)."""
        if self.influx_url is None:
            return None
        try:
            tz = ZoneInfo(self.report_tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"--report-tz {self.report_tz!r}: unknown time zone (e.g. UTC, Europe/London)") from exc
        login = read_credentials(self.influx_credentials) if self.influx_credentials is not None else None
        return RecordSource(InfluxReader(self.influx_url, self.database, self.influx_timeout_s, login), tz)


class StationServer:
    """The station in a thread of its own (event loop + MQTT feed): ``start``, ``url``, ``stop``."""

    def __init__(self, config: StationConfig, *, clock: Callable[[], int] = wall_ms,
                 accounts: Accounts | None = None) -> None:
        self.config = config
        self.clock = clock
        board = Board(config.site, load_profile(config.profile), config.grafana_url)
        self.feed = Feed(board, clock, lambda _chair: None, host=config.mqtt_host, port=config.mqtt_port,
                         credentials=config.mqtt_credentials, ca_file=config.mqtt_ca)
        self.accounts = accounts or Accounts(config.users)
        tls = config.tls_cert is not None and config.tls_key is not None
        self.station = Station(board, self.feed, self.accounts, clock, secure_cookies=tls,
                               audit_path=config.audit_log, answer_timeout_s=config.answer_timeout_s,
                               heartbeat_s=config.heartbeat_s, records=config.records())
        self.ssl = server_ssl(config.tls_cert, config.tls_key) if tls else None  # type: ignore[arg-type]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"{'https' if self.ssl else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        self.feed.start()
        self._thread = threading.Thread(target=self._run, name="station-web", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the station did not start listening in time")
        if self._error is not None:
            raise RuntimeError(f"the station could not start: {self._error}") from self._error
        if self.ssl is None:
            log.warning("station serving plain HTTP on %s: use --tls-cert/--tls-key on a clinic network", self.url)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.station.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=self.ssl)
        await site.start()
        addresses = runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self.feed.stop()


# ---- command line -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="station_command", required=True, metavar="ACTION")
    serve = sub.add_parser("serve", help="run the nurses' station web app")
    serve.add_argument("--site", required=True)
    serve.add_argument("--users", type=Path, required=True, help="the accounts file (`station user add`)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--tls-cert", type=Path, default=None, help="server certificate from the clinic CA")
    serve.add_argument("--tls-key", type=Path, default=None)
    serve.add_argument("--grafana-url", default=None, help="Grafana's base URL: each tile links to its chair")
    serve.add_argument("--profile", type=Path, default=DEFAULT_PROFILE_PATH, help="alarm profile (alarm words)")
    serve.add_argument("--audit-log", type=Path, default=None, help="JSON-lines file of every action")
    serve.add_argument("--influx-url", default="http://127.0.0.1:8086",
                       help="InfluxDB 1.x URL: the session record PDFs are read from there")
    serve.add_argument("--no-records", action="store_true", help="no session record download")
    serve.add_argument("--database", default=contract.influx_database())
    serve.add_argument("--influx-credentials", type=Path, default=None,
                       help="JSON file {user, password} of an InfluxDB user with READ on the database "
                       "(an installed server: /etc/chairside/influx/grafana.json)")
    serve.add_argument("--report-tz", default="UTC", help="time zone of the record's printed times")
    serve.add_argument("--mqtt-host", default="127.0.0.1")
    serve.add_argument("--mqtt-port", type=int, default=1883)
    mqtt_auth.add_arguments(serve)
    user = sub.add_parser("user", help="manage staff accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = user_sub.add_parser("add", help="create an account (or reset it with --replace)")
    add.add_argument("name", help="the name recorded on every action, e.g. 'RN Jones'")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--users", type=Path, required=True)
    add.add_argument("--replace", action="store_true")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    listing = user_sub.add_parser("list", help="list accounts and roles")
    listing.add_argument("--users", type=Path, required=True)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    if args.station_command == "user":
        accounts = Accounts(args.users)
        try:
            if args.user_command == "list":
                for name, role in accounts.names():
                    print(f"{name}\t{role}")
                return 0
            user = accounts.add(args.name, _password(args), args.role, wall_ms(), replace=args.replace)
        except AccountError as exc:
            print(f"chairside station user: {exc}")
            return 1
        print(f"account {user.name!r} ({user.role}) saved in {args.users}")
        return 0
    if (args.tls_cert is None) != (args.tls_key is None):
        print("chairside station: give both --tls-cert and --tls-key")
        return 2
    config = StationConfig(
        site=args.site, users=args.users, mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port,
        mqtt_credentials=args.mqtt_credentials, mqtt_ca=args.mqtt_ca, host=args.host, port=args.port,
        tls_cert=args.tls_cert, tls_key=args.tls_key, grafana_url=args.grafana_url, profile=args.profile,
        audit_log=args.audit_log, influx_url=None if args.no_records else args.influx_url,
        database=args.database, influx_credentials=args.influx_credentials, report_tz=args.report_tz)
    try:
        server = StationServer(config)
        server.start()
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: mqtt_auth's and InfluxDB's CredentialsError
        print(f"chairside station: {exc}")
        return 1
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: done.set())
    log.warning("station for site %s on %s", config.site, server.url)
    done.wait()
    server.stop()
    return 0
