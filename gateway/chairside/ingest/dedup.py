"""Duplicates and clock skew, per chair.

A box resends a QoS 1 message it has no PUBACK for (DUP), and replays its
spool after an outage; the broker redelivers what the gateway had not
acknowledged before a crash.  All of these carry the same ``boot`` and
``seq``: the first copy seen is the one that is evaluated and stored, later
copies are counted and dropped before storage (so a duplicate with other
content can neither overwrite the stored reading nor add one the alarm
engine never saw).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque

log = logging.getLogger("chairside.ingest.dedup")

SEEN_PER_BOOT = 1024
SEEN_BOOTS = 4096
SKEW_LOG_INTERVAL_MS = 60_000  # clock-skew warnings: at most one per chair per minute
MAX_SKEW_LOG_KEYS = 10_000


class Duplicates:
    """Remembers the last ``per_boot`` seqs of the last ``boots`` (site, chair, boot)."""

    def __init__(self, per_boot: int = SEEN_PER_BOOT, boots: int = SEEN_BOOTS) -> None:
        self._per_boot = per_boot
        self._boots = boots
        self._seen: OrderedDict[tuple[str, str, int], tuple[deque[int], set[int]]] = OrderedDict()

    def seen_before(self, site: str, chair: str, boot: object, seq: object) -> bool:
        """True if (boot, seq) was seen for this chair; records it otherwise."""
        if not isinstance(seq, int) or not isinstance(boot, int):
            return False
        key = (site, chair, boot)
        entry = self._seen.get(key)
        if entry is None:
            entry = (deque(), set())
            self._seen[key] = entry
            while len(self._seen) > self._boots:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        order, seen = entry
        if seq in seen:
            return True
        order.append(seq)
        seen.add(seq)
        if len(order) > self._per_boot:
            seen.discard(order.popleft())
        return False


class SkewLog:
    """Warn about a chair's clock skew at most once a minute; the caller counts every one.

    A box with a wrong clock, or a backlog the broker held during a gateway
    outage, would otherwise log one line per reading."""

    def __init__(self) -> None:
        self._logged: dict[tuple[str, str], list[int]] = {}  # chair -> [rx_ms, suppressed]

    def note(self, site: str, chair: str, skew_ms: int, rx_ms: int) -> None:
        key = (site, chair)
        last = self._logged.get(key)
        if last is not None and rx_ms - last[0] < SKEW_LOG_INTERVAL_MS:
            last[1] += 1
            return
        if len(self._logged) >= MAX_SKEW_LOG_KEYS:
            self._logged.clear()
        more = f" ({last[1]} more since the last warning)" if last is not None and last[1] else ""
        log.warning("clock skew %+d ms on %s/%s (device t vs receive time)%s", skew_ms, site, chair, more)
        self._logged[key] = [rx_ms, 0]
