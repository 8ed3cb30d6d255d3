"""The acknowledgement web page behind the link in every page.

``GET /ack?token=...`` checks the token and shows a confirmation page with
one button; the button POSTs the token to ``/ack``, which records the
acknowledgement and answers with an HTML confirmation.  The ack itself is
a POST on purpose: mail scanners and SMS link previews fetch links with GET,
and a preview must never silence an escalation.  ``GET /healthz`` → 200
``ok``, or 503 with the reason when the pager cannot do its job (its MQTT
network loop or tick thread ended, or the broker is gone);
``GET /metrics`` → the pager's counters in Prometheus text format (counts
only, no patient or staff names).
"""

from __future__ import annotations

import html
import logging
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("chairside.pager.ack")

MAX_BODY = 4096
# check(token) -> (ok, text) without side effects; ack(token) -> (ok, text)
Check = Callable[[str], tuple[bool, str]]
Health = Callable[[], tuple[bool, str]]


def _page(title: str, body_html: str) -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body_html}</body></html>"
    ).encode()


class AckServer:
    """A small threaded HTTP server; ``port=0`` picks a free port."""

    def __init__(self, host: str, port: int, check: Check, ack: Check,
                 metrics: Callable[[], str] | None = None,
                 health: Health | None = None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "chairside-pager"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def _send(self, code: int, title: str, body_html: str) -> None:
                data = _page(title, body_html)
                self.send_response(code)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/healthz":
                    ok, why = outer.health() if outer.health is not None else (True, "ok")
                    self._send(200 if ok else 503, why, "")
                    return
                if url.path == "/metrics" and outer.metrics is not None:
                    data = outer.metrics().encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if url.path != "/ack":
                    self._send(404, "Not found", "")
                    return
                token = urllib.parse.parse_qs(url.query).get("token", [""])[0]
                ok, text = outer.check(token)
                if not ok:
                    self._send(400, "Cannot acknowledge", f"<p>{html.escape(text)}</p>")
                    return
                form = (
                    f"<p>{html.escape(text)}</p>"
                    "<form method='post' action='/ack'>"
                    f"<input type='hidden' name='token' value='{html.escape(token, quote=True)}'>"
                    "<button type='submit' style='font-size:2em'>Acknowledge - I own it"
                    "</button></form>"
                )
                self._send(200, "Acknowledge alarm?", form)

            def do_POST(self) -> None:
                if urllib.parse.urlsplit(self.path).path != "/ack":
                    self._send(404, "Not found", "")
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    self._send(413, "Request too large", "")
                    return
                form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                ok, text = outer.ack(form.get("token", [""])[0])
                title = "Acknowledged" if ok else "Cannot acknowledge"
                self._send(200 if ok else 400, title, f"<p>{html.escape(text)}</p>")

        self.check = check
        self.ack = ack
        self.metrics = metrics
        self.health = health
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
