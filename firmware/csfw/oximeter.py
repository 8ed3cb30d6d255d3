# Pulse-oximeter driver: BCI module on a UART -> 1 Hz summary + health.
#
# poll(now) is called from the app loop as often as it likes; it drains the
# UART into a preallocated buffer and feeds the BCI parser byte by byte
# without allocating (the frame results are integer attributes).  now is only
# stored, never used in arithmetic, on this path.  summary(now) and
# health(now) run at 1 Hz / on status and may allocate.
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

from csfw import bci
from csfw.contract import (ST_NO_DATA, ST_NO_FINGER, ST_OK, ST_PROBE_OFF,
                           ST_SEARCHING)

NO_DATA_MS = const(2000)    # no frame for longer than this -> no_data
SILENT_MS = const(2000)     # no byte at all for longer than this -> silent
RX_BUF = const(64)
MAX_CHUNKS = const(8)       # bound the work per poll: 8 x 64 bytes
_CMASK = const(0x3FFFFFFF)

HEALTH_OK = "ok"
HEALTH_SILENT = "silent"
HEALTH_ERROR = "error"


class Oximeter:
    def __init__(self, uart, pr_invalid=bci.PR_INVALID):
        self._uart = uart
        self._buf = bytearray(RX_BUF)
        self.parser = bci.BciParser(pr_invalid)
        self._last_rx = None      # uptime ms of the last poll that read bytes
        self._last_frame = None   # uptime ms of the last poll that completed a frame
        self.rx_bytes = 0
        self.backlog = 0          # polls that hit MAX_CHUNKS with data still waiting

    def poll(self, now):
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
            for i in range(n):
                if parser.feed(buf[i]):
                    got_frame = True
            self._last_rx = now
        else:
            if uart.any():
                self.backlog = (self.backlog + 1) & _CMASK
        if got_frame:
            self._last_frame = now

    def _fresh(self, now):
        return self._last_frame is not None and now - self._last_frame <= NO_DATA_MS

    def state(self, now):
        """Contract sensor state (ST_*) from the latest frame."""
        if not self._fresh(now):
            return ST_NO_DATA
        p = self.parser
        f = p.flags
        if f & bci.F_PROBE_OFF:
            return ST_PROBE_OFF
        if f & bci.F_NO_FINGER:
            return ST_NO_FINGER
        if f & (bci.F_SEARCHING | bci.F_SEARCH_TOO_LONG) or p.spo2 < 0 or p.pr < 0:
            return ST_SEARCHING
        return ST_OK

    def summary(self, now):
        """(spo2|None, pr|None, sig, st) for the 1 Hz vitals message.

        Values are given only when st is ok: any other state means the numbers
        are not a patient reading (contract: messages.vitals.fields.st).
        """
        st = self.state(now)
        if st == ST_NO_DATA:
            return None, None, 0, st
        p = self.parser
        if st != ST_OK:
            return None, None, p.sig, st
        return p.spo2, p.pr, p.sig, st

    def health(self, now):
        """Contract status field oxi: ok | silent | error."""
        if self._last_rx is None or now - self._last_rx > SILENT_MS:
            return HEALTH_SILENT
        if not self._fresh(now):
            return HEALTH_ERROR   # bytes arrive but no valid frame (baud? wiring?)
        return HEALTH_OK

    def counters(self):
        p = self.parser
        return {"rx": self.rx_bytes, "frames": p.frames, "resync": p.resync,
                "garbage": p.garbage, "backlog": self.backlog}
