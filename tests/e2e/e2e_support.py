"""End-to-end helpers: the real gateway (in this process) between a real
Mosquitto and a real InfluxDB, an MQTT observer, InfluxQL row helpers, a
local webhook receiver and a deadline wait."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chairside.config import GatewayConfig
from chairside.service import Gateway, default_alarm_stage
from chairside.sim.services import InfluxDB, Mosquitto


class Observer:
    """A plain paho subscriber recording every message it sees."""

    def __init__(self, port: int, topic: str = "chairside/#") -> None:
        self.messages: list[tuple[str, bytes, float]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self._ready.wait(5), "observer could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), time.monotonic()))

    def payloads(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, suffix: str, predicate: Any = lambda p: True, timeout: float = 10.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for payload in self.payloads(suffix):
                if predicate(payload):
                    return payload
            time.sleep(0.02)
        raise AssertionError(f"no message on *{suffix} matching within {timeout} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class SimWallClock:
    """The gateway's clock in accelerated-time tests: the simulated world's
    wall time (what NTP would say), shared with the simulated boxes."""

    def __init__(self, sim_clock: Any) -> None:
        self.sim_clock = sim_clock

    def now_ms(self) -> int:
        return int(self.sim_clock.true_epoch_ms())


def start_gateway(
    mosquitto: Mosquitto, influxdb: InfluxDB, state_dir: Path, clock: Any = None, **overrides: Any
) -> Gateway:
    config = GatewayConfig(
        mqtt_port=mosquitto.port,
        influx_url=influxdb.url,
        state_dir=state_dir,
        **overrides,
    )
    gateway = Gateway(config, default_alarm_stage(), clock=clock)
    gateway.start()
    assert gateway.wait_subscribed(10), "gateway did not subscribe"
    return gateway


def query_rows(influxdb: InfluxDB, q: str) -> list[dict[str, Any]]:
    """Run InfluxQL; rows as dicts (with 'time' in ms), all series concatenated."""
    result: Any = influxdb.query(q, "chairside")
    rows: list[dict[str, Any]] = []
    for res in result.get("results", []):
        assert "error" not in res, res
        for series in res.get("series", []) or []:
            tags = series.get("tags", {}) or {}
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                row.update(tags)
                rows.append(row)
    return rows


def wait_rows(influxdb: InfluxDB, q: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """At least `count` rows, and the same answer twice in a row: InfluxDB 1.x
    makes a point's fields visible one by one, so a query that runs during a
    write can see a row whose other fields are still null.  On timeout it
    raises, naming the rows it had and InfluxDB's last error (never partial rows)."""
    end = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    previous: list[dict[str, Any]] | None = None
    last_error: BaseException | None = None
    said = ""
    while time.monotonic() < end:
        try:
            rows = query_rows(influxdb, q)
            last_error, said = None, ""
        except (AssertionError, OSError, ValueError) as exc:  # an error result, no answer, not JSON
            rows, last_error, said = [], exc, repr(exc)
            if isinstance(exc, urllib.error.HTTPError):  # InfluxDB's reason is in the body
                said += " " + exc.read().decode(errors="replace")[:300]
        if len(rows) >= count and rows == previous:
            return rows
        previous = rows
        time.sleep(0.1)
    raise AssertionError(f"{q}: {len(rows)} row(s) after {timeout:g} s, wanted at least {count} (twice the same)"
                         + (f"; last InfluxDB error: {said}" if said else "")) from last_error


def lockstep(fleet: Any, gateway: Gateway, sim_ms: int, step_ms: int = 1000, timeout: float = 5.0) -> None:
    """Run the fleet `sim_ms` of simulated time, one step at a time, letting
    the gateway catch up after each step (every message the boxes sent has
    been received and processed), so the gateway's clock — the simulated wall
    time — moves with the readings as it would live."""
    for _ in range(sim_ms // step_ms):
        fleet.run_for(step_ms)
        sent = sum(box.app.seq for box in fleet.boxes)
        end = time.monotonic() + timeout
        while gateway.metrics.total("messages_in") < sent and time.monotonic() < end:
            time.sleep(0.002)
        gateway.wait_idle(timeout)


class ShippedClinic:
    """What `chairside certs` and `chairside provision` set up, served by the
    shipped broker configuration (TLS listener and the loopback listener)."""

    def __init__(self, root: Path, site: str, chairs: tuple[str, ...] = ("3",)) -> None:
        from chairside.install import pki
        from chairside.install.provision import ShippedMosquitto, State

        self.state = State(root / "state")
        self.pki_dir = root / "pki"
        pki.init_ca(self.pki_dir)
        pki.issue_server(self.pki_dir, ["localhost", "127.0.0.1"])
        for name in ("gateway", "pager", "staff", "drill"):
            self.state.provision_service(name)
        for chair in chairs:
            self.state.provision_box(site, chair, mqtt_host="127.0.0.1")
        conf = self.state.broker_dir
        for name in ("ca.crt", "server.crt", "server.key"):
            (conf / name).write_bytes((self.pki_dir / name).read_bytes())
        self.broker = ShippedMosquitto(conf, workdir=root / "broker")

    def creds(self, service: str) -> Path:
        return self.state.service_path(service)


class Receiver:
    """A local HTTP server standing in for the clinic's incident tool (the pager's webhook)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/events"

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [b for b in list(self.bodies) if b.get("event_action") == action]

    def triggers(self) -> list[dict[str, Any]]:
        return self.actions("trigger")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """``pred()``'s first truthy value, polled every 50 ms until ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
