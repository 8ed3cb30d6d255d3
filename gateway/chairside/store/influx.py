"""A small InfluxDB 1.x writer: ``POST /write`` and ``CREATE DATABASE`` only.

InfluxDB 1.6 serves neither ``/api/v2/write`` nor ``/health``, so the
influxdb-client write API cannot be used; line protocol is posted directly.
Library errors are converted here into two narrow exceptions:
:class:`InfluxUnavailable` (retry later) and :class:`InfluxRejected` (the
request itself is wrong; retrying will not help), and
:class:`InfluxUnauthorized` (401/403: the credentials or the user's grants,
retry once they are fixed).

With ``auth-enabled`` InfluxDB, the writer logs in with HTTP Basic auth (a
user with WRITE on the database; never in the URL, so never in a log line).
The credentials come from a JSON file ``{"user": ..., "password": ...}``
(:func:`read_credentials`), as the broker's do.
"""

from __future__ import annotations

import base64
import http.client
import logging
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from chairside import mqtt_auth

log = logging.getLogger("chairside.store.influx")


class InfluxError(Exception):
    """Base of the writer's errors."""


class InfluxUnavailable(InfluxError):
    """Connection refused, timed out, or a 5xx answer: try again later."""


class InfluxAnswered(InfluxError):
    """InfluxDB answered the request with a 4xx status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class InfluxRejected(InfluxAnswered):
    """A 4xx answer about the request (malformed line, unknown database, ...)."""


class InfluxUnauthorized(InfluxAnswered):
    """401 (no or wrong credentials) or 403 (the user lacks the privilege):
    not the request's fault, so not an :class:`InfluxRejected` (a writer
    keeps the lines instead of bisecting and dead-lettering them)."""


class CredentialsError(ValueError):
    """The InfluxDB credentials file is missing or malformed (message names the file)."""


def read_credentials(path: Path) -> tuple[str, str]:
    """(user, password) from a JSON file ``{"user": ..., "password": ...}``.

    Same format as the broker's service credentials (``mqtt_auth``); a file
    others may read is accepted with a warning (the installer writes 0600)."""
    try:
        user, password = mqtt_auth.read_credentials(path)
    except mqtt_auth.CredentialsError as exc:
        raise CredentialsError(f"InfluxDB credentials: {exc}") from exc
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: InfluxDB credentials readable by others (mode %o): chmod 600 it",
                    path, stat.S_IMODE(mode))
    return user, password


class InfluxWriter:
    """Posts line protocol (ms precision) to one database; thread-safe.

    One keep-alive HTTP/1.1 connection from the standard library (the hot
    path writes a batch every few tens of ms; a pooled client library costs
    more per request than the request itself).  A failed request drops the
    connection; the next one reconnects within ``timeout_s``.
    """

    def __init__(self, url: str, database: str, timeout_s: float = 5.0,
                 credentials: tuple[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"influx url: expected http(s)://host:port, got {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.user = credentials[0] if credentials is not None else None
        self._auth = (
            "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
            if credentials is not None else None)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, path: str, params: dict[str, str], body: bytes, content_type: str) -> str:
        target = f"{self._prefix}{path}?{urlencode(params)}" if params else f"{self._prefix}{path}"
        with self._lock:
            for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
                conn = self._connection()
                try:
                    headers = {"Content-Type": content_type}
                    if self._auth is not None:
                        headers["Authorization"] = self._auth
                    conn.request("POST", target, body=body, headers=headers)
                    resp = conn.getresponse()
                    status = resp.status
                    text = resp.read().decode("utf-8", errors="replace")[:500]
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise InfluxUnavailable(f"{path}: {exc}") from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    raise InfluxUnavailable(f"{path}: {exc}") from exc
        if status >= 500:
            raise InfluxUnavailable(f"{path}: HTTP {status}: {text}")
        if status in (401, 403):
            raise InfluxUnauthorized(status, text)
        if status >= 400:
            raise InfluxRejected(status, text)
        return text

    def ensure_database(self) -> bool:
        """``CREATE DATABASE`` (idempotent in InfluxDB 1.x).

        False when the user may not create databases (403: a least-privilege
        write user; the installer created the database); raises
        :class:`InfluxUnauthorized` on 401 (no or wrong credentials)."""
        name = self.database.replace("\\", "\\\\").replace('"', '\\"')
        body = urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
        try:
            text = self._post("/query", {}, body, "application/x-www-form-urlencoded")
        except InfluxUnauthorized as exc:
            if exc.status == 403:
                return False
            raise
        if '"error"' in text:
            raise InfluxRejected(200, text)
        return True

    def check_write(self) -> None:
        """An empty ``POST /write``: InfluxDB checks the credentials, the user's
        WRITE privilege and that the database exists, and stores nothing
        (204).  Raises as :meth:`write` would."""
        self._post("/write", {"db": self.database, "precision": "ms"}, b"", "text/plain; charset=utf-8")

    def write(self, lines: Sequence[str]) -> None:
        """Write ``lines`` in one request within ``timeout_s``; nothing to do if empty."""
        if not lines:
            return
        body = "\n".join(lines).encode("utf-8")
        self._post(
            "/write",
            {"db": self.database, "precision": "ms"},
            body,
            "text/plain; charset=utf-8",
        )

    def close(self) -> None:
        with self._lock:
            self._drop()
