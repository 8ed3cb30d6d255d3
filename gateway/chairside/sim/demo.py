"""``chairside demo``: everything on loopback, live in the terminal.

Starts a private Mosquitto and InfluxDB on free loopback ports, the gateway
with the clinical alarm engine, the pager (two demo on-call people, paged on
the MQTT pages topic), and four simulated chairs running the real
firmware (normal, desaturating, BP spike, probe off), then shows live
readings and alarm events until Ctrl-C (or ``--duration``), and stops
everything it started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chairside.config import GatewayConfig
from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.service import Gateway, default_alarm_stage
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.sim.simulator import Fleet, make_box, parse_chairs

log = logging.getLogger("chairside.sim.demo")


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
    """Subscribes to one site's topics and renders a per-chair table."""

    def __init__(self, port: int, site: str) -> None:
        self.site = site
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
                stamp = time.strftime("%H:%M:%S")
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
            stamp = time.strftime("%H:%M:%S")
            self.pages.append(f"{stamp} PAGE to {page.get('to')}: {page.get('text')}")
            self.pages = self.pages[-5:]

    def render(self, stored: int) -> str:
        now = time.monotonic()
        lines = [f"Chairside demo — site {self.site} — readings stored in InfluxDB: {stored}",
                 "(adjunct monitoring demo with simulated patients; Ctrl-C stops everything)", "",
                 f"{'chair':<6}{'box':<9}{'SpO2':>6}{'pulse':>7}  {'sensor':<11}{'last BP':<16}alarms"]
        with self._lock:
            for chair in sorted(self.chairs, key=lambda c: (len(c), c)):
                v = self.chairs[chair]
                stale = v.last_seen is None or now - v.last_seen > 5
                spo2 = "STALE" if stale else ("--" if v.spo2 is None else str(v.spo2))
                pr = "STALE" if stale else ("--" if v.pr is None else str(v.pr))
                bp = v.bp if v.bp_at is None else f"{v.bp} ({int(now - v.bp_at)}s ago)"
                lines.append(f"{chair:<6}{v.state:<9}{spo2:>6}{pr:>7}  {v.st:<11}{bp:<16}{' '.join(v.alarms)}")
            lines += ["", "recent alarm events:"] + (self.events or ["  (none yet)"])
            lines += ["", "pages to on-call staff (MQTT pages topic):"] + (self.pages or ["  (none yet)"])
        return "\n".join(lines)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


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
        print(f"Mosquitto on 127.0.0.1:{broker.port}, InfluxDB on {influx.url} (data in {workdir})")
        gateway = Gateway(
            GatewayConfig(mqtt_port=broker.port, influx_url=influx.url, state_dir=workdir / "gateway"),
            default_alarm_stage(),
        )
        gateway.start()
        started.append(gateway)
        started.append(_start_pager(broker, workdir))
        view = LiveView(broker.port, args.site)
        started.append(view)
        boxes = [
            make_box(args.site, chair, scenario, "127.0.0.1", broker.port, seed=i,
                     nibp_interval_s=args.nibp_interval, epoch_at_boot_ms=int(time.time() * 1000),
                     fs_dir=str(workdir / f"box-{chair}"))
            for i, (chair, scenario) in enumerate(parse_chairs(args.chairs))
        ]
        for box in boxes:  # a first blood pressure right away, then every --nibp-interval
            box.app.nibp.start(box.clock.now_ms())
        fleet = Fleet(boxes, speed=args.speed)
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
