"""Confirming kept readings to their boxes: the gateway's stored watermarks.

A kept reading (one that carries ``p``) is confirmed once the writer reports
its points durable (:meth:`Confirmations.durable`); the chairs' watermarks
that advanced are published retained on ``stored``, at most once a second per
chair, and readings declared lost are logged and counted
(:meth:`Confirmations.publish_due`, on the gateway's timer).  The watermarks
are saved every ``WATERMARK_SAVE_S`` and at stop, and restored at start
(docs/contract.md, "End-to-end delivery").  :class:`Confirmations` is this
stage of :class:`~chairside.service.Gateway`; the pure bookkeeping is
:class:`~chairside.store.watermark.Watermarks`.  A message's :class:`Receipt`
(its PUBACK, :class:`Ack`, and the kept reading's place, :func:`kept_of`)
travels with its points through the writer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from chairside import contract
from chairside.metrics import Metrics
from chairside.paths import atomic_write_json

from .watermark import Watermarks, stored_payload

log = logging.getLogger("chairside.service")  # the gateway's log, as before this stage had its module

WATERMARKS_FILE: Final = "watermarks.json"
WATERMARK_SAVE_S: Final = 5.0
"""how often the stored watermarks are saved (a restart with older ones only makes boxes re-send more)"""

Kept = tuple[str, str, int, int, int]
"""(site, chair, boot, seq, p) of a kept reading"""


# not frozen, but never changed after construction: a frozen dataclass's __init__ costs
# about 0.3 µs a field, several µs a reading on the ingest path (docs/performance.md, round 8)
@dataclass(slots=True)
class Ack:
    """A received QoS 1 message: acknowledged once its points are durable."""

    pid: int
    generation: int
    """the ingest session's connection the message came on"""


# not frozen, but never changed after construction: a frozen dataclass's __init__ costs
# about 0.3 µs a field, several µs a reading on the ingest path (docs/performance.md, round 8)
@dataclass(slots=True)
class Receipt:
    """What the gateway owes a message once its points are durable: the
    PUBACK, and, for a kept reading (``p`` set), its place in the box's
    stored watermark (docs/contract.md, "End-to-end delivery")."""

    ack: Ack | None
    kept: Kept | None = None


def kept_of(site: str, chair: str, fields: Mapping[str, Any]) -> Kept | None:
    """(site, chair, boot, seq, p) of a kept reading (one that carries ``p``)."""
    boot, seq, p = fields.get("boot"), fields.get("seq"), fields.get("p")
    if isinstance(boot, int) and isinstance(seq, int) and isinstance(p, int):
        return site, chair, boot, seq, p
    return None


class Send(Protocol):
    """Send a retained QoS 0 message (contract.json: ``stored`` is QoS 0, each
    watermark supersedes the last); False when it cannot be sent now."""

    def __call__(self, topic: str, payload: bytes) -> bool: ...


class Confirmations:
    """The stored watermarks between the writer (``durable``) and the timer
    (``publish_due``, ``save``), under one lock."""

    def __init__(
        self,
        watermarks: Watermarks,
        send: Send,
        metrics: Metrics,
        path: Path | None,
    ) -> None:
        self.watermarks = watermarks
        self._send = send
        self.metrics = metrics
        self.path = path
        """where the watermarks are saved; ``None``: not saved (no state dir)"""
        self._lock = threading.Lock()  # the writer (durable) vs the timer (publish, save)
        self._saved_at = 0.0

    def durable(self, kept: Kept, now_ms: int) -> None:
        """The writer's report that a kept reading's points are durable."""
        site, chair, boot, seq, p = kept
        with self._lock:
            self.watermarks.durable(site, chair, boot, seq, p, now_ms)

    def publish_due(self, now_ms: int) -> None:
        """Publish the chairs' stored watermarks that advanced (rate-limited per
        chair), report readings declared lost, save the watermarks now and then."""
        with self._lock:
            due = self.watermarks.due(now_ms)
            gaps = self.watermarks.take_gaps()
            sent = 0
            for site, chair, boot, seq in due:
                # QoS 0 (contract.json): a watermark supersedes the last one every
                # second and a lost one only delays confirmation (the box re-sends
                # the reading, which has this watermark published again); QoS 1
                # doubled the cost of publishing them (benchmarks/throughput.py)
                if not self._send(contract.topic("stored", site, chair), stored_payload(boot, seq, now_ms)):
                    break  # not connected: these stay due for a later tick
                self.watermarks.mark_published(site, chair, boot, seq, now_ms)
                sent += 1
        if sent:
            self.metrics.inc("watermarks_published", sent)
        for gap in gaps:
            self.metrics.inc("watermark_gaps")
            log.warning("%s/%s boot %d: readings %d..%d never arrived: %s", gap.site, gap.chair, gap.boot,
                        gap.from_w + 1, gap.to_w, gap.reason)
        if self.path is not None and time.monotonic() - self._saved_at >= WATERMARK_SAVE_S:
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self._saved_at = time.monotonic()
        with self._lock:
            snapshot = self.watermarks.snapshot()
        try:
            atomic_write_json(self.path, snapshot)
        except OSError as exc:
            self.metrics.inc("persist_errors", what="watermarks")
            log.error("cannot save the stored watermarks to %s: %s", self.path, exc)

    def restore(self, now_ms: int) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            restored = self.watermarks.restore(saved, now_ms)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("ignoring unreadable stored watermarks %s: %s", self.path, exc)
            return
        log.info("restored %d stored watermark(s) from %s", restored, self.path)
