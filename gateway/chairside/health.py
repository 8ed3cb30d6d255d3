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
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
