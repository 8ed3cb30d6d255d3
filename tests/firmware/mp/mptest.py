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
