"""A small InfluxDB 1.x writer: ``POST /write`` and ``CREATE DATABASE`` only.

InfluxDB 1.6 serves neither ``/api/v2/write`` nor ``/health``, so the
influxdb-client write API cannot be used; line protocol is posted directly.
Library errors are converted here into two narrow exceptions:
:class:`InfluxUnavailable` (retry later) and :class:`InfluxRejected` (the
request itself is wrong; retrying will not help).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

import urllib3


class InfluxError(Exception):
    """Base of the writer's errors."""


class InfluxUnavailable(InfluxError):
    """Connection refused, timed out, or a 5xx answer: try again later."""


class InfluxRejected(InfluxError):
    """A 4xx answer (malformed line, unknown database, ...)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class InfluxWriter:
    """Posts line protocol (ms precision) to one database; thread-safe."""

    def __init__(self, url: str, database: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s
        self._http = urllib3.PoolManager(
            num_pools=1,
            maxsize=2,
            retries=False,
            timeout=urllib3.Timeout(total=timeout_s),
        )

    def _post(self, path: str, params: dict[str, str], body: bytes, content_type: str) -> str:
        try:
            resp = self._http.request(
                "POST",
                f"{self.url}{path}?{urlencode(params)}",
                body=body,
                headers={"Content-Type": content_type},
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"{path}: {exc}") from exc
        text = resp.data.decode("utf-8", errors="replace")[:500]
        if resp.status >= 500:
            raise InfluxUnavailable(f"{path}: HTTP {resp.status}: {text}")
        if resp.status >= 400:
            raise InfluxRejected(resp.status, text)
        return text

    def ensure_database(self) -> None:
        """``CREATE DATABASE`` (idempotent in InfluxDB 1.x)."""
        name = self.database.replace("\\", "\\\\").replace('"', '\\"')
        body = urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
        text = self._post("/query", {}, body, "application/x-www-form-urlencoded")
        if '"error"' in text:
            raise InfluxRejected(200, text)

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
        self._http.clear()
