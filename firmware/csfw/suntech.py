# SunTech-Advantage-style OEM NIBP serial codec (pure; no I/O).
#
# Facts from the public interface description of SunTech-Advantage-style
# modules (docs/hardware-protocols.md): 9600 baud 8N1; a command is 0x3A (':') + command bytes +
# one checksum byte that makes the byte sum of the whole frame 0 mod 256
# (start BP is 3A 20 A6); responses carry a length byte; the BP data response
# holds systolic, diastolic, pulse and MAP as little-endian 16-bit values.
#
# Layouts chosen here where the public summary is silent (documented in
# docs/hardware-protocols.md; check against the module's own interface
# manual before connecting a real module):
#
#   command   3A  body...  CHK              body length fixed per first byte:
#             0x20 (start BP) -> 1 byte; 0x79 (query/control) -> 3 bytes
#   response  3E  LEN  payload...  CHK      '>' start; LEN = bytes in the
#             whole frame (start, LEN, payload, CHK); byte sum 0 mod 256
#
#   payload[0] echoes the command: 0x20 start ack, 0x01 abort ack,
#   0x11 status, 0x03 BP data
#     status  : 11 STATE ERR                 STATE = ST_* below
#     BP data : 03 SYS SYS DIA DIA MAP MAP PR PR ERR   (16-bit little-endian)
#
# The parsers consume one byte at a time with integer state and a
# preallocated buffer.  `now` is compared with a per-frame deadline (computed
# once per frame), never used in per-byte arithmetic.
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

BAUD = const(9600)
CMD_START = const(0x3A)     # ':'
RESP_START = const(0x3E)    # '>'

START_BP = b"\x20"
ABORT_BP = b"\x79\x01\x00"
GET_STATUS = b"\x79\x11\x00"
GET_BP_DATA = b"\x79\x03\x00"

# payload[0] of each response
R_START = const(0x20)
R_ABORT = const(0x01)
R_STATUS = const(0x11)
R_BP_DATA = const(0x03)

# module states in the status response
ST_IDLE = const(0)
ST_INFLATING = const(1)
ST_MEASURING = const(2)     # deflating, reading oscillations
ST_DONE = const(3)          # result ready (GET_BP_DATA)
ST_ERROR = const(4)
STATE_NAMES = ("idle", "inflating", "measuring", "done", "error")

# module error codes (0 = none)
E_NONE = const(0)
E_CUFF_LEAK = const(1)
E_OVERPRESSURE = const(2)
E_MOTION = const(3)
E_WEAK_SIGNAL = const(4)
E_OUT_OF_RANGE = const(5)
E_MODULE_TIMEOUT = const(6)
# box-side codes used in results when the module could not say
E_ABORTED = const(0xFB)
E_BAD_RESPONSE = const(0xFC)
E_BOX_TIMEOUT = const(0xFD)   # measurement exceeded the box's 150 s limit
E_NO_RESPONSE = const(0xFE)   # module silent after retries

MAX_PAYLOAD = const(16)
MIN_FRAME = const(4)          # start, len, >=1 payload byte, checksum
FRAME_TIMEOUT_MS = const(200)  # a 19-byte frame takes ~20 ms at 9600 baud
_CMASK = const(0x3FFFFFFF)

# command body length by first body byte
_BODY_LEN = {0x20: 1, 0x79: 3}


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


def bp_data_payload(sys_, dia, map_, pr, err=0):
    """BP data payload (module side)."""
    return bytes((R_BP_DATA, sys_ & 0xFF, sys_ >> 8, dia & 0xFF, dia >> 8,
                  map_ & 0xFF, map_ >> 8, pr & 0xFF, pr >> 8, err))


def decode_bp_data(payload):
    """BP data payload -> (sys, dia, map, pr, err); values None when err != 0."""
    if len(payload) != 10 or payload[0] != R_BP_DATA:
        raise ValueError("not bp data")
    err = payload[9]
    if err:
        return None, None, None, None, err
    return (_u16(payload, 1), _u16(payload, 3), _u16(payload, 5),
            _u16(payload, 7), 0)


def status_payload(state, err=0):
    return bytes((R_STATUS, state, err))


def decode_status(payload):
    """Status payload -> (state, err); state one of ST_*."""
    if len(payload) != 3 or payload[0] != R_STATUS:
        raise ValueError("not status")
    state = payload[1]
    if state > ST_ERROR:
        raise ValueError("state")
    return state, payload[2]


def state_name(state):
    return STATE_NAMES[state]


class _FrameHunter:
    """Shared start-of-frame logic of both parsers: drop a frame that stalls
    longer than FRAME_TIMEOUT_MS (a gap resets, as ESPHome's UART parsers do)
    and hunt for the start byte.  Returns the state to continue in; 0 means
    the byte was consumed by the hunt.  Allocation-free."""

    def _hunt(self, b, now, start):
        st = self._state
        if st and now > self._deadline:
            self.gaps = (self.gaps + 1) & _CMASK
            st = self._state = 0
        if st == 0:
            if b == start:
                self._state = 1
                self._sum = b
                self._deadline = now + FRAME_TIMEOUT_MS
            else:
                self.garbage = (self.garbage + 1) & _CMASK
        return st


class ResponseParser(_FrameHunter):
    """Byte-at-a-time response parser (box side).

    feed(b, now) -> True when a valid frame completed; its payload is
    payload[0:n].  A frame that has not completed FRAME_TIMEOUT_MS after its
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
        self._deadline = 0
        self.frames = 0
        self.bad_checksum = 0
        self.bad_length = 0
        self.gaps = 0
        self.garbage = 0

    def reset(self):
        self._state = 0

    def feed(self, b, now):
        st = self._hunt(b, now, RESP_START)
        if st == 0:
            return False
        if st == 1:
            if b < MIN_FRAME or b > MAX_PAYLOAD + 3:
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
        self._deadline = 0
        self.frames = 0
        self.bad_checksum = 0
        self.unknown = 0
        self.gaps = 0
        self.garbage = 0

    def feed(self, b, now):
        st = self._hunt(b, now, CMD_START)
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
