"""Derive the stored timestamp (``measured_ms``) of each box message.

Rules, in order:

1. ``sync=1``: the device wall clock ``t`` is used as is.
2. otherwise ``boot time + up``, where the boot time of one
   ``(site, chair, boot)`` is learned once and then frozen:
   from a status message's ``boot_t``, from ``t - up`` of a synced message,
   or estimated as ``rx_ms - up`` from the first live (non-historical)
   message.  Freezing makes a replay (QoS 1 redelivery, box spool, gateway
   restart with a state dir) produce the same timestamp, so InfluxDB stores
   the same point again instead of a duplicate.
3. no boot time known (a historical message first): the receive time, marked
   ``time_estimated``.

The learned boot times live in a small JSON file when a state dir is given.
All decisions take ``rx_ms`` from the caller; nothing here reads a clock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from chairside.paths import atomic_write_json

log = logging.getLogger(__name__)

STATE_FILE: Final = "boot_times.json"
DEFAULT_SKEW_LIMIT_MS: Final = 120_000
DEFAULT_MAX_BOOTS: Final = 4096

Source = Literal["device", "boot_t", "synced", "rx_estimate", "rx"]
BootSource = Literal["boot_t", "synced", "rx_estimate"]


# not frozen, but never changed after construction: a frozen dataclass's __init__ costs
# about 0.3 µs a field, several µs a reading on the ingest path (docs/performance.md, round 8)
@dataclass(slots=True)
class Stamp:
    measured_ms: int
    time_estimated: bool
    source: Source
    skew_ms: int | None = None
    """device ``t`` minus ``rx_ms`` when that exceeds the skew limit on live data."""
    clock_wrong: bool = False
    """the box's synced clock is not believed (see :meth:`Timebase.stamp`)"""


@dataclass(frozen=True, slots=True)
class _Boot:
    boot_ms: int
    source: BootSource


