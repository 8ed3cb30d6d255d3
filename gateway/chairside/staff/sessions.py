"""Infusion sessions: staff start and end one per chair; standby ends it.

A ``chair_session`` message (``{"v":1,"action":"start"|"end","by":...,"ref":...}``
on ``chairside/v1/{site}/{chair}/session``, docs/contract.md) starts a
session (refused while one is open: ``session_open``) or ends the open one
(refused when none is: ``no_session``).  ``chair_standby`` ends an open
session too (``why`` "standby").  Each start and end is one ``sessions``
point (tags site, chair, event; fields session, by, ref, why) at the
gateway's time; the open sessions are saved atomically in the state dir so a
gateway restart keeps them open.  The session id is
``{site}.{chair}.{start_ms}`` (a dot never appears in a site or chair id).

No patient name is ever stored: ``ref`` is a free clinic reference (e.g. the
EHR encounter number), at most 64 characters.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from chairside.alarms import adapter
from chairside.metrics import Metrics
from chairside.paths import atomic_write_json
from chairside.store.points import session_line

log = logging.getLogger("chairside.staff.sessions")

FILE_NAME = "sessions.json"


@dataclass(frozen=True, slots=True)
class OpenSession:
    id: str
    site: str
    chair: str
    start_ms: int
    by: str
    ref: str


def session_id(site: str, chair: str, start_ms: int) -> str:
    return f"{site}.{chair}.{start_ms}"


def parse_session_id(text: str) -> tuple[str, str, int] | None:
    """``(site, chair, start_ms)`` of a session id, or None."""
    parts = text.split(".")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What a session message did: the points to store and the session's id."""

    lines: list[str]
    session: str


class SessionBook:
    """The open session of each chair; the gateway's ingest thread calls it under its lock."""

    def __init__(self, metrics: Metrics, state_dir: Path | None) -> None:
        self.metrics = metrics
        self._path = None if state_dir is None else state_dir / FILE_NAME
        self._open: dict[tuple[str, str], OpenSession] = {}
        self._restore()

    def open_session(self, site: str, chair: str) -> OpenSession | None:
        return self._open.get((site, chair))

    def handle(self, site: str, chair: str, payload: bytes, now_ms: int) -> SessionResult | adapter.Rejected:
        """Apply a ``chair_session`` message; a Rejected names why it was refused."""
        cmd = adapter.parse_session(payload)
        if isinstance(cmd, adapter.Rejected):
            return cmd
        current = self._open.get((site, chair))
        if cmd.action == "start":
            if current is not None:
                return adapter.Rejected("session_open", f"session {current.id} is open (started by "
                                        f"{current.by[:40]}); end it first")
            opened = OpenSession(session_id(site, chair, now_ms), site, chair, now_ms, cmd.by, cmd.ref)
            self._open[(site, chair)] = opened
            self._save()
            self.metrics.inc("sessions", event="start")
            log.warning("session %s started by %s", opened.id, cmd.by)
            fields = {"session": opened.id, "by": cmd.by, "ref": cmd.ref or None, "why": "staff"}
            return SessionResult([session_line(site, chair, "start", fields, now_ms)], opened.id)
        if current is None:
            return adapter.Rejected("no_session", f"no open session on {site}/{chair}")
        return SessionResult(self._end(current, cmd.by, "staff", now_ms), current.id)

    def on_standby(self, site: str, chair: str, by: str, now_ms: int) -> list[str]:
        """Standby between patients ends the chair's open session, if any."""
        current = self._open.get((site, chair))
        return [] if current is None else self._end(current, by, "standby", now_ms)

    def _end(self, current: OpenSession, by: str, why: str, now_ms: int) -> list[str]:
        del self._open[(current.site, current.chair)]
        self._save()
        self.metrics.inc("sessions", event="end")
        log.warning("session %s ended by %s (%s)", current.id, by, why)
        end_ms = max(now_ms, current.start_ms + 1)  # an end is always after its start
        fields = {"session": current.id, "by": by, "ref": current.ref or None, "why": why}
        return [session_line(current.site, current.chair, "end", fields, end_ms)]

    # ---- across restarts ------------------------------------------------------------

    def _save(self) -> None:
        if self._path is None:
            return
        try:
            atomic_write_json(self._path, {f"{s.site}/{s.chair}": asdict(s) for s in self._open.values()})
        except OSError as exc:
            self.metrics.inc("persist_errors", what="sessions")
            log.error("cannot save the open sessions to %s: %s", self._path, exc)

    def _restore(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            saved = json.loads(self._path.read_text())
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable open sessions %s: %s", self._path, exc)
            return
        for item in saved.values() if isinstance(saved, dict) else []:
            try:
                opened = OpenSession(str(item["id"]), str(item["site"]), str(item["chair"]),
                                     int(item["start_ms"]), str(item["by"]), str(item.get("ref", "")))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("ignoring a saved open session %.80r: %s", item, exc)
                continue
            self._open[(opened.site, opened.chair)] = opened
        if self._open:
            log.warning("restored %d open session(s) from %s", len(self._open), self._path)
