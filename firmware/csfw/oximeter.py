# Pulse-oximeter driver: BCI module on a UART -> 1 Hz summary + health.
#
# poll(now, tick) is called from the app loop as often as it likes; it drains
# the UART into a preallocated buffer and feeds the BCI parser byte by byte
# without allocating at any uptime (`now` is only stored; the plausibility
# window uses the clock's 30-bit tick).  summary(now) and health(now) run at
# 1 Hz / on status and may allocate.
#
# Plausibility (BCI frames have no checksum; issue 17): a frame's numbers are
# used only when it ends a run of at least RUN_FRAMES frames received back to
# back (no stray byte, no abandoned partial frame between them) and that run
# arrived at a frame rate of at least MIN_RATE per second (sources give 60
# and 100 per second).  Random bytes, a wrong baud rate or a half-unplugged
# line break the run, so nothing is reported: the state is no_data and, once
# bytes have arrived for NO_DATA_MS without a plausible frame, health() says
# "error" (bytes arrive, no stable frame stream).
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

from csfw import bci
from csfw.contract import (ST_NO_DATA, ST_NO_FINGER, ST_OK, ST_PROBE_OFF,
                           ST_SEARCHING)

NO_DATA_MS = const(2000)    # no plausible frame for longer than this -> no_data
SILENT_MS = const(2000)     # no byte at all for longer than this -> silent
RX_BUF = const(64)
MAX_CHUNKS = const(8)       # bound the work per poll: 8 x 64 bytes
RUN_FRAMES = const(10)      # frames back to back before numbers are believed
MIN_RATE = const(40)        # frames/s: below both documented rates (60, 100)
SLACK_MS = const(100)       # poll granularity allowed in the rate check
_CMASK = const(0x3FFFFFFF)
TICK_MASK = const(0x3FFFFFFF)
TICK_HALF = const(0x20000000)

HEALTH_OK = "ok"
HEALTH_SILENT = "silent"
HEALTH_ERROR = "error"


def _tick_diff(a, b):
    d = (a - b) & TICK_MASK
    if d >= TICK_HALF:
        d = d - TICK_MASK - 1
    return d


class Oximeter:
    def __init__(self, uart, pr_invalid=bci.PR_INVALID):
        self._uart = uart
        self._buf = bytearray(RX_BUF)
        self.parser = bci.BciParser(pr_invalid)
        self._last_rx = None      # uptime ms of the last poll that read bytes
        self._last_frame = None   # uptime ms of the last poll with a plausible frame
        self._rx_tick = 0         # tick of the last poll that read bytes
        self._rx_since = None     # uptime ms when bytes started to arrive (after silence)
        self._run_t0 = 0          # tick of the first frame of the current block
        self._locked = False      # the current run passed the plausibility check
        self.rx_bytes = 0
        self.backlog = 0          # polls that hit MAX_CHUNKS with data still waiting
        self.implausible = 0      # well-formed frames not believed (short or slow run)
        # the last plausible frame
        self.spo2 = -1
        self.pr = -1
        self.sig = 0
        self.flags = 0

    def poll(self, now, tick=None):
        if tick is None:
            tick = now & TICK_MASK
        uart = self._uart
        buf = self._buf
        parser = self.parser
        got_frame = False
        for _ in range(MAX_CHUNKS):
            n = uart.any()
            if not n:
                break
            if n > RX_BUF:
                n = RX_BUF
            n = uart.readinto(buf, n)
            if not n:
                break
            self.rx_bytes = (self.rx_bytes + n) & _CMASK
            if self._rx_since is None or _tick_diff(tick, self._rx_tick) > SILENT_MS:
                self._rx_since = now  # the module (re)started talking
            self._rx_tick = tick
            for i in range(n):
                if parser.feed(buf[i]):
                    if self._plausible(tick):
                        self.spo2 = parser.spo2
                        self.pr = parser.pr
                        self.sig = parser.sig
                        self.flags = parser.flags
                        got_frame = True
                    else:
                        self.implausible = (self.implausible + 1) & _CMASK
            self._last_rx = now
        else:
            if uart.any():
                self.backlog = (self.backlog + 1) & _CMASK
        if got_frame:
            self._last_frame = now

    def _plausible(self, tick):
        """Checked in blocks of RUN_FRAMES frames of one run: the block must
        have come at MIN_RATE or faster (SLACK_MS for the poll granularity);
        the verdict holds until the next block or the run breaks."""
        run = self.parser.run
        if run == 1:
            self._run_t0 = tick
            self._locked = False
        elif run % RUN_FRAMES == 0 or run == bci.RUN_CAP:
            d = (tick - self._run_t0) & TICK_MASK
            if d >= TICK_HALF:
                d = d - TICK_MASK - 1
            self._locked = d * MIN_RATE <= (RUN_FRAMES - 1) * 1000 + MIN_RATE * SLACK_MS
            self._run_t0 = tick
            if run == bci.RUN_CAP:
                self.parser.run = RUN_FRAMES  # keep counting blocks past the cap
        return self._locked

    def _fresh(self, now):
        return self._last_frame is not None and now - self._last_frame <= NO_DATA_MS

    def state(self, now):
        """Contract sensor state (ST_*) from the latest plausible frame.

        Valid SpO2 and PR are reported whatever byte 1 bits 4/5 say (their
        meaning differs between sources: one says "SpO2 decreasing"); the
        byte 3 flags, on which the sources agree, withhold them."""
        if not self._fresh(now):
            return ST_NO_DATA
        f = self.flags
        if f & bci.F_NO_FINGER:
            return ST_NO_FINGER
        if self.spo2 >= 0 and self.pr >= 0 and not f & bci.F_SEARCHING:
            return ST_OK
        if f & bci.F_PROBE_OFF:
            return ST_PROBE_OFF
        return ST_SEARCHING

    def summary(self, now):
        """(spo2|None, pr|None, sig, st) for the 1 Hz vitals message.

        Values are given only when st is ok: any other state means the numbers
        are not a patient reading (contract: messages.vitals.fields.st).
        """
        st = self.state(now)
        if st == ST_NO_DATA:
            return None, None, 0, st
        if st != ST_OK:
            return None, None, self.sig, st
        return self.spo2, self.pr, self.sig, st

    def health(self, now):
        """Contract status field oxi: ok | silent | error."""
        if self._last_rx is None or now - self._last_rx > SILENT_MS:
            return HEALTH_SILENT
        if not self._fresh(now):
            # bytes arrive but no plausible frame stream (baud? wiring? noise?)
            # for NO_DATA_MS: the first frames after a (re)start are still
            # being checked, which is not a fault
            since = self._rx_since
            if self._last_frame is not None and self._last_frame > since:
                since = self._last_frame
            if now - since <= NO_DATA_MS:
                return HEALTH_OK
            return HEALTH_ERROR
        return HEALTH_OK

    def counters(self):
        p = self.parser
        return {"rx": self.rx_bytes, "frames": p.frames, "resync": p.resync,
                "garbage": p.garbage, "backlog": self.backlog,
                "implausible": self.implausible}
