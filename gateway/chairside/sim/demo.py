"""``chairside demo``: everything on loopback, live in the terminal.

Starts a private Mosquitto and InfluxDB on free loopback ports, the gateway
with the clinical alarm engine, the pager (two demo on-call people, paged on
the MQTT pages topic), and four simulated chairs running the real
firmware (normal, desaturating, BP spike, probe off), then shows live
readings and alarm events until Ctrl-C (or ``--duration``), and stops
everything it started.

First impressions: the demo's patients are scripted (:data:`DEMO_SCRIPTS`) so
that within the first 30 s at normal speed a desaturation alarm, a BP alarm
and their pages appear: the desaturating chair falls to SpO2 80 % by ~14 s
(its first cuff waits for the automatic interval, because a cuff on the arm
holds SpO2 alarms), the BP chair's first cuff (started at once; the demo's
NIBP modules measure in :data:`DEMO_CUFF_MS`, a real one in 25-40 s) reads
226/124.  The screen keeps the broker's and InfluxDB's ports and an example
``chairside staff`` command on top, and fits 80 columns; times are seconds
of simulated time since the chairs started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chairside.config import GatewayConfig
from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.service import Gateway, default_alarm_stage
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.sim.simulator import Fleet, make_box, parse_chairs

log = logging.getLogger("chairside.sim.demo")

WIDTH: Final = 80
# patient scripts laid over the scenarios (host.patient.Patient.script):
# (simulated ms, field, value); None hands the field back to the scenario
DEMO_SCRIPTS: Final[dict[str, list[tuple[int, str, Any]]]] = {
    "desat": [(5_000, "spo2", 93), (8_000, "spo2", 89), (11_000, "spo2", 84), (14_000, "spo2", 80),
              (45_000, "spo2", 86), (55_000, "spo2", 92), (70_000, "spo2", None)],
    "bp_spike": [(0, "bp", (226, 124)), (150_000, "bp", None)],
}
# scenarios whose first cuff waits for the automatic interval (cuff_hold)
NO_FIRST_CUFF: Final = frozenset({"desat"})
DEMO_STATION_USER: Final = "demo lead"
DEMO_CUFF_MS: Final = (6_000, 14_000)
"""(inflate, measure) of the demo's simulated NIBP modules: a reading 20 s after the start"""


def fit(line: str, width: int = WIDTH) -> str:
    """``line`` cut to ``width`` columns, ending in "…" when cut."""
    return line if len(line) <= width else line[: width - 1] + "…"


@dataclass
class ChairView:
    spo2: Any = None
    pr: Any = None
    st: str = "-"
    bp: str = "-"
    bp_at: float | None = None
    state: str = "-"
    alarms: list[str] = field(default_factory=list)
    last_seen: float | None = None


