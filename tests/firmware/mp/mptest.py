# Minimal test helpers that work on MicroPython and CPython alike.
import os

# Firmware unit tests in this folder are plain `def test_*():` functions using
# `assert` and these helpers, so the same file runs under pytest on CPython and
# under tools/mpvm (the official MicroPython WebAssembly port).


def raises(exc_type, fn, *args, **kwargs):
    """Assert that fn(*args, **kwargs) raises exc_type; return the exception."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError("expected " + exc_type.__name__)


def hexbytes(text):
    """'3A 20 A6' -> b'\\x3a\\x20\\xa6' (datasheet-style byte listings)."""
    out = bytearray()
    for part in text.split():
        out.append(int(part, 16))
    return bytes(out)


class TinyUart:
    """Minimal UART stand-in: bytes queued with push() come out of readinto()."""

    def __init__(self):
        self.rx = bytearray()
        self.pos = 0
        self.tx = bytearray()

    def push(self, data):
        self.rx.extend(data)

    def any(self):
        return len(self.rx) - self.pos

    def readinto(self, buf, n=None):
        avail = self.any()
        if not avail:
            return None
        if n is None or n > len(buf):
            n = len(buf)
        if n > avail:
            n = avail
        for i in range(n):
            buf[i] = self.rx[self.pos + i]
        self.pos += n
        return n

    def read(self, n=None):
        avail = self.any()
        if not avail:
            return None
        if n is None or n > avail:
            n = avail
        out = bytes(self.rx[self.pos:self.pos + n])
        self.pos += n
        return out

    def write(self, data):
        self.tx.extend(data)
        return len(data)


class ByteSource:
    """UART receive side over a fixed byte string: release(n) makes n more
    bytes readable (wrapping to the start); readinto copies in place and
    allocates nothing, so it can sit under micropython.heap_lock()."""

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.end = 0

    def release(self, n):
        if self.end + n > len(self.data):
            self.pos = self.end = 0
        self.end += n

    def any(self):
        return self.end - self.pos

    def readinto(self, buf, n=None):
        if n is None or n < 0 or n > len(buf):
            n = len(buf)
        if n > self.end - self.pos:
            n = self.end - self.pos
        d = self.data
        p = self.pos
        for i in range(n):
            buf[i] = d[p + i]
        self.pos = p + n
        return n

    def read(self, n=None):
        return None

    def write(self, data):
        return len(data)


class SimClock:
    """The box clock (csfw.clock surface), advanced by hand."""

    def __init__(self, base=1790000000000):
        self.up = 0
        self.synced = True
        self.base = base

    def now_ms(self):
        return self.up

    def tick_ms(self):
        return self.up & 0x3FFFFFFF

    def epoch_ms(self):
        return self.base + self.up

    def set_epoch_ms(self, ms):
        self.base = ms - self.up
        self.synced = True


class UpWlan:
    """A network.WLAN that is always associated."""

    def active(self, on=None):
        return True

    def connect(self, ssid=None, key=None):
        pass

    def isconnected(self):
        return True

    def status(self, param=None):
        return 3


class Broker:
    """Answers like an MQTT 3.1.1 broker over BrokerSock: CONNACK, SUBACK,
    PUBACK, PINGRESP.  on_publish(topic, payload bytes) sees every PUBLISH."""

    def __init__(self, mqtt, on_publish):
        self.mqtt = mqtt  # csfw.mqtt, passed in so this file imports no firmware
        self.on_publish = on_publish
        self.up = True
        self.to_box = bytearray()

    def connect_fn(self):
        if not self.up:
            raise OSError(113)
        self.to_box = bytearray()  # a new connection: nothing stale before CONNACK
        return BrokerSock(self)

    def handle(self, data):
        pos = 0
        while pos < len(data):
            first, rl, hl = self.mqtt.parse_header(data[pos:pos + 5])
            kind = first & 0xF0
            body = data[pos + hl:pos + hl + rl]
            pos += hl + rl
            if kind == 0x10:
                self.to_box.extend(b"\x20\x02\x00\x00")
            elif kind == 0x30:
                topic, msg, qos, _dup, _retain, pid = self.mqtt.decode_publish(first, body)
                self.on_publish(topic, msg)
                if qos:
                    self.to_box.extend(self.mqtt.puback_packet(pid))
            elif kind == 0x80:
                self.to_box.extend(bytes((0x90, 3, body[0], body[1], 1)))
            elif kind == 0xC0:
                self.to_box.extend(b"\xd0\x00")


class BrokerSock:
    """The box's socket to a Broker; raises like a dropped TCP connection."""

    EAGAIN = 11

    def __init__(self, broker):
        self.broker = broker
        self.closed = False

    def _check(self):
        if self.closed or not self.broker.up:
            self.closed = True
            raise OSError(104)

    def settimeout(self, t):
        pass

    def setblocking(self, flag):
        pass

    def send(self, data):
        self._check()
        self.broker.handle(bytes(data))
        return len(data)

    def write(self, data):
        return self.send(data)

    def recv(self, n):
        self._check()
        box = self.broker.to_box
        if not box:
            raise OSError(self.EAGAIN)
        out = bytes(box[:n])
        self.broker.to_box = box[n:]
        return out

    def close(self):
        self.closed = True


_counter = [0]


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        child = path + "/" + name
        try:
            os.remove(child)
        except OSError:  # a folder (EISDIR on CPython, EPERM on MicroPython)
            _rmtree(child)
    os.rmdir(path)


def fresh_dir(tag):
    """An empty directory that works on CPython and on the MicroPython VM."""
    _counter[0] += 1
    try:
        import tempfile
        base = tempfile.gettempdir()
    except ImportError:  # MicroPython
        base = "/tmp"
        try:
            os.stat(base)
        except OSError:
            os.mkdir(base)
    path = base + "/csfw_test_" + tag + "_" + str(_counter[0])
    _rmtree(path)
    os.mkdir(path)
    return path
