"""Read a session and its data from InfluxDB 1.x (InfluxQL over HTTP ``/query``).

The only module of :mod:`chairside.record` that talks to InfluxDB: it turns
rows into the typed :mod:`chairside.record.data` classes.  Every request has
a deadline (``timeout_s``); a failure raises :class:`RecordQueryError` with
the reason, never a half-filled record.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from chairside.record.data import AlarmRow, DeviceRow, LimitChange, Nibp, Session, SessionData, Vital
from chairside.record.figures import BASELINE_BEFORE_MS, record_end


class RecordQueryError(RuntimeError):
    """InfluxDB did not answer, or answered with an error."""


def _quote(text: str) -> str:
    """An InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxReader:
    """InfluxQL queries against one database; rows as dicts with ``time`` in ms.

    ``credentials`` (user, password) log in with HTTP Basic auth, as the
    gateway's writer does (an installed server runs InfluxDB with auth on; a
    read-only user is enough: ``/etc/chairside/influx/grafana.json``)."""

    def __init__(self, url: str, database: str, timeout_s: float = 10.0,
                 credentials: tuple[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s
        self._auth = (None if credentials is None else
                      "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii"))

    def rows(self, influxql: str) -> list[dict[str, Any]]:
        data = urllib.parse.urlencode({"q": influxql, "db": self.database, "epoch": "ms"}).encode()
        request = urllib.request.Request(f"{self.url}/query", data=data)
        if self._auth is not None:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            why = "the login was refused (--influx-credentials)" if exc.code in (401, 403) else exc.reason
            raise RecordQueryError(f"InfluxDB at {self.url}: HTTP {exc.code}: {why}") from exc
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise RecordQueryError(f"InfluxDB at {self.url}: {exc}") from exc
        rows: list[dict[str, Any]] = []
        for result in answer.get("results", []) if isinstance(answer, dict) else []:
            if "error" in result:
                raise RecordQueryError(f"InfluxDB: {result['error']}")
            for series in result.get("series", []) or []:
                tags = series.get("tags") or {}
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values, strict=True))
                    row.update(tags)
                    rows.append(row)
        rows.sort(key=lambda r: int(r["time"]))
        return rows


def _where(site: str, chair: str, start_ms: int | None = None, end_ms: int | None = None) -> str:
    clause = f"site = {_quote(site)} AND chair = {_quote(chair)}"
    if start_ms is not None:
        clause += f" AND time >= {int(start_ms)}ms"
    if end_ms is not None:
        clause += f" AND time <= {int(end_ms)}ms"
    return clause


def sessions_of(reader: InfluxReader, site: str, chair: str) -> list[Session]:
    """The chair's sessions, oldest first (an open one has ``end_ms`` None)."""
    rows = reader.rows(f'SELECT "session", "by", "ref", "why", "event" FROM sessions WHERE {_where(site, chair)}')
    starts: dict[str, dict[str, Any]] = {}
    ends: dict[str, dict[str, Any]] = {}
    for row in rows:
        target = starts if row.get("event") == "start" else ends if row.get("event") == "end" else None
        if target is not None and isinstance(row.get("session"), str):
            target.setdefault(row["session"], row)
    found: list[Session] = []
    for sid, start in starts.items():
        end = ends.get(sid)
        found.append(Session(
            id=sid, site=site, chair=chair, start_ms=int(start["time"]),
            end_ms=None if end is None else int(end["time"]),
            started_by=str(start.get("by") or ""), ended_by=None if end is None else str(end.get("by") or ""),
            ref=str(start.get("ref") or ""), end_why=None if end is None else str(end.get("why") or ""),
        ))
    found.sort(key=lambda s: s.start_ms)
    return found


def find_session(reader: InfluxReader, site: str, chair: str, session_id: str | None = None) -> Session | None:
    """The session ``session_id`` of the chair, or its latest one when None."""
    found = sessions_of(reader, site, chair)
    if session_id is None:
        return found[-1] if found else None
    return next((s for s in found if s.id == session_id), None)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def load(reader: InfluxReader, session: Session, now_ms: int) -> SessionData:
    """Everything stored for ``session`` (an open one up to ``now_ms``), plus the
    look-back before its start that the baseline needs."""
    site, chair, start = session.site, session.chair, session.start_ms
    end, _ = record_end(session, now_ms)
    since = start - BASELINE_BEFORE_MS
    data = SessionData(session)
    for row in reader.rows(f'SELECT "spo2", "pr", "st" FROM vitals WHERE {_where(site, chair, start, end)}'):
        data.vitals.append(Vital(int(row["time"]), _int(row.get("spo2")), _int(row.get("pr")),
                                 str(row.get("st") or "")))
    for row in reader.rows(f'SELECT "sys", "dia", "map", "pr", "st" FROM nibp WHERE {_where(site, chair, since, end)}'):
        data.nibp.append(Nibp(int(row["time"]), _int(row.get("sys")), _int(row.get("dia")), _int(row.get("map")),
                              _int(row.get("pr")), str(row.get("st") or "")))
    q = ('SELECT "id", "kind", "text", "value", "limit", "by", "drill", "alarm", "event", "priority" '
         f"FROM alarm_events WHERE {_where(site, chair, start, end)}")
    for row in reader.rows(q):
        data.alarms.append(AlarmRow(
            int(row["time"]), str(row.get("alarm") or ""), str(row.get("event") or ""),
            str(row.get("priority") or ""), str(row.get("kind") or ""), str(row.get("id") or ""),
            text=str(row.get("text") or ""), by=row.get("by"), value=_float(row.get("value")),
            limit=_float(row.get("limit")), drill=bool(row.get("drill")),
        ))
    q = f'SELECT "param", "old", "new", "by", "reason" FROM limit_audit WHERE {_where(site, chair, start, end)}'
    for row in reader.rows(q):
        data.limits.append(LimitChange(int(row["time"]), str(row.get("param") or ""), _float(row.get("old")),
                                       _float(row.get("new")), str(row.get("by") or ""),
                                       str(row.get("reason") or "")))
    for row in reader.rows(f'SELECT "online" FROM device WHERE {_where(site, chair, since, end)}'):
        if row.get("online") is not None:
            data.device.append(DeviceRow(int(row["time"]), int(row["online"])))
    return data
