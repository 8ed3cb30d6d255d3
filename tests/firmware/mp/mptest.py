# Minimal test helpers that work on MicroPython and CPython alike.
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
