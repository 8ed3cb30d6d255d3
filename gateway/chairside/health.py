"""``/health`` (JSON, 200 or 503) and ``/metrics`` (Prometheus text) on 127.0.0.1:PORT.

Served by the standard library's threading HTTP server: two read-only GET
endpoints for a local scraper and a service monitor.  A client that goes
away mid-answer (a health check timing out) costs one DEBUG line, not a
traceback.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from chairside.metrics import Metrics

if TYPE_CHECKING:
    from chairside.store.deadletter import DeadLetters
    from chairside.store.spool import PointSpool
    from chairside.store.writer import Writer

log = logging.getLogger("chairside.health")

HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("health/metrics client %s went away", client_address)


class HealthServer:
    """Serves ``health()`` and ``render_metrics()`` until :meth:`close`."""

    def __init__(self, port: int, health: HealthFn, render_metrics: Callable[[], str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    status, ctype = 200, "text/plain; version=0.0.4"
                    body = render_metrics().encode()
                elif self.path == "/health":
                    healthy, details = health()
                    status, ctype = (200 if healthy else 503), "application/json"
                    body = json.dumps(details, sort_keys=True).encode()
                else:
                    self.send_error(404)
                    return
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    log.debug("health/metrics client went away before the answer")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = _Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="gw-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def gateway_health(
    writer: Writer[Any], spool: PointSpool, deadletters: DeadLetters, metrics: Metrics,
    *, subscribed: bool, publisher: bool,
) -> tuple[bool, dict[str, Any]]:
    """The gateway's (healthy, details) as served on /health."""
    mqtt_connected = metrics.get("mqtt_connected") == 1
    influx_reachable = writer.influx_ok is not False
    stalled = writer.stalled()
    refused = writer.influx_refused
    healthy = (mqtt_connected and publisher and influx_reachable and refused is None
               and not writer.spool_full and not stalled)
    age = None if writer.last_write is None else round(time.monotonic() - writer.last_write, 3)
    details: dict[str, Any] = {
        "status": "ok" if healthy else "degraded",
        "mqtt_connected": mqtt_connected,
        "mqtt_subscribed": subscribed,
        "mqtt_publisher_connected": publisher,
        "influx_reachable": influx_reachable,
        "influx_write_refused": refused,
        "writer_stalled": stalled,
        "spool_depth": spool.pending_points,
        "spool_bytes": spool.total_bytes,
        "spool_full": writer.spool_full,
        "spool_dropped": spool.dropped_points,
        "store_depth": writer.waiting(),
        "last_write_age_s": age,
        "deadletters": deadletters.written,
    }
    return healthy, details


def describe_gateway_metrics(m: Metrics) -> None:
    """The HELP texts and types of the gateway's metrics (served on ``/metrics``)."""
    m.describe("messages_in", "counter", "MQTT messages received on box topics")
    m.describe("rejected", "counter", "messages rejected by validation, by reason")
    m.describe("points_written", "counter", "line-protocol points written to InfluxDB")
    m.describe("write_errors", "counter", "failed InfluxDB writes, by kind")
    m.describe("queue_dropped", "counter", "items dropped from a full buffer, by queue")
    m.describe("alarm_events", "counter", "alarm events from the alarm stage")
    m.describe("duplicates", "counter", "redelivered messages (same boot and seq)")
    m.describe("clock_skew", "counter", "live synced messages whose clock is off rx time")
    m.describe("time_estimated", "counter", "messages stored with an estimated timestamp")
    m.describe("processing_errors", "counter", "unexpected errors while processing")
    m.describe("mqtt_connected", "gauge", "1 while the ingest session is connected to the broker")
    m.describe("mqtt_publisher_connected", "gauge", "1 while the publishing connection is up")
    m.describe("write_seconds", "histogram", "InfluxDB write latency")
    m.describe("spool_depth", "gauge", "points waiting in the on-disk spool")
    m.describe("spool_bytes", "gauge", "bytes of the on-disk spool")
    m.describe("spooled", "counter", "points appended to the on-disk spool")
    m.describe("spool_dropped", "counter", "points dropped because the spool was full")
    m.describe("spool_errors", "counter", "failed spool appends (disk errors)")
    m.describe("deadletters", "counter", "points InfluxDB rejected as malformed (dead-lettered)")
    m.describe("influx_reachable", "gauge", "1 while InfluxDB answers")
    m.describe("influx_write_refused", "gauge",
               "1 while InfluxDB refuses the gateway's writes (401/403: credentials or grant; points spooled)")
    m.describe("alarm_state_skipped", "counter", "entries of the saved alarm state that could not be restored")
    m.describe("watermarks_published", "counter", "stored watermarks published to boxes")
    m.describe("watermark_gaps", "counter", "kept readings declared lost: never arrived within the gap timeout")
    m.describe("mqtt_sessions_lost", "counter", "reconnects on which the broker had lost the persistent session")