class Timebase:
    """Frozen boot times per ``(site, chair, boot)``; thread-safe."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        skew_limit_ms: int = DEFAULT_SKEW_LIMIT_MS,
        max_boots: int = DEFAULT_MAX_BOOTS,
    ) -> None:
        self._path = state_dir / STATE_FILE if state_dir is not None else None
        self._skew_limit_ms = skew_limit_ms
        self._max_boots = max_boots
        self._boots: OrderedDict[str, _Boot] = OrderedDict()
        self._lock = threading.Lock()
        self._dirty = False  # boot times learned but not yet persisted
        self.persist_errors = 0
        if self._path is not None:
            self._load(self._path)

    @staticmethod
    def _key(site: str, chair: str, boot: int) -> str:
        return f"{site}/{chair}/{boot}"

    def boot_time(self, site: str, chair: str, boot: int) -> int | None:
        with self._lock:
            known = self._boots.get(self._key(site, chair, boot))
        return None if known is None else known.boot_ms

    def stamp(
        self,
        site: str,
        chair: str,
        fields: Mapping[str, Any],
        rx_ms: int,
        *,
        historical: bool = False,
    ) -> Stamp:
        """Timestamp one validated message received at wall time ``rx_ms``."""
        boot, up, t, sync = fields.get("boot"), fields.get("up"), fields.get("t"), fields.get("sync")
        if not (isinstance(boot, int) and isinstance(up, int)):
            # e.g. the last will, which has no common fields
            return Stamp(rx_ms, True, "rx")
        key = self._key(site, chair, boot)
        if sync == 1 and isinstance(t, int):
            skew = t - rx_ms
            if skew > self._skew_limit_ms or (not historical and self._clock_jumped(key, t - up, skew)):
                return self._untrusted_clock(key, up, rx_ms, historical, skew)
            if key not in self._boots:  # (a read; _learn looks again under the lock)
                boot_t = fields.get("boot_t")
                if isinstance(boot_t, int):
                    self._learn(key, _Boot(boot_t, "boot_t"))
            flagged = skew if not historical and -skew > self._skew_limit_ms else None
            if flagged is None and key not in self._boots:
                # a plausible synced clock also pins the boot time
                self._learn(key, _Boot(t - up, "synced"))
            return Stamp(t, False, "device", flagged)
        with self._lock:
            known = self._boots.get(key)
        if known is None and not historical:
            known = self._learn(key, _Boot(rx_ms - up, "rx_estimate"))
        if known is None:
            return Stamp(rx_ms, True, "rx")
        if known.source == "rx_estimate":
            return Stamp(known.boot_ms + up, True, "rx_estimate")
        return Stamp(known.boot_ms + up, False, known.source)

    def _clock_jumped(self, key: str, boot_ms: int, skew: int) -> bool:
        """A live reading from the past is normally a backlog (the broker held it
        while the gateway was away): its ``t - up`` still matches the boot time
        frozen from the box's clock.  If instead the clock jumped away from the
        receive time during this boot (a stale time command, a bad NTP answer),
        ``t - up`` moved: the clock is wrong, not the delivery late."""
        if -skew <= self._skew_limit_ms:
            return False
        with self._lock:
            known = self._boots.get(key)
        return (known is not None and known.source != "rx_estimate"
                and abs(boot_ms - known.boot_ms) > self._skew_limit_ms)

    def _untrusted_clock(self, key: str, up: int, rx_ms: int, historical: bool, skew: int) -> Stamp:
        """A synced clock that is off by more than the skew limit (a live reading
        from the past, or any reading from the future) is not believed: the
        reading is stored at boot time + ``up`` (the boot time frozen before,
        or estimated now from the receive time), so it can neither be taken
        for history (and miss its alarm) nor mask the live value on the
        dashboards until its claimed time arrives.  The device time stays in
        the stored point as ``dev_t``."""
        with self._lock:
            known = self._boots.get(key)
        if known is None and not historical:
            known = self._learn(key, _Boot(rx_ms - up, "rx_estimate"))
        if known is None:
            return Stamp(rx_ms, True, "rx", skew, clock_wrong=True)
        return Stamp(known.boot_ms + up, known.source == "rx_estimate", known.source, skew, clock_wrong=True)

    def _learn(self, key: str, boot: _Boot) -> _Boot:
        """Record ``boot`` unless one is already frozen; return the frozen one."""
        with self._lock:
            known = self._boots.get(key)
            if known is not None:
                return known
            self._boots[key] = boot
            while len(self._boots) > self._max_boots:
                self._boots.popitem(last=False)
            if boot.source != "rx_estimate":
                # re-derivable from the box's own clock: persisted by the next flush()
                self._dirty = True
                snapshot = None
            else:
                # an estimate exists nowhere else: persist it before the reading
                # it stamps can be acknowledged, so a replay gets the same time
                snapshot = self._snapshot()
        log.info("boot time for %s frozen at %d (%s)", key, boot.boot_ms, boot.source)
        if snapshot is not None:
            self._save(snapshot)
        return boot

    def _snapshot(self) -> dict[str, list[Any]]:
        self._dirty = False
        return {k: [v.boot_ms, v.source] for k, v in self._boots.items()}

    def flush(self) -> None:
        """Persist boot times learned from synced clocks (called about once a
        second, so a thousand chairs coming online cost one write, not 1,000)."""
        with self._lock:
            if not self._dirty:
                return
            snapshot = self._snapshot()
        self._save(snapshot)

    def _save(self, snapshot: dict[str, list[Any]]) -> None:
        if self._path is None:
            return
        try:
            # fsync'd: an estimated boot time is saved before the reading it
            # stamped is acknowledged, so a replay after a power cut gets the same time
            atomic_write_json(self._path, snapshot)
        except (OSError, ValueError) as exc:
            self.persist_errors += 1
            log.error("cannot persist boot times to %s: %s", self._path, exc)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable boot-time state %s: %s", path, exc)
            return
        if not isinstance(data, dict):
            log.error("ignoring boot-time state %s: not an object", path)
            return
        for key, value in data.items():
            if (
                isinstance(value, list)
                and len(value) == 2
                and type(value[0]) is int
                and value[1] in ("boot_t", "synced", "rx_estimate")
            ):
                self._boots[str(key)] = _Boot(value[0], value[1])
