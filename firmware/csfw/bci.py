# BCI pulse-oximeter serial protocol (common OEM SpO2 modules).
#
# Frame layout (5 bytes, 4800 baud 8N1; bit 7 is the sync bit, set only in
# byte 1; no checksum).  docs/hardware-protocols.md cites the sources per
# field and marks where they disagree:
#
#   byte 1: 1 | beep | bit 5 | bit 4 | signal 3..0 (0-8)
#           bit 5: "probe unplugged" (vendor sheet) or "SpO2 decreasing"
#           (translated manual); bit 4: "no signal" or "searching too long"
#   byte 2: 0 | pleth 6..0 (plethysmogram sample, 0-127)
#   byte 3: 0 | PR bit 7 | searching | no finger (sensor error) | bar 3..0
#   byte 4: 0 | PR bits 6..0
#   byte 5: 0 | SpO2 6..0 (0-100 %; 127 = invalid)
#
# Frame rate: 60/s in one source, 100/s in another; the plausibility check
# (csfw.oximeter) accepts both.  Because byte 1 bits 4/5 may mean "SpO2
# decreasing", they never withhold valid numbers: the box reports a value
# whenever SpO2 and PR are valid and the frame stream is plausible.
#
# Pulse rate is 8 bits (PR bit 7 from byte 3); 255 is the invalid marker.
# Some 7-bit variants mark an invalid pulse rate with 127 instead: pass
# pr_invalid=127 for those modules.
#
# The parser consumes one byte at a time and allocates nothing: the frame is
# kept in a preallocated bytearray, results in integer attributes (-1 =
# invalid), counters are masked to stay small ints on MicroPython.  `run`
# counts frames received back to back with no stray byte between them (BCI
# frames carry no checksum: random bytes form a "frame" about once in 32
# tries, a run of 10 about once in 10^15).
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

FRAME_LEN = const(5)
FRAMES_PER_S = const(60)      # module output rate
BAUD = const(4800)

SYNC = const(0x80)
# byte 1
B1_BEEP = const(0x40)
B1_PROBE_UNPLUGGED = const(0x20)
B1_SEARCH_TOO_LONG = const(0x10)
B1_SIGNAL = const(0x0F)
# byte 3
B3_PR_BIT7 = const(0x40)
B3_SEARCHING = const(0x20)
B3_NO_FINGER = const(0x10)
B3_BAR = const(0x0F)

SPO2_INVALID = const(127)
PR_INVALID = const(255)
PR_INVALID_7BIT = const(127)

# BciParser.flags bits (our own, not wire bits)
F_BEEP = const(0x01)
F_PROBE_OFF = const(0x02)
F_NO_FINGER = const(0x04)
F_SEARCHING = const(0x08)
F_SEARCH_TOO_LONG = const(0x10)

_CMASK = const(0x3FFFFFFF)  # keep counters small ints on MicroPython
RUN_CAP = const(1000)


def encode_frame(sig, pleth, pr, spo2, probe_unplugged=False, no_finger=False,
                 searching=False, beep=False):
    """One BCI frame (5 bytes).  pr/spo2 None -> the invalid markers."""
    if sig < 0 or sig > 15:
        raise ValueError("sig")
    if pleth < 0 or pleth > 127:
        raise ValueError("pleth")
    if pr is None:
        pr = PR_INVALID
    elif pr < 0 or pr > 254:
        raise ValueError("pr")
    if spo2 is None:
        spo2 = SPO2_INVALID
    elif spo2 < 0 or spo2 > 100:
        raise ValueError("spo2")
    b1 = SYNC | sig
    if beep:
        b1 |= B1_BEEP
    if probe_unplugged:
        b1 |= B1_PROBE_UNPLUGGED
    b3 = pleth >> 3  # bar graph 0-15 follows the pleth amplitude
    if pr & 0x80:
        b3 |= B3_PR_BIT7
    if searching:
        b3 |= B3_SEARCHING
    if no_finger:
        b3 |= B3_NO_FINGER
    return bytes((b1, pleth, b3, pr & 0x7F, spo2))


