# SunTech Advantage OEM NIBP module serial codec (pure; no I/O).
#
# Sources (docs/hardware-protocols.md cites them per field):
#  [D] ak-git/DesktopFX, Communication/src/main/java/com/ak/appliance/suntech/
#      comm/bytes/{NIBPRequest,NIBPResponse,NIBPProtocolByte}.java and the test
#      .../src/test/java/.../suntech/comm/converter/NIBPConverterTest.java,
#      which quotes the module manual byte by byte;
#  [J] aiswariyas/januity_i_modified, .../JanuityUI/Modules/BloodPressure.cs
#      (a kiosk driver of the same module).
#
#   command   3A  body...  CHK      ':' + command bytes + a checksum byte that
#                                   makes the byte sum 0 mod 256 [D][J]
#             start BP 3A 20 A6, abort 3A 79 01 00 4C, get BP data
#             3A 79 03 00 4A, get cuff pressure 3A 79 05 00 48 [D][J]
#   response  3E  LEN  data...  CHK  '>' + LEN = bytes in the whole frame
#                                   (start, LEN, data, CHK), sum 0 mod 256 [D]
#     LEN 4,  one character: 'O' ack of a command, 'K' measurement complete
#             (sent by the module on its own), 'A' abort acknowledged,
#             'E' error, 'S' sleep [J]; 'K' also [D]
#     LEN 5,  cuff pressure in mmHg, 16-bit little-endian [D][J]
#     LEN 24, BP data: SYS(16) DIA(16) beats status TC[8] HR spare MAP(16)
#             error spare spare, 16-bit values little-endian [D]; error code 0
#             = valid result [J]
#
# Assumptions (not confirmed by a source): which command each 'O' answers
# (we expect it after start BP only); the meaning of `status`, `beats` and
# the test codes (ignored); the values of non-zero error codes (passed on
# as they are); that 'E' ends the measurement (the box then reads the BP
# data for the error code).
#
# The parsers consume one byte at a time with integer state and a
# preallocated buffer.  Time is a 30-bit wrapping tick (csfw.clock.tick_ms),
# compared with wrapped arithmetic, so no byte allocates at any uptime.
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

BAUD = const(9600)
CMD_START = const(0x3A)     # ':'
RESP_START = const(0x3E)    # '>'

START_BP = b"\x20"
ABORT_BP = b"\x79\x01\x00"
GET_BP_DATA = b"\x79\x03\x00"
GET_CUFF_PRESSURE = b"\x79\x05\x00"

# one-character answers (LEN 4) [J]
R_ACK = const(0x4F)         # 'O'
R_DONE = const(0x4B)        # 'K' measurement complete (unsolicited)
R_ABORTED = const(0x41)     # 'A'
R_ERROR = const(0x45)       # 'E'
R_SLEEP = const(0x53)       # 'S'

# data length (frame minus start, LEN, checksum) of each answer
N_CHAR = const(1)
N_CUFF = const(2)
N_BP_DATA = const(21)

# box-side codes used in results when the module could not say
E_NONE = const(0)
E_MODULE_ERROR = const(0xFA)  # the module sent 'E' but its BP data held no code
E_ABORTED = const(0xFB)
E_BAD_RESPONSE = const(0xFC)
E_BOX_TIMEOUT = const(0xFD)   # measurement exceeded the box's 150 s limit
E_NO_RESPONSE = const(0xFE)   # module silent after retries

MAX_PAYLOAD = const(21)       # the longest answer to our commands (BP data)
MAX_FRAME = const(24)
MIN_FRAME = const(4)          # start, len, >=1 data byte, checksum
FRAME_TIMEOUT_MS = const(200)  # a 24-byte frame takes ~25 ms at 9600 baud
_CMASK = const(0x3FFFFFFF)
TICK_MASK = const(0x3FFFFFFF)
TICK_HALF = const(0x20000000)

# command body length by first body byte
_BODY_LEN = {0x20: 1, 0x79: 3}


def tick_diff(a, b):
    """a - b for 30-bit wrapping ticks (like time.ticks_diff); small ints only."""
    d = (a - b) & TICK_MASK
    if d >= TICK_HALF:
        d = d - TICK_MASK - 1  # (TICK_MASK + 1 is no small int on the board)
    return d


def checksum(data):
    """The byte that makes sum(data) + byte == 0 mod 256."""
    s = 0
    for b in data:
        s += b
    return (-s) & 0xFF


def command(body):
    """Full command frame: 3A + body + checksum."""
    frame = bytearray(len(body) + 2)
    frame[0] = CMD_START
    for i in range(len(body)):
        frame[i + 1] = body[i]
    frame[-1] = checksum(frame[:-1])
    return bytes(frame)


def response(payload):
    """Full response frame: 3E + LEN + payload + checksum (module side)."""
    n = len(payload) + 3
    if len(payload) < 1 or len(payload) > MAX_PAYLOAD:
        raise ValueError("payload length")
    frame = bytearray(n)
    frame[0] = RESP_START
    frame[1] = n
    for i in range(len(payload)):
        frame[i + 2] = payload[i]
    frame[-1] = checksum(frame[:-1])
    return bytes(frame)


def _u16(p, i):
    return p[i] | (p[i + 1] << 8)


def char_payload(code):
    return bytes((code,))


