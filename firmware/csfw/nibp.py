# NIBP driver: SunTech Advantage OEM module on a UART, as an explicit state
# machine (protocol and sources: csfw/suntech.py, docs/hardware-protocols.md).
#
#   IDLE --start()--> STARTING --'O'--> MEASURING --'K'--> READING --data--> IDLE
#                                        (cuff pressure polled every 1 s)
#   stop() / 150 s limit -> ABORTING (abort, retried, 'A') -> IDLE
#
# One command is outstanding at a time.  The module announces the end of a
# measurement on its own ('K', or 'E' for an error); the box then asks for the
# BP data (24 bytes; error code 0 = valid).  No answer within CMD_TIMEOUT_MS ->
# resend, at most RETRIES times; then the measurement ends with an error
# result (err E_NO_RESPONSE) and health() says "silent" until the module
# answers again.  A measurement lasting longer than MAX_MEASURE_MS is aborted
# (deflate) and ends with an error result (err E_BOX_TIMEOUT).  While idle the
# module is asked for its cuff pressure every IDLE_PING_MS so health() stays
# true.
#
# Per-byte work (ResponseParser.feed) allocates nothing at any uptime: it
# runs on a 30-bit tick (csfw.clock); deadlines of the state machine use
# `now` and are computed only on transitions.
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

from csfw import suntech

IDLE = const(0)
STARTING = const(1)
MEASURING = const(2)
READING = const(3)
ABORTING = const(4)
STATE_NAMES = ("idle", "starting", "measuring", "reading", "aborting")

CMD_TIMEOUT_MS = const(1000)
RETRIES = const(3)              # resends after the first attempt
STATUS_EVERY_MS = const(1000)
MAX_MEASURE_MS = const(150000)
IDLE_PING_MS = const(10000)
RX_BUF = const(32)
MAX_CHUNKS = const(4)

HEALTH_OK = "ok"
HEALTH_SILENT = "silent"
HEALTH_ERROR = "error"

_CMD_START = suntech.command(suntech.START_BP)
_CMD_ABORT = suntech.command(suntech.ABORT_BP)
_CMD_CUFF = suntech.command(suntech.GET_CUFF_PRESSURE)
_CMD_BP_DATA = suntech.command(suntech.GET_BP_DATA)