class LiveView:
    """Subscribes to one site's topics and renders a per-chair table.

    ``elapsed()`` stamps events and pages (seconds since the chairs started)."""

    def __init__(self, port: int, site: str, elapsed: Callable[[], float] = lambda: 0.0,
                 header: list[str] | None = None) -> None:
        self.site = site
        self.elapsed = elapsed
        self.header = header or []
        self.chairs: dict[str, ChairView] = {}
        self.events: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chairside-demo-view")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"chairside/v1/{site}/#", qos=0)
        self.pages: list[str] = []
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 4 and parts[3] == "pages":
            self._on_page(bytes(msg.payload))
            return
        if len(parts) < 5:
            return
        chair, kind = parts[3], "/".join(parts[4:])
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            view = self.chairs.setdefault(chair, ChairView())
            now = time.monotonic()
            if kind == "vitals":
                view.spo2, view.pr, view.st, view.last_seen = data.get("spo2"), data.get("pr"), data.get("st"), now
            elif kind == "nibp":
                ok = data.get("st") == "ok"
                view.bp = f"{data.get('sys')}/{data.get('dia')}" if ok else f"error {data.get('err')}"
                view.bp_at = now
            elif kind == "status":
                view.state = data.get("state", "-")
            elif kind == "alarms/active":
                view.alarms = [f"{a['alarm']}({a['priority'][0].upper()})" for a in data.get("active", [])]
            elif kind == "alarms":
                stamp = f"{self.elapsed():4.0f}s"
                self.events.append(f"{stamp} chair {chair}: [{data.get('event')}] {data.get('text')}")
                self.events = self.events[-8:]

    def _on_page(self, payload: bytes) -> None:
        try:
            page = json.loads(payload)
        except ValueError:
            return
        if page.get("type") != "page":
            return
        with self._lock:
            stamp = f"{self.elapsed():4.0f}s"
            self.pages.append(f"{stamp} PAGE to {page.get('to')}: {page.get('text')}")
            self.pages = self.pages[-5:]

    def render(self, stored: int) -> str:
        now = time.monotonic()
        lines = [f"Chairside demo — site {self.site} — readings stored in InfluxDB: {stored}",
                 "(adjunct monitoring demo with simulated patients; Ctrl-C stops everything)",
                 *self.header, "",
                 f"{'chair':<7}{'box':<8}{'SpO2':>5}{'pulse':>6}  {'sensor':<10}{'last BP':<18}alarms"]
        with self._lock:
            for chair in sorted(self.chairs, key=lambda c: (len(c), c)):
                v = self.chairs[chair]
                stale = v.last_seen is None or now - v.last_seen > 5
                spo2 = "STALE" if stale else ("--" if v.spo2 is None else str(v.spo2))
                pr = "STALE" if stale else ("--" if v.pr is None else str(v.pr))
                age = "" if v.bp_at is None else f" {int(now - v.bp_at)}s ago"
                bp = v.bp[: max(0, 17 - len(age))] + age
                row = f"{chair[:6]:<7}{v.state[:7]:<8}{spo2:>5}{pr:>6}  {v.st[:9]:<10}{bp[:17]:<18}"
                lines.append(row + _alarm_cell(v.alarms, WIDTH - len(row)))
            lines += ["", "recent alarm events (s since start):"] + (self.events or ["  (none yet)"])
            lines += ["", "pages to on-call staff (MQTT pages topic):"] + (self.pages or ["  (none yet)"])
        return "\n".join(fit(line.rstrip()) for line in lines)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _alarm_cell(alarms: list[str], width: int) -> str:
    """As many alarms as fit in ``width``, then "+N" for the rest."""
    shown: list[str] = []
    for i, alarm in enumerate(alarms):
        rest = len(alarms) - i - 1
        candidate = " ".join([*shown, alarm]) + (f" +{rest}" if rest else "")
        if len(candidate) > width:
            return " ".join([*shown, f"+{len(alarms) - i}"]) if shown else fit(alarm, width)
        shown.append(alarm)
    return " ".join(shown)


DEMO_POLICY: dict[str, Any] = {
    "v": 1,
    "doc": "demo: two on-call people paged through the MQTT pages topic only",
    "timezone": "UTC",
    "people": {
        "dr-amber": {"name": "Dr Amber (on call)", "channels": [{"type": "mqtt"}]},
        "dr-blue": {"name": "Dr Blue (second on call)", "channels": [{"type": "mqtt"}]},
    },
    "rota": [{"name": "always", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
              "start": "00:00", "end": "00:00", "levels": ["dr-amber", "dr-blue"]}],
    "fallback": ["dr-amber", "dr-blue"],
    "priorities": {
        "high": {"page": True, "delay_s": 0, "ack_timeout_s": 60},
        "medium": {"page": True, "delay_s": 20, "ack_timeout_s": 120},
        "low": {"page": False, "ack_timeout_s": 600},
    },
    "max_rounds": 2,
    "flap_window_s": 60,
    "retry": {"attempts": 1, "backoff_s": 1, "factor": 2, "max_backoff_s": 2},
    "rate_limit": {"max_pages": 20, "window_s": 3600},
    "webhook": {"timeout_s": 2},
    "ack": {"base_url": "http://127.0.0.1:0", "listen": "127.0.0.1", "port": 0, "token_ttl_s": 3600,
            "secret_env": "CHAIRSIDE_PAGER_SECRET"},
}


def _start_pager(broker: Mosquitto, workdir: Path) -> Pager:
    """The real pager, paging two demo on-call people on the MQTT pages topic."""
    port = free_port()
    policy = dict(DEMO_POLICY)
    policy["ack"] = dict(DEMO_POLICY["ack"], base_url=f"http://127.0.0.1:{port}", port=port)
    pager = Pager(parse_policy(policy), secret=os.urandom(32), state_path=workdir / "pager-state.json",
                  broker_host="127.0.0.1", broker_port=broker.port, client_id="chairside-demo-pager",
                  ack_listen="127.0.0.1", ack_port=port, base_url=f"http://127.0.0.1:{port}")
    pager.start()
    return pager


