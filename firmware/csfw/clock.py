# Uptime and wall clock for the box.
#
# Decisions in the firmware take `now` (uptime in ms, never wraps) as an
# argument; only the top-level loop reads the clock.  The per-byte parsers
# take tick_ms() instead: uptime mod 2**30, a small int on the 32-bit board
# at any uptime (now becomes a long int after ~12.4 days, and arithmetic on
# it allocates).  BoardClock wraps the
# MicroPython `time` module (ticks_ms wraps after ~12.4 days on the RP2040,
# so uptime is accumulated from ticks_diff).  firmware/host provides SimClock
# with the same interface for accelerated-time tests.


TICK_MASK = 0x3FFFFFFF  # 30 bits: a small int on the 32-bit board


class BoardClock:
    def __init__(self, time_module):
        self._time = time_module
        self._last_ticks = time_module.ticks_ms()
        self._uptime = 0
        self._tick = 0
        self._epoch_offset = 0  # ms to add to the RTC's epoch
        self.synced = False

    def now_ms(self):
        ticks = self._time.ticks_ms()
        d = self._time.ticks_diff(ticks, self._last_ticks)
        self._uptime += d  # a long int after ~12.4 days (allocates; once per loop)
        self._tick = (self._tick + d) & TICK_MASK
        self._last_ticks = ticks
        return self._uptime

    def tick_ms(self):
        """Uptime mod 2**30 as of the last now_ms(): always a small int, for
        the allocation-free byte parsers (compare with wrapped arithmetic)."""
        return self._tick

    def _rtc_ms(self):
        # time.time() is whole seconds since 1970 on the rp2 port; ticks give
        # the sub-second part only approximately, which is enough for 1 Hz.
        # int(): the Unix port's time.time() is a float (the contract's t is an int)
        return int(self._time.time()) * 1000

    def epoch_ms(self):
        return self._rtc_ms() + self._epoch_offset

    def set_epoch_ms(self, epoch_ms):
        self._epoch_offset = int(epoch_ms) - self._rtc_ms()
        self.synced = True

    def sleep_ms(self, ms):
        self._time.sleep_ms(ms)