class Nibp:
    def __init__(self, uart):
        self._uart = uart
        self._buf = bytearray(RX_BUF)
        self.parser = suntech.ResponseParser()
        self.state = IDLE
        self.inflating = False
        self.interval_s = 0
        self._next_auto = None
        self._limit = 0
        self._bad_mark = 0
        # outstanding command
        self._cmd = None
        self._tries = 0
        self._deadline = 0
        self._next_status = 0
        self._idle_ping = None
        self._health = HEALTH_SILENT
        self._result = None
        self.cuff_mmhg = -1          # last cuff pressure the module reported
        self.last_module_err = 0
        self._error_seen = False     # the module sent 'E' during this measurement
        self.timeouts = 0
        self.measurements = 0
        self.failures = 0

    # --- public API -------------------------------------------------------
    @property
    def busy(self):
        return self.state != IDLE

    def state_name(self):
        return STATE_NAMES[self.state]

    def start(self, now):
        """Start one measurement; False if one is already running."""
        if self.state != IDLE:
            return False
        self._cmd = None
        self.state = STARTING
        self.inflating = True
        self._limit = now + MAX_MEASURE_MS
        if self.interval_s:
            self._next_auto = now + self.interval_s * 1000
        self._send(_CMD_START, now)
        return True

    def stop(self, now):
        """Abort a running measurement and deflate (no result is reported)."""
        if self.state == IDLE or self.state == ABORTING:
            return
        self.inflating = False
        self._abort(now)

    def set_interval(self, s, now):
        """Automatic measurements every s seconds (0 = off); first one at now + s."""
        self.interval_s = s
        self._next_auto = now + s * 1000 if s else None

    def health(self, now):
        return self._health

    def poll(self, now, tick=None):
        """Drive the state machine; returns (ok, sys, dia, map, pr, err) once
        when a measurement completes or fails, else None.  tick: the clock's
        30-bit tick for the byte parser (derived from now when not given)."""
        self._result = None
        if tick is None:
            tick = now & suntech.TICK_MASK
        self._read(now, tick)
        if self._cmd is not None and now >= self._deadline:
            self._timeout(now)
        st = self.state
        if st == MEASURING and self._cmd is None and now >= self._next_status:
            self._next_status = now + STATUS_EVERY_MS
            self._send(_CMD_CUFF, now)
        if (st == STARTING or st == MEASURING or st == READING) and now > self._limit:
            self._fail(suntech.E_BOX_TIMEOUT)
            self._abort(now)
        if self.state == IDLE and self._cmd is None:
            if self._next_auto is not None and now >= self._next_auto:
                self.start(now)
            elif self._idle_ping is None or now >= self._idle_ping:
                self._idle_ping = now + IDLE_PING_MS
                self._send(_CMD_CUFF, now)
        return self._result

    def counters(self):
        p = self.parser
        return {"frames": p.frames, "bad_checksum": p.bad_checksum,
                "bad_length": p.bad_length, "gaps": p.gaps, "garbage": p.garbage,
                "timeouts": self.timeouts, "measurements": self.measurements,
                "failures": self.failures}

    # --- internals ----------------------------------------------------------
    def _send(self, cmd, now):
        self._cmd = cmd
        self._tries = 0
        self._deadline = now + CMD_TIMEOUT_MS
        self._bad_mark = self._bad_count()
        self._uart.write(cmd)

    def _bad_count(self):
        p = self.parser
        return p.bad_checksum + p.bad_length + p.garbage

    def _timeout(self, now):
        self.timeouts += 1
        if self._tries < RETRIES:
            self._tries += 1
            self._deadline = now + CMD_TIMEOUT_MS
            self._uart.write(self._cmd)
            return
        self._cmd = None
        # bytes came back but never a valid frame -> error; nothing -> silent
        self._health = HEALTH_ERROR if self._bad_count() != self._bad_mark else HEALTH_SILENT
        st = self.state
        if st == STARTING or st == MEASURING or st == READING:
            self._fail(suntech.E_NO_RESPONSE)
        self.state = IDLE
        self._idle_ping = now + IDLE_PING_MS

    def _abort(self, now):
        self.state = ABORTING
        self._send(_CMD_ABORT, now)

    def _fail(self, err):
        self.failures += 1
        self.inflating = False
        self._result = (False, None, None, None, None, err)

    def _read(self, now, tick):
        uart = self._uart
        buf = self._buf
        parser = self.parser
        for _ in range(MAX_CHUNKS):
            n = uart.any()
            if not n:
                return
            if n > RX_BUF:
                n = RX_BUF
            n = uart.readinto(buf, n)
            if not n:
                return
            for i in range(n):
                if parser.feed(buf[i], tick):
                    self._on_frame(now)

    def _on_frame(self, now):
        p = self.parser.payload
        n = self.parser.n
        st = self.state
        if n == suntech.N_CHAR and (p[0] == suntech.R_DONE or p[0] == suntech.R_ERROR):
            # sent by the module on its own when a measurement ends
            self._health = HEALTH_OK
            if st == MEASURING or st == STARTING:
                self._error_seen = p[0] == suntech.R_ERROR
                self.state = READING
                self._send(_CMD_BP_DATA, now)
            return
        cmd = self._cmd
        if cmd is None:
            return  # unsolicited or late answer: ignore
        try:
            if cmd is _CMD_CUFF and n == suntech.N_CUFF:
                self._cmd = None
                self._health = HEALTH_OK
                self.cuff_mmhg = suntech.decode_cuff(p[:n])
            elif cmd is _CMD_START and n == suntech.N_CHAR and p[0] == suntech.R_ACK:
                self._cmd = None
                self._health = HEALTH_OK
                if st == STARTING:
                    self.state = MEASURING
                    self._error_seen = False
                    self._next_status = now + STATUS_EVERY_MS
            elif cmd is _CMD_BP_DATA and n == suntech.N_BP_DATA:
                self._cmd = None
                self._health = HEALTH_OK
                sys_, dia, map_, pr, err = suntech.decode_bp_data(p[:n])
                self.last_module_err = err
                self.state = IDLE
                self._idle_ping = now + IDLE_PING_MS
                if err or self._error_seen:
                    self._fail(err or suntech.E_MODULE_ERROR)
                else:
                    self.measurements += 1
                    self.inflating = False
                    self._result = (True, sys_, dia, map_, pr, 0)
            elif cmd is _CMD_ABORT and n == suntech.N_CHAR and p[0] == suntech.R_ABORTED:
                self._cmd = None
                self._health = HEALTH_OK
                self.state = IDLE
                self._idle_ping = now + IDLE_PING_MS
        except ValueError:
            # malformed data for the expected answer: module misbehaving
            self._health = HEALTH_ERROR
            self._cmd = None
            if st == STARTING or st == MEASURING or st == READING:
                self._fail(suntech.E_BAD_RESPONSE)
                self._abort(now)
