"""Simulated clock for running the firmware on CPython in accelerated time.

Same interface as ``csfw.clock.BoardClock``: ``now_ms()`` (uptime, never
wraps), ``epoch_ms()``, ``synced``, ``set_epoch_ms()``, ``sleep_ms()``.
Time only moves when the test or simulator calls ``advance()``, so 60 s of a
scripted patient can run in well under a second.
"""


class SimClock:
    def __init__(self, epoch_at_boot_ms=1_790_000_000_000, synced=True, rtc_unsynced_ms=1_609_459_200_000):
        self._uptime = 0
        self._true_epoch_at_boot = epoch_at_boot_ms
        # An unsynced Pico RTC starts at a fixed date (2021-01-01 here).
        self._rtc_at_boot = epoch_at_boot_ms if synced else rtc_unsynced_ms
        self.synced = synced

    def now_ms(self):
        return self._uptime

    def tick_ms(self):
        """csfw.clock.BoardClock.tick_ms: uptime mod 2**30."""
        return self._uptime & 0x3FFFFFFF

    def advance(self, ms):
        self._uptime += int(ms)

    def true_epoch_ms(self):
        """The real wall time in the simulated world (what NTP would say)."""
        return self._true_epoch_at_boot + self._uptime

    def epoch_ms(self):
        return self._rtc_at_boot + self._uptime

    def set_epoch_ms(self, epoch_ms):
        self._rtc_at_boot = epoch_ms - self._uptime
        self.synced = True

    def sleep_ms(self, ms):
        self.advance(ms)
