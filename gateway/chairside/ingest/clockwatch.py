"""Which chairs' clocks the gateway does not believe (technical alarm ``clock_wrong``).

Raised on the first live reading whose synced clock the timebase refuses
(:attr:`chairside.ingest.timebase.Stamp.clock_wrong`: a time in the future,
or a clock that jumped away from the receive time during the boot); cleared
by the first live synced reading whose clock is believed again.  Meanwhile
readings are stored at the boot-time estimate and alarmed on as live, and
the gateway sends the box the time.
"""

from __future__ import annotations

from typing import Literal

from chairside.ingest.timebase import Stamp

CLOCK_WRONG_ALARM = "clock_wrong"
MAX_CHAIRS = 10_000

Change = Literal["raised", "cleared"]


class ClockWatch:
    def __init__(self) -> None:
        self._wrong: set[tuple[str, str]] = set()

    def note(self, site: str, chair: str, stamp: Stamp, historical: bool) -> Change | None:
        """The alarm change this reading causes, if any."""
        key = (site, chair)
        if stamp.clock_wrong:
            if key in self._wrong or len(self._wrong) >= MAX_CHAIRS:
                return None
            self._wrong.add(key)
            return "raised"
        if key in self._wrong and not historical and stamp.source == "device" and stamp.skew_ms is None:
            self._wrong.discard(key)
            return "cleared"
        return None
