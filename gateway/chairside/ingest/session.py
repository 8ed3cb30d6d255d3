"""The gateway's receiving MQTT session: a persistent QoS 1 subscription whose
messages are acknowledged only when the gateway says they are durable.

Why not paho for this one connection: paho reads every packet with three or
four ``recv`` calls and a ``select``, and sends every PUBACK as its own
write after waking its loop through a socket pair; measured at about 37 µs
of CPU per message before the gateway does anything (docs/performance.md),
a third of the budget for 10,000 readings/s on one core.  This session reads
up to 256 KB per ``recv``, parses every complete packet in the buffer, and
sends all PUBACKs that became due in one write.  paho still carries
everything the gateway *publishes*.

Protocol: MQTT 3.1.1 (OASIS standard, 2014), client side, only what a
subscriber needs: CONNECT/CONNACK (3.1, 3.2), PUBLISH QoS 0/1 received
(3.3), PUBACK sent (3.4), SUBSCRIBE/SUBACK (3.8, 3.9), PINGREQ/PINGRESP
(3.12, 3.13), DISCONNECT (3.14).  A QoS 2 PUBLISH is a protocol error here
(the gateway subscribes with QoS 1, so the broker never sends one).

States: ``disconnected`` → ``connecting`` (TCP, TLS, CONNECT, CONNACK within
``connect_timeout_s``) → ``subscribing`` (SUBACK) → ``receiving``; any error
or a missed PINGRESP → ``disconnected``, then a reconnect after an
exponential backoff with jitter.  ``stop()`` → ``stopped``.  Every wait has a
deadline; every decision reads the injected clock.

Why this module is longer than ~500 lines: the MQTT 3.1.1 codec a subscriber needs and the session
that uses it belong together (the codec is pure and tested from the spec's
examples; the session is the state machine above); the file is at the
limit because of the codec's citations.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

CONNECT: Final = 0x10
CONNACK: Final = 0x20
PUBLISH: Final = 0x30
PUBACK: Final = 0x40
SUBSCRIBE: Final = 0x82  # 3.8.1: reserved flags 0010
SUBACK: Final = 0x90
PINGREQ_PACKET: Final = b"\xc0\x00"
PINGRESP: Final = 0xD0
DISCONNECT_PACKET: Final = b"\xe0\x00"
SUBACK_FAILURE: Final = 0x80
MAX_REMAINING_LENGTH: Final = 268_435_455  # 2.2.3
RECV_BYTES: Final = 256 * 1024
SUBSCRIBE_PID: Final = 1
MAX_QUEUED_PUBLISHES: Final = 20_000
"""QoS 0 PUBLISHes waiting for the next write (``send_qos0``); more are refused"""

CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

OnMessage = Callable[[str, bytes, int, int, int], None]
"""(topic, payload, qos, packet id, session generation)"""


class ProtocolError(Exception):
    """The broker sent something this client cannot accept (the message says what)."""


# ---- codec (bytes <-> values), no I/O ------------------------------------------------


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw  # 1.5.3


def _remaining_length(n: int) -> bytes:
    """2.2.3 variable-length encoding, 7 bits per byte, continuation bit 0x80."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive_s: int, clean_session: bool,
                   user: str | None = None, password: str | None = None) -> bytes:
    """3.1 CONNECT, protocol level 4."""
    flags = 0x02 if clean_session else 0  # 3.1.2.4
    payload = _utf8(client_id)
    if user is not None:
        flags |= 0x80  # 3.1.2.8
        payload += _utf8(user)
        if password is not None:
            flags |= 0x40  # 3.1.2.9
            payload += _utf8(password)
    body = _utf8("MQTT") + bytes((4, flags)) + keepalive_s.to_bytes(2, "big") + payload
    return bytes((CONNECT,)) + _remaining_length(len(body)) + body


def subscribe_packet(pid: int, filters: Sequence[str], qos: int = 1) -> bytes:
    """3.8 SUBSCRIBE with one requested QoS for every filter."""
    body = pid.to_bytes(2, "big") + b"".join(_utf8(f) + bytes((qos,)) for f in filters)
    return bytes((SUBSCRIBE,)) + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, retain: bool = False) -> bytes:
    """3.3 PUBLISH with QoS 0 (no packet identifier, 3.3.2.2); RETAIN is bit 0 (3.3.1.3)."""
    body = _utf8(topic) + payload
    return bytes((PUBLISH | (0x01 if retain else 0),)) + _remaining_length(len(body)) + body