def _start_station(site: str, broker: Mosquitto, influx: InfluxDB, workdir: Path) -> tuple[Any, str]:
    """The nurses' station on a free loopback port (plain HTTP: loopback only),
    with one demo account (role lead) and a fresh password; (server, password)."""
    from chairside.station.accounts import Accounts
    from chairside.station.command import StationConfig, StationServer

    password = secrets.token_urlsafe(9)
    users = workdir / "station-users.json"
    Accounts(users).add(DEMO_STATION_USER, password, "lead", int(time.time() * 1000))
    station = StationServer(StationConfig(
        site=site, users=users, mqtt_port=broker.port, host="127.0.0.1", port=0,
        influx_url=influx.url, audit_log=workdir / "station-audit.log"))
    station.start()
    return station, password


def _stored_count(influx: InfluxDB) -> int:
    try:
        result: Any = influx.query("SELECT count(seq) FROM vitals", "chairside")
        return int(result["results"][0]["series"][0]["values"][0][1])
    except (KeyError, IndexError, TypeError, ValueError, OSError):
        return 0


def _log_to_file(path: Path) -> None:
    """Service logs go to a file so they don't scroll the live view away."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", default="demo-clinic")
    parser.add_argument("--chairs", default="1:normal,2:desat,3:bp_spike,4:probe_off")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--nibp-interval", type=int, default=60, help="automatic NIBP interval, s")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data folder")


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="chairside-demo-"))
    started: list[Any] = []
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    _log_to_file(workdir / "demo.log")
    try:
        broker = Mosquitto(workdir=workdir / "mosquitto")
        broker.start()
        started.append(broker)
        influx = InfluxDB(workdir=workdir / "influxd")
        influx.start()
        started.append(influx)
        ports = f"Mosquitto 127.0.0.1:{broker.port}   InfluxDB {influx.url}"
        print(f"{ports} (data in {workdir})", flush=True)
        gateway = Gateway(
            GatewayConfig(mqtt_port=broker.port, influx_url=influx.url, state_dir=workdir / "gateway"),
            default_alarm_stage(),
        )
        gateway.start()
        started.append(gateway)
        started.append(_start_pager(broker, workdir))
        station, station_password = _start_station(args.site, broker, influx, workdir)
        started.append(station)
        chairs = parse_chairs(args.chairs)
        boxes = [
            make_box(args.site, chair, scenario, "127.0.0.1", broker.port, seed=i,
                     nibp_interval_s=args.nibp_interval, epoch_at_boot_ms=int(time.time() * 1000),
                     fs_dir=str(workdir / f"box-{chair}"))
            for i, (chair, scenario) in enumerate(chairs)
        ]
        for box, (_, scenario) in zip(boxes, chairs, strict=True):
            box.patient.script(DEMO_SCRIPTS.get(scenario, []))
            box.nibp_sim.inflate_ms, box.nibp_sim.measure_ms = DEMO_CUFF_MS
            if scenario not in NO_FIRST_CUFF:  # a first blood pressure right away, then every --nibp-interval
                box.app.nibp.start(box.clock.now_ms())
        fleet = Fleet(boxes, speed=args.speed)
        example = next((c for c, s in chairs if s == "desat"), chairs[0][0])
        header = [fit(f"{ports}   data: {workdir}"),
                  f"nurses' station: {station.url}  login: {DEMO_STATION_USER} / {station_password}",
                  f"try: chairside staff ack --site {args.site} --mqtt-port {broker.port} \\",
                  f"       --chair {example} --alarm spo2_critical --by YOUR-NAME"]
        view = LiveView(broker.port, args.site, elapsed=lambda: fleet.sim_ms / 1000, header=header)
        started.append(view)
        fleet.start()
        started.append(fleet)
        interactive = sys.stdout.isatty()
        end = None if args.duration is None else time.monotonic() + args.duration
        while not done.wait(1.0):
            screen = view.render(_stored_count(influx))
            print("\033[2J\033[H" + screen if interactive else screen + "\n", flush=True)
            if end is not None and time.monotonic() >= end:
                break
    finally:
        for thing in reversed(started):
            try:
                thing.stop() if hasattr(thing, "stop") else thing.close()
            except Exception:  # keep stopping the rest
                log.exception("stopping %s failed", type(thing).__name__)
        if not getattr(args, "keep_data", False):
            shutil.rmtree(workdir, ignore_errors=True)
        print("demo stopped; everything it started is stopped.")
    return 0
