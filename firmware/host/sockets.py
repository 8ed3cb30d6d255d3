"""Socket adapter: a CPython TCP socket with MicroPython's socket API.

``make_connect_fn(host, port, wlan, timeout_s, tls)`` returns the ``connect_fn``
that :class:`csfw.mqtt.MQTTClient` takes; with ``tls`` (a client
:class:`ssl.SSLContext`) the socket is TLS, verified against ``host``, as the
board's (``csfw/net.py``: ``CERT_REQUIRED``, the clinic CA, ``mqtt.host`` as
the server name).  Errors look like MicroPython's:
a timeout is ``OSError(ETIMEDOUT)``, "no data yet" on a non-blocking socket is
``OSError(EAGAIN)``.  When the :class:`host.wlan.FakeWLAN` is cut, the real
socket is closed (the broker sees the drop) and every call raises
``OSError(ECONNRESET)``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from collections.abc import Callable
from typing import Any


class HostSocket:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.closed = False
        self.killed = False
        self.bytes_sent = 0
        self.bytes_received = 0

    def _check(self) -> socket.socket:
        if self.killed:
            raise OSError(errno.ECONNRESET, "link cut")
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        return self._sock

    def send(self, data: Any) -> int:
        sock = self._check()
        try:
            n = sock.send(data)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "timed out") from None
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise OSError(errno.EAGAIN, "would block") from None
        self.bytes_sent += n
        return n

    def write(self, data: Any) -> int:
        return self.send(data)

    def recv(self, n: int) -> bytes:
        sock = self._check()
        try:
            data = sock.recv(n)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "timed out") from None
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise OSError(errno.EAGAIN, "would block") from None
        except OSError:
            if self.killed:
                raise OSError(errno.ECONNRESET, "link cut") from None
            raise
        self.bytes_received += len(data)
        return data

    def read(self, n: int = 4096) -> bytes:
        return self.recv(n)

    def setblocking(self, flag: bool) -> None:
        self._check().setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        # MicroPython: settimeout(0) is non-blocking, None is blocking
        self._check().settimeout(value)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()

    def kill(self) -> None:
        """Link cut under the socket: close it for real, fail from now on."""
        self.killed = True
        if not self.closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self.close()


def make_connect_fn(
    host: str, port: int, wlan: Any = None, timeout_s: float = 5, tls: ssl.SSLContext | None = None
) -> Callable[[], HostSocket]:
    """connect_fn() -> HostSocket connected to host:port (TCP connect and TLS
    handshake each bounded by timeout_s).  With a FakeWLAN, fails while the
    WLAN is down.  A broker certificate that does not verify raises
    ``ssl.SSLCertVerificationError`` (a ``ValueError`` on the board)."""

    def connect_fn() -> HostSocket:
        if wlan is not None and not wlan.isconnected():
            raise OSError(errno.EHOSTUNREACH, "wlan down")
        try:
            raw = socket.create_connection((host, port), timeout=timeout_s)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "connect timed out") from None
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                raw = tls.wrap_socket(raw, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                raw.close()
                raise ValueError(f"broker certificate not trusted: {exc.verify_message}") from None
            except TimeoutError:
                raw.close()
                raise OSError(errno.ETIMEDOUT, "TLS handshake timed out") from None
        sock = HostSocket(raw)
        if wlan is not None:
            wlan.register(sock)
        return sock

    return connect_fn