def puback_packets(pids: Sequence[int]) -> bytes:
    """3.4 PUBACK for each packet id, concatenated for one write."""
    return b"".join(b"\x40\x02" + pid.to_bytes(2, "big") for pid in pids)


@dataclass(frozen=True, slots=True)
class Packet:
    """A non-PUBLISH packet from the broker: first byte and body."""

    first: int
    body: bytes


def parse_stream(buf: bytearray, on_publish: Callable[[str, bytes, int, int], None],
                 on_other: Callable[[Packet], None], limit: int = 0) -> int:
    """Decode the complete packets at the start of ``buf`` (at most ``limit``
    of them if it is not 0); return the bytes used.

    PUBLISH (3.3) goes to ``on_publish(topic, payload, qos, pid)``; anything
    else to ``on_other``.  An incomplete packet at the end is left for the
    next read.  Raises :class:`ProtocolError` on a malformed packet."""
    pos = 0
    end = len(buf)
    decoded = 0
    while pos + 2 <= end and (not limit or decoded < limit):
        first = buf[pos]
        length = 0
        shift = 0
        i = pos + 1
        while True:  # 2.2.3 remaining length
            if i >= end:
                return pos
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("remaining length longer than 4 bytes")
        if i + length > end:
            return pos
        if first & 0xF0 == PUBLISH:
            _publish(buf, first, i, i + length, on_publish)
        else:
            on_other(Packet(first, bytes(buf[i:i + length])))
        pos = i + length
        decoded += 1
    return pos


