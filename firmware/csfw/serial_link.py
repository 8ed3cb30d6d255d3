# USB-serial transport for a box without Wi-Fi (docs/contract.md, "USB-serial
# framing").  The box speaks the same contract as over MQTT, as text lines on
# its USB CDC port; `chairside serial-bridge` on the host republishes them to
# MQTT and passes commands back.
#
# Lines (ASCII, '\n'-terminated; topics contain no spaces, JSON no newlines):
#   box  -> host  P <pid> <qos> <retain> <topic> <payload>   publish
#   host -> box   A <pid>                                    broker accepted pid
#   host -> box   M <topic> <payload>                        message for the box
#   host -> box   H <epoch_ms>                               heartbeat + wall time
# The link counts as up while a line arrived from the host within
# HOST_SILENCE_MS; QoS 1 publishes stay in the box's outbox until their `A`.
try:
    from micropython import const
except ImportError:  # CPython host
    def const(x):
        return x

HOST_SILENCE_MS = const(15000)
MAX_LINE = const(1100)


class SerialLink:
    """Transport with the same surface the app uses for MQTT."""

    def __init__(self, write_fn, read_fn, max_inflight=8, on_message=None, on_puback=None,
                 on_time=None):
        self._write = write_fn
        self._read = read_fn
        self._buf = bytearray()
        self._pid = 0
        self.inflight = {}
        self.max_inflight = max_inflight
        self.on_message = on_message
        self.on_puback = on_puback
        self.on_time = on_time
        self._last_rx = None
        self.online = False
        self.overlong = 0  # lines dropped for exceeding MAX_LINE
        self.bad_lines = 0

    def window_free(self):
        return self.max_inflight - len(self.inflight)

    def publish(self, topic, msg, qos=0, retain=False, now=0):
        pid = 0
        if qos:
            if len(self.inflight) >= self.max_inflight:
                raise OSError(105)  # ENOBUFS: caller keeps the message
            self._pid = self._pid % 65535 + 1
            pid = self._pid
            self.inflight[pid] = now
        if isinstance(msg, str):
            msg = msg.encode()
        head = "P %d %d %d %s " % (pid, qos, 1 if retain else 0, topic)
        self._write(head.encode() + msg + b"\n")
        return pid

    def poll(self, now):
        data = self._read()
        while data:
            self._buf.extend(data)
            data = self._read()
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf = bytearray()
                    self.overlong += 1
                break
            line = bytes(self._buf[:nl])
            self._buf = self._buf[nl + 1:]
            if len(line) > MAX_LINE:
                self.overlong += 1
                continue
            self._handle(line, now)
        was_online = self.online
        self.online = self._last_rx is not None and now - self._last_rx <= HOST_SILENCE_MS
        if was_online and not self.online:
            self.inflight = {}  # the app re-spools what was unacknowledged

    def _handle(self, line, now):
        kind = line[:2]
        try:
            if kind == b"A ":
                pid = int(line[2:])
                if self.inflight.pop(pid, None) is not None and self.on_puback:
                    self.on_puback(pid)
            elif kind == b"M ":
                sp = line.find(b" ", 2)
                if sp < 0:
                    raise ValueError
                if self.on_message:
                    self.on_message(line[2:sp].decode(), line[sp + 1:])
            elif kind == b"H ":
                if self.on_time:
                    self.on_time(int(line[2:]))
            else:
                raise ValueError
        except ValueError:
            self.bad_lines += 1
            return
        self._last_rx = now