def cuff_payload(mmhg):
    """Cuff pressure answer data (module side): 16-bit little-endian mmHg."""
    return bytes((mmhg & 0xFF, (mmhg >> 8) & 0xFF))


def decode_cuff(payload):
    if len(payload) != N_CUFF:
        raise ValueError("not cuff pressure")
    return _u16(payload, 0)


def bp_data_payload(sys_, dia, map_, hr, err=0, beats=0, status=0):
    """BP data answer data, 21 bytes (module side), layout [D]."""
    out = bytearray(N_BP_DATA)
    out[0] = sys_ & 0xFF
    out[1] = (sys_ >> 8) & 0xFF
    out[2] = dia & 0xFF
    out[3] = (dia >> 8) & 0xFF
    out[4] = beats & 0xFF
    out[5] = status & 0xFF
    # out[6:14]: test codes, out[15]: spare
    out[14] = hr & 0xFF
    out[16] = map_ & 0xFF
    out[17] = (map_ >> 8) & 0xFF
    out[18] = err & 0xFF
    return bytes(out)


def decode_bp_data(payload):
    """BP data -> (sys, dia, map, hr, err); values None when err != 0."""
    if len(payload) != N_BP_DATA:
        raise ValueError("not bp data")
    err = payload[18]
    if err:
        return None, None, None, None, err
    return _u16(payload, 0), _u16(payload, 2), _u16(payload, 16), payload[14], 0


class _FrameHunter:
    """Shared start-of-frame logic of both parsers: drop a frame that stalls
    longer than FRAME_TIMEOUT_MS (a gap resets, as ESPHome's UART parsers do)
    and hunt for the start byte.  Returns the state to continue in; 0 means
    the byte was consumed by the hunt.  Allocation-free."""

    def _hunt(self, b, tick, start):
        st = self._state
        if st and tick_diff(tick, self._t0) > FRAME_TIMEOUT_MS:
            self.gaps = (self.gaps + 1) & _CMASK
            st = self._state = 0
        if st == 0:
            if b == start:
                self._state = 1
                self._sum = b
                self._t0 = tick
            else:
                self.garbage = (self.garbage + 1) & _CMASK
        return st


class ResponseParser(_FrameHunter):
    """Byte-at-a-time response parser (box side).

    feed(b, tick) -> True when a valid frame completed; its data is
    payload[0:n].  tick: csfw.clock tick (30-bit wrapping ms).  A frame that has not completed FRAME_TIMEOUT_MS after its
    start byte is dropped (gap).  Counters: frames, bad_checksum, bad_length,
    gaps, garbage.
    """

    def __init__(self):
        self.payload = bytearray(MAX_PAYLOAD)
        self.n = 0
        self._state = 0     # 0 hunt, 1 length, 2 data
        self._len = 0
        self._idx = 0
        self._sum = 0
        self._t0 = 0
        self.frames = 0
        self.bad_checksum = 0
        self.bad_length = 0
        self.gaps = 0
        self.garbage = 0

    def reset(self):
        self._state = 0

    def feed(self, b, tick):
        st = self._hunt(b, tick, RESP_START)
        if st == 0:
            return False
        if st == 1:
            if b < MIN_FRAME or b > MAX_FRAME:
                self.bad_length = (self.bad_length + 1) & _CMASK
                self._state = 0
                return False
            self._len = b
            self._sum = (self._sum + b) & 0xFF
            self._idx = 0
            self._state = 2
            return False
        self._sum = (self._sum + b) & 0xFF
        if self._idx < self._len - 3:
            self.payload[self._idx] = b
            self._idx += 1
            return False
        # b was the checksum byte
        self._state = 0
        if self._sum:
            self.bad_checksum = (self.bad_checksum + 1) & _CMASK
            return False
        self.n = self._idx
        self.frames = (self.frames + 1) & _CMASK
        return True


class CommandParser(_FrameHunter):
    """Byte-at-a-time command parser (module side, used by the simulator).

    feed(b, now) -> True when a valid command completed; its body is
    body[0:n].  Counters: frames, bad_checksum, unknown, gaps, garbage.
    """

    def __init__(self):
        self.body = bytearray(4)
        self.n = 0
        self._state = 0     # 0 hunt, 1 first body byte, 2 rest of body, 3 checksum
        self._len = 0
        self._sum = 0
        self._t0 = 0
        self.frames = 0
        self.bad_checksum = 0
        self.unknown = 0
        self.gaps = 0
        self.garbage = 0

    def feed(self, b, tick):
        st = self._hunt(b, tick, CMD_START)
        if st == 0:
            return False
        self._sum = (self._sum + b) & 0xFF
        if st == 1:
            n = _BODY_LEN.get(b, 0)
            if not n:
                self.unknown = (self.unknown + 1) & _CMASK
                self._state = 0
                return False
            self._len = n
            self.body[0] = b
            self.n = 1
            self._state = 2 if n > 1 else 3
            return False
        if st == 2:
            self.body[self.n] = b
            self.n += 1
            if self.n == self._len:
                self._state = 3
            return False
        self._state = 0
        if self._sum:
            self.bad_checksum = (self.bad_checksum + 1) & _CMASK
            return False
        self.frames = (self.frames + 1) & _CMASK
        return True