def _publish(buf: bytearray, first: int, start: int, stop: int,
             on_publish: Callable[[str, bytes, int, int], None]) -> None:
    qos = (first >> 1) & 0x03  # 3.3.1.2
    if qos > 1:
        raise ProtocolError(f"PUBLISH with QoS {qos} on a QoS 1 subscription")
    if stop - start < 2:
        raise ProtocolError("PUBLISH without a topic")
    topic_end = start + 2 + (buf[start] << 8 | buf[start + 1])
    body = topic_end + (2 if qos else 0)
    if body > stop:
        raise ProtocolError("PUBLISH shorter than its topic")
    try:
        topic = buf[start + 2:topic_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("PUBLISH topic is not UTF-8") from exc  # 1.5.3
    pid = buf[topic_end] << 8 | buf[topic_end + 1] if qos else 0
    on_publish(topic, bytes(buf[body:stop]), qos, pid)


# ---- the session ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    host: str
    port: int
    client_id: str
    subscriptions: tuple[str, ...]
    keepalive_s: int = 30
    connect_timeout_s: float = 5.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0
    user: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    auto_ack: bool = False
    """acknowledge each QoS 1 message on receipt (no durability guarantee)"""


class IngestSession:
    """Receives the subscribed topics on one thread; ``ack()`` from any thread."""

    def __init__(
        self,
        config: SessionConfig,
        on_message: OnMessage,
        on_state: Callable[[str], None] = lambda state: None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.on_message = on_message
        self.on_state = on_state
        self.clock = clock
        self.rand = rand
        self.state = "disconnected"
        self.generation = 0
        """bumped on every CONNACK: an ack of an older connection is dropped
        (the broker redelivers that message on the new one)"""
        self.connects = 0
        self.sessions_lost = 0
        """reconnects on which the broker no longer had the persistent session"""
        self.protocol_errors = 0
        self._acks: list[int] = []
        self._out: list[bytes] = []  # QoS 0 PUBLISHes for the next write (send_qos0)
        self._acks_lock = threading.Lock()
        self._stop = threading.Event()
        self._reading = True
        self._paused = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._pong = False
        self._thread: threading.Thread | None = None

    # -- control, any thread ------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="gw-mqtt-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    def pause_reading(self, timeout: float) -> bool:
        """Stop reading (and processing) messages but keep sending PUBACKs, so
        the gateway can make what it has durable before ``stop()``; True once
        the thread is no longer inside a read or a message callback."""
        self._reading = False
        self._wake()
        if self._thread is None or not self._thread.is_alive():
            return True
        return self._paused.wait(timeout)

    def ack(self, generation: int, pid: int) -> None:
        """Queue a PUBACK for ``pid`` if it belongs to the current connection."""
        with self._acks_lock:
            if generation != self.generation:
                return
            first = not self._acks
            self._acks.append(pid)
        if first:
            self._wake()

    def send_qos0(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue a QoS 0 PUBLISH for the next write on this connection, with
        the PUBACKs due then (one write for all of them); any thread.

        False, with nothing queued, unless the session is receiving, or when
        ``MAX_QUEUED_PUBLISHES`` wait already: the caller tries again later.
        A message queued when the connection drops is not sent (QoS 0).  The
        gateway sends its stored watermarks this way: through paho each cost
        about 80 µs of the timer's time, a fifth of the gateway's at 1,000
        chairs (docs/performance.md, round 8)."""
        packet = publish_packet(topic, payload, retain)
        with self._acks_lock:
            if self.state != "receiving" or len(self._out) >= MAX_QUEUED_PUBLISHES:
                return False
            first = not self._acks and not self._out
            self._out.append(packet)
        if first:
            self._wake()
        return True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already pending, or closed while stopping
            self._wake_w.send(b"\x00")

    # -- the thread -----------------------------------------------------------------
    def run(self) -> None:
        backoff = self.config.backoff_min_s
        while not self._stop.is_set():
            if not self._reading:
                self._paused.set()
                self._stop.wait(0.1)
                continue
            try:
                self._connect()
                backoff = self.config.backoff_min_s
                self._receive()
            except (OSError, ProtocolError, ssl.SSLError) as exc:
                if isinstance(exc, ProtocolError):
                    self.protocol_errors += 1
                if not self._stop.is_set():
                    log.warning("broker connection %s: %s", self.state, exc)
            except Exception:  # a bug in a callback must not end the session for good
                log.exception("ingest session failed; reconnecting")
            finally:
                self._close()
            if self._stop.is_set():
                break
            delay = backoff * (0.5 + self.rand() / 2)  # jitter: chairs and gateways don't stampede
            backoff = min(backoff * 2, self.config.backoff_max_s)
            self._stop.wait(delay)
        self._set_state("stopped")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.on_state(state)

    def _connect(self) -> None:
        cfg = self.config
        self._set_state("connecting")
        deadline = self.clock() + cfg.connect_timeout_s
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cfg.tls is not None:
            sock = cfg.tls.wrap_socket(sock, server_hostname=cfg.host)
        self._sock = sock
        self._buf.clear()
        sock.sendall(connect_packet(cfg.client_id, cfg.keepalive_s, False, cfg.user, cfg.password))
        connack = self._read_until(CONNACK, deadline)
        if len(connack.body) != 2:
            raise ProtocolError("malformed CONNACK")
        if connack.body[1]:
            reason = CONNACK_REASONS.get(connack.body[1], f"code {connack.body[1]}")
            raise ProtocolError(f"broker refused the connection: {reason}")
        with self._acks_lock:
            self.generation += 1
            self._acks.clear()
            self._out.clear()
        present = bool(connack.body[0] & 0x01)
        if self.connects and not present:
            # the broker forgot the persistent session (it crashed, or lost its
            # state): what boxes published until the re-subscription below was
            # delivered to nobody; boxes re-send what the gateway has not
            # confirmed as stored (docs/contract.md, `stored`)
            self.sessions_lost += 1
            log.warning("ingest session on %s:%d was lost by the broker (session present: 0); "
                        "readings published meanwhile come again from the boxes' buffers", cfg.host, cfg.port)
        else:
            log.info("ingest session connected to %s:%d (session present: %s)", cfg.host, cfg.port, present)
        self.connects += 1
        self._set_state("subscribing")
        sock.sendall(subscribe_packet(SUBSCRIBE_PID, cfg.subscriptions))

    def _read_until(self, kind: int, deadline: float) -> Packet:
        """Read the first packet, which must be of ``kind`` (CONNACK: nothing
        else may come first, 3.2).  What follows it in the same read (a
        persistent session's queued PUBLISHes, sent right behind the CONNACK)
        stays in the buffer for :meth:`_receive`."""
        found: list[Packet] = []

        def other(packet: Packet) -> None:
            if packet.first & 0xF0 != kind:
                raise ProtocolError(f"expected packet type {kind:#x}, got {packet.first:#x}")
            found.append(packet)

        def publish(topic: str, payload: bytes, qos: int, pid: int) -> None:
            raise ProtocolError("PUBLISH before CONNACK")

        while not found:
            left = deadline - self.clock()
            if left <= 0:
                raise TimeoutError("no CONNACK in time")
            self._fill(left)
            used = parse_stream(self._buf, publish, other, limit=1)
            del self._buf[:used]
        return found[0]

    def _fill(self, timeout: float) -> bool:
        """One read into the buffer; False on timeout.  Raises on EOF."""
        sock = self._sock
        assert sock is not None
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if not pending:
            ready, _, _ = select.select([sock, self._wake_r], [], [], max(0.0, timeout))
            if self._wake_r in ready:
                self._drain_wake()
            if sock not in ready:
                return False
        data = sock.recv(RECV_BYTES)
        if not data:
            raise ConnectionError("broker closed the connection")
        self._buf += data
        return True

    def _wait_wake(self, timeout: float) -> None:
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if ready:
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _receive(self) -> None:
        cfg = self.config
        sock = self._sock
        assert sock is not None
        last_out = self.clock()
        ping_sent: float | None = None
        got = bool(self._buf)  # packets that came in behind the CONNACK
        while not self._stop.is_set():
            if not self._reading:
                self._paused.set()
                self._wait_wake(0.1)
                self._flush_acks(sock)
                continue
            now = self.clock()
            if ping_sent is not None and now - ping_sent > cfg.keepalive_s:
                raise TimeoutError("no PINGRESP within the keepalive")  # 3.1.2.10
            if ping_sent is None and now - last_out >= cfg.keepalive_s * 0.75:
                sock.sendall(PINGREQ_PACKET)
                ping_sent = last_out = now
            wait = max(0.05, last_out + cfg.keepalive_s * 0.75 - now)
            got = got or self._fill(wait)
            if got:
                got = False
                used = parse_stream(self._buf, self._on_publish, self._on_other)
                if used:
                    del self._buf[:used]
                if self._pong:
                    self._pong = False
                    ping_sent = None
            if self._flush_acks(sock):
                last_out = self.clock()

    def _on_publish(self, topic: str, payload: bytes, qos: int, pid: int) -> None:
        if qos and self.config.auto_ack:
            with self._acks_lock:
                self._acks.append(pid)
        self.on_message(topic, payload, qos, pid, self.generation)

    def _on_other(self, packet: Packet) -> None:
        kind = packet.first & 0xF0
        if kind == SUBACK:
            codes = packet.body[2:]
            if len(codes) != len(self.config.subscriptions) or SUBACK_FAILURE in codes:
                raise ProtocolError(f"subscription refused (return codes {list(codes)})")
            self._set_state("receiving")
        elif kind == PINGRESP:
            self._pong = True
        elif kind == PUBACK:
            pass  # this session publishes QoS 0 only; nothing to acknowledge
        else:
            raise ProtocolError(f"unexpected packet type {kind:#x}")

    def _flush_acks(self, sock: socket.socket) -> bool:
        """Send the PUBACKs and QoS 0 PUBLISHes due, in one write."""
        with self._acks_lock:
            if not self._acks and not self._out:
                return False
            pids, self._acks = self._acks, []
            out, self._out = self._out, []
        sock.sendall(puback_packets(pids) + b"".join(out))
        return True

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._stop.is_set() and self.state == "receiving":
                try:
                    self._flush_acks(sock)
                    sock.sendall(DISCONNECT_PACKET)
                except OSError:
                    pass
            with contextlib.suppress(OSError):
                sock.close()
        if not self._stop.is_set():
            self._set_state("disconnected")
