"""The alarm engine's state on disk, for restarts (docs/alarms.md, "Restarts").

:func:`save` writes :meth:`AlarmEngine.snapshot` atomically (temporary file,
fsync, rename), so a crash leaves the previous state or the new one, never
half a file.  :func:`load` hands a saved state to :meth:`AlarmEngine.restore`;
a missing file is a first start, an unreadable one is logged with the reason
and set aside (``.bad``) so that it can be examined, never a crash.  No clock
here: the caller passes ``now_ms``.  :class:`StateWriter` numbers the
snapshots as they are taken and writes the newest only (the gateway's timer
writes its periodic one outside the ingest lock, an event's is written under it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Final

from chairside.metrics import Metrics
from chairside.model import AlarmEvent
from chairside.paths import atomic_write_json

from .engine import AlarmEngine

FILE_NAME: Final = "alarm_state.json"
MAX_BYTES: Final = 16 * 1024 * 1024
"""A state file larger than this is not read (a clinic's chairs need a few KB)."""

log = logging.getLogger(__name__)
gateway_log = logging.getLogger("chairside.service")  # StateWriter's errors: the gateway's log, as before


def save(engine: AlarmEngine, path: Path) -> None:
    """Write the engine's snapshot to ``path`` atomically; OSError goes to the caller."""
    atomic_write_json(path, engine.snapshot())


class StateWriter:
    """The engine's snapshots to ``path`` (``None``: not saved), newest wins."""

    def __init__(self, path: Path | None, metrics: Metrics) -> None:
        self.path = path
        self.metrics = metrics
        self._taken = 0  # snapshots taken (under the ingest lock)
        self._written = 0  # the newest of them on disk
        self._lock = threading.Lock()

    def take(self, engine: AlarmEngine) -> dict[str, Any]:
        """A numbered snapshot of the engine (take it under the gateway's ingest lock)."""
        self._taken += 1
        return {"n": self._taken, "state": engine.snapshot()}

    def write(self, taken: dict[str, Any]) -> None:
        """Write a snapshot unless a newer one is already on disk (the timer
        writes its snapshots outside the ingest lock; the gateway's stop writes
        its last one under it, and the timer may still be finishing a write
        if it outlived stop's deadline)."""
        if self.path is None:
            return
        try:
            with self._lock:
                if taken["n"] <= self._written:
                    return
                atomic_write_json(self.path, taken["state"])
                self._written = taken["n"]
        except (OSError, ValueError) as exc:
            self.metrics.inc("persist_errors", what="alarm_state")
            gateway_log.error("cannot save the alarm state to %s: %s", self.path, exc)


def load(engine: AlarmEngine, path: Path, now_ms: int) -> list[AlarmEvent]:
    """Restore the engine from ``path`` (see :meth:`AlarmEngine.restore`).

    Returns the events of the restore (clears of alarms whose condition left
    the profile).  A missing file gives ``[]``; an unreadable or oversized one
    is logged, counted in ``engine.restore_skipped``, renamed to ``.bad`` and
    gives ``[]``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    except OSError as exc:
        return _unusable(engine, path, f"cannot stat: {exc}", keep=True)
    if size > MAX_BYTES:
        return _unusable(engine, path, f"{size} bytes > {MAX_BYTES}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return _unusable(engine, path, str(exc)[:200])
    events = engine.restore(doc, now_ms)
    log.warning("alarm state restored from %s (%d chair(s), %d entr%s skipped)", path,
                len(doc.get("chairs", [])) if isinstance(doc, dict) and isinstance(doc.get("chairs"), list) else 0,
                engine.restore_skipped, "y" if engine.restore_skipped == 1 else "ies")
    return events


def _unusable(engine: AlarmEngine, path: Path, reason: str, *, keep: bool = False) -> list[AlarmEvent]:
    engine.restore_skipped += 1
    log.error("alarm state %s unusable, starting without it: %s", path, reason)
    if not keep:
        try:
            os.replace(path, path.with_name(path.name + ".bad"))
        except OSError as exc:
            log.error("cannot set aside %s: %s", path, exc)
    return []