def decode_frame(buf, pr_invalid=PR_INVALID):
    """5 bytes -> (sig, pleth, pr, spo2, probe_unplugged, no_finger, searching, beep).

    pr/spo2 are None when the module marks them invalid (or out of range);
    searching is also True when the module says "searching too long".
    Raises ValueError on a bad frame (length or sync bits).
    """
    if len(buf) != FRAME_LEN:
        raise ValueError("length")
    if not buf[0] & SYNC:
        raise ValueError("no sync")
    for i in range(1, FRAME_LEN):
        if buf[i] & SYNC:
            raise ValueError("sync in byte %d" % (i + 1))
    b1 = buf[0]
    b3 = buf[2]
    pr = buf[3] | (0x80 if b3 & B3_PR_BIT7 else 0)
    if pr == pr_invalid or pr == PR_INVALID:
        pr = None
    spo2 = buf[4]
    if spo2 > 100:
        spo2 = None
    return (b1 & B1_SIGNAL, buf[1], pr, spo2,
            bool(b1 & B1_PROBE_UNPLUGGED), bool(b3 & B3_NO_FINGER),
            bool(b3 & (B3_SEARCHING)) or bool(b1 & B1_SEARCH_TOO_LONG),
            bool(b1 & B1_BEEP))


class BciParser:
    """Byte-at-a-time BCI frame parser; allocation-free per byte.

    After feed() returns True, the last frame is in: sig, pleth, pr, spo2
    (-1 = invalid), flags (F_* bits).  Counters: frames, resync (partial
    frames abandoned because a new sync byte arrived), garbage (bytes dropped
    while hunting for a sync byte).
    """

    def __init__(self, pr_invalid=PR_INVALID):
        self._pr_invalid = pr_invalid
        self._buf = bytearray(FRAME_LEN)
        self._idx = 0
        self.sig = 0
        self.pleth = 0
        self.pr = -1
        self.spo2 = -1
        self.flags = 0
        self.frames = 0
        self.resync = 0
        self.garbage = 0
        self.run = 0  # frames back to back, no stray byte between them

    def reset(self):
        self._idx = 0
        self.run = 0

    def feed(self, b):
        if b & SYNC:
            if self._idx:
                self.resync = (self.resync + 1) & _CMASK
                self.run = 0
            self._buf[0] = b
            self._idx = 1
            return False
        if not self._idx:
            self.garbage = (self.garbage + 1) & _CMASK
            self.run = 0
            return False
        self._buf[self._idx] = b
        self._idx += 1
        if self._idx < FRAME_LEN:
            return False
        self._idx = 0
        self._decode()
        self.frames = (self.frames + 1) & _CMASK
        if self.run < RUN_CAP:
            self.run += 1
        return True

    def _decode(self):
        buf = self._buf
        b1 = buf[0]
        b3 = buf[2]
        self.sig = b1 & B1_SIGNAL
        self.pleth = buf[1]
        pr = buf[3]
        if b3 & B3_PR_BIT7:
            pr |= 0x80
        if pr == self._pr_invalid or pr == PR_INVALID:
            pr = -1
        self.pr = pr
        spo2 = buf[4]
        self.spo2 = spo2 if spo2 <= 100 else -1
        flags = 0
        if b1 & B1_BEEP:
            flags |= F_BEEP
        if b1 & B1_PROBE_UNPLUGGED:
            flags |= F_PROBE_OFF
        if b1 & B1_SEARCH_TOO_LONG:
            flags |= F_SEARCH_TOO_LONG
        if b3 & B3_NO_FINGER:
            flags |= F_NO_FINGER
        if b3 & B3_SEARCHING:
            flags |= F_SEARCHING
        self.flags = flags
