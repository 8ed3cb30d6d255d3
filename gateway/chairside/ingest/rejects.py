"""Refused messages: counted by reason, logged a few per window, stored as ``rejects`` points."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chairside.ingest.validate import Rejected
from chairside.metrics import Metrics
from chairside.store.points import reject_line

log = logging.getLogger("chairside.ingest.rejects")

LOG_PER_WINDOW = 10


@dataclass(slots=True)
class _Window:
    n: int
    topic: str
    detail: str


class RejectLog:
    """Every refusal is counted; per reason, the first ``LOG_PER_WINDOW`` of a
    window are logged and one ``rejects`` point per window is stored."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._windows: dict[str, _Window] = {}

    def note(self, rej: Rejected) -> None:
        self._metrics.inc("rejected", reason=rej.reason)
        window = self._windows.get(rej.reason)
        if window is None:
            window = _Window(0, rej.topic, rej.detail)
            self._windows[rej.reason] = window
        window.n += 1
        window.topic, window.detail = rej.topic, rej.detail
        if window.n <= LOG_PER_WINDOW:
            log.warning("rejected %s on %s: %s", rej.reason, rej.topic, rej.detail)

    def flush(self, now_ms: int) -> list[str]:
        """Close the window: the ``rejects`` points to store."""
        lines = []
        for reason, window in sorted(self._windows.items()):
            if window.n > LOG_PER_WINDOW:
                log.warning("%d further %s rejects not logged", window.n - LOG_PER_WINDOW, reason)
            lines.append(reject_line(reason, window.n, window.topic, window.detail, now_ms))
        self._windows.clear()
        return lines
