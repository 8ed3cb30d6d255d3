# MQTT 3.1.1 client for the chair box (MicroPython 1.29 and CPython 3.11).
#
# Written from the OASIS MQTT Version 3.1.1 specification (with Errata 01);
# comments cite its section numbers.  Two layers:
#   * pure packet encoders/decoders (module functions, no I/O), and
#   * MQTTClient: one connection over a socket-like object that the injected
#     connect_fn() returns.  It never reconnects by itself: csfw.link is the
#     one reconnect path.
# Only QoS 0 and 1 are implemented (the contract uses nothing else).
#
# Time is injected: methods take `now` (uptime ms).  Every socket wait is
# bounded by a socket timeout and a try limit; every ack has a deadline.
try:
    from micropython import const
except ImportError:
    const = lambda x: x  # noqa: E731

# errno values (same numbers on MicroPython's rp2 port and Linux CPython).
EAGAIN = const(11)
ETIMEDOUT = const(110)
ECONNRESET = const(104)
ENOTCONN = const(107)

# 2.2.1 Control packet types (upper nibble of the first byte).
CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x80)
SUBACK = const(0x90)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)

# 3.2.2.3 CONNACK return codes; negative codes are local errors.
CONNACK_ACCEPTED = const(0)
CONNACK_BAD_PROTOCOL = const(1)
CONNACK_ID_REJECTED = const(2)
CONNACK_UNAVAILABLE = const(3)
CONNACK_BAD_CREDENTIALS = const(4)
CONNACK_NOT_AUTHORIZED = const(5)
ERR_INFLIGHT_FULL = const(-1)
ERR_PROTOCOL = const(-2)
ERR_MALFORMED = const(-3)

CONNACK_TEXT = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

SUBACK_FAILURE = const(0x80)  # 3.9.3
MAX_REMAINING_LENGTH = const(268435455)  # 2.2.3

PINGREQ_PACKET = b"\xc0\x00"  # 3.12
PINGRESP_PACKET = b"\xd0\x00"  # 3.13
DISCONNECT_PACKET = b"\xe0\x00"  # 3.14


class MQTTError(Exception):
    """code: a CONNACK return code (1..5) or a negative local ERR_* code."""

    @property
    def code(self):
        return self.args[0] if self.args else ERR_PROTOCOL


class InflightFull(MQTTError):
    """publish(qos=1) with max_inflight messages already awaiting PUBACK."""


def errno_of(exc):
    n = getattr(exc, "errno", None)
    if n is None and exc.args and isinstance(exc.args[0], int):
        n = exc.args[0]
    return n


# ---------------------------------------------------------------- codecs


def encode_remaining_length(n):
    """2.2.3: 7 bits per byte, least significant group first, bit 7 = more."""
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise ValueError("remaining length")
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_remaining_length(buf, offset=1):
    """2.2.3 decode starting at buf[offset].

    Returns (value, number_of_length_bytes), or (-1, 0) when buf ends before
    the last length byte.  More than 4 length bytes is malformed.
    """
    value = 0
    shift = 0
    i = offset
    while i < len(buf):
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i - offset
        shift += 7
        if shift >= 28:
            raise MQTTError(ERR_MALFORMED)
    return -1, 0


def _utf8(s):
    """1.5.3 UTF-8 string: 2-byte big-endian length, then the bytes."""
    if isinstance(s, str):
        s = s.encode("utf-8")
    n = len(s)
    if n > 0xFFFF:
        raise ValueError("string too long")
    return bytes((n >> 8, n & 0xFF)) + bytes(s)


def _u16(n):
    return bytes((n >> 8, n & 0xFF))


def _packet(first, body):
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def connect_packet(client_id, keepalive_s=30, clean_session=True, will_topic=None,
                   will_msg=None, will_qos=0, will_retain=False, user=None, password=None):
    """3.1 CONNECT."""
    if not client_id and not clean_session:
        raise ValueError("empty client id needs clean session")  # 3.1.3.1
    if password is not None and user is None:
        raise ValueError("password without user")  # 3.1.2.9
    if not 0 <= keepalive_s <= 0xFFFF:
        raise ValueError("keepalive")
    flags = 0  # 3.1.2.3
    if clean_session:
        flags |= 0x02  # 3.1.2.4
    if will_topic is not None:
        if will_qos not in (0, 1, 2):
            raise ValueError("will qos")
        flags |= 0x04 | (will_qos << 3)  # 3.1.2.5, 3.1.2.6
        if will_retain:
            flags |= 0x20  # 3.1.2.7
    if user is not None:
        flags |= 0x80  # 3.1.2.8
    if password is not None:
        flags |= 0x40  # 3.1.2.9
    # 3.1.2.1 protocol name, 3.1.2.2 level 4, flags, 3.1.2.10 keep alive
    body = _utf8("MQTT") + bytes((4, flags)) + _u16(keepalive_s)
    body += _utf8(client_id)  # 3.1.3 payload order: id, will topic/msg, user, pw
    if will_topic is not None:
        body += _utf8(will_topic) + _utf8(will_msg or b"")
    if user is not None:
        body += _utf8(user)
    if password is not None:
        body += _utf8(password)
    return _packet(CONNECT, body)


def decode_connack(body):
    """3.2 CONNACK body -> (session_present, return_code)."""
    if len(body) != 2 or body[0] & 0xFE:
        raise MQTTError(ERR_MALFORMED)
    return bool(body[0] & 1), body[1]  # 3.2.2.2, 3.2.2.3


def publish_packet(topic, msg, qos=0, retain=False, dup=False, pid=0):
    """3.3 PUBLISH (QoS 0 or 1)."""
    if qos not in (0, 1):
        raise ValueError("qos")
    if isinstance(topic, str):
        topic = topic.encode("utf-8")
    if not topic or b"+" in topic or b"#" in topic:
        raise ValueError("topic")  # 3.3.2.1: no wildcards in a topic name
    if isinstance(msg, str):
        msg = msg.encode("utf-8")
    first = PUBLISH | (qos << 1)  # 3.3.1.2
    if retain:
        first |= 0x01  # 3.3.1.3
    body = _utf8(topic)
    if qos:
        if dup:
            first |= 0x08  # 3.3.1.1; DUP MUST be 0 for QoS 0
        if not 0 < pid <= 0xFFFF:
            raise ValueError("pid")  # 2.3.1: non-zero
        body += _u16(pid)
    return _packet(first, body + bytes(msg))


def decode_publish(first, body):
    """3.3 PUBLISH -> (topic str, msg bytes, qos, dup, retain, pid)."""
    qos = (first >> 1) & 3
    if qos == 3 or len(body) < 2:
        raise MQTTError(ERR_MALFORMED)  # 3.3.1.2
    n = (body[0] << 8) | body[1]
    pos = 2 + n
    if pos > len(body):
        raise MQTTError(ERR_MALFORMED)
    try:
        topic = bytes(body[2:pos]).decode("utf-8")
    except UnicodeError:  # 1.5.3: a topic MUST be well-formed UTF-8
        raise MQTTError(ERR_MALFORMED)
    pid = 0
    if qos:
        if pos + 2 > len(body):
            raise MQTTError(ERR_MALFORMED)
        pid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    return topic, bytes(body[pos:]), qos, bool(first & 0x08), bool(first & 0x01), pid


def puback_packet(pid):
    """3.4 PUBACK."""
    return bytes((PUBACK, 2, pid >> 8, pid & 0xFF))


def decode_pid(body):
    """2.3.1 packet identifier of PUBACK and friends."""
    if len(body) < 2:
        raise MQTTError(ERR_MALFORMED)
    return (body[0] << 8) | body[1]


def subscribe_packet(pid, topic, qos=1):
    """3.8 SUBSCRIBE with one topic filter (fixed-header flags 0010, 3.8.1)."""
    if qos not in (0, 1, 2):
        raise ValueError("qos")
    if not 0 < pid <= 0xFFFF:
        raise ValueError("pid")
    return _packet(SUBSCRIBE | 0x02, _u16(pid) + _utf8(topic) + bytes((qos,)))


def decode_suback(body):
    """3.9 SUBACK -> (pid, list of return codes 0/1/2 or 0x80)."""
    if len(body) < 3:
        raise MQTTError(ERR_MALFORMED)
    return decode_pid(body), list(body[2:])


def parse_header(buf):
    """2.2 fixed header at buf[0] -> (first_byte, remaining_length, header_len)
    or None when buf does not yet hold the whole header."""
    if len(buf) < 2:
        return None
    rl, n = decode_remaining_length(buf, 1)
    if n == 0:
        return None
    return buf[0], rl, 1 + n


# ---------------------------------------------------------------- client


class MQTTClient:
    """One MQTT 3.1.1 connection.  The caller (csfw.link) reconnects.

    Ownership of QoS 1 messages: publish() returning a pid means the client
    holds the message until on_puback(pid) is called (it survives a lost link
    and is resent by resend_inflight()).  publish() raising means the caller
    still owns the message.
    """

    def __init__(self, client_id, connect_fn, keepalive_s=30, user=None, password=None,
                 will_topic=None, will_msg=None, will_qos=1, will_retain=True,
                 clean_session=False, max_inflight=8, on_message=None, on_puback=None,
                 on_suback=None, ack_timeout_ms=10000, max_retries=2, max_packet=4096,
                 write_timeout_ms=2000):
        self.client_id = client_id
        self._connect_fn = connect_fn
        self.keepalive_s = keepalive_s
        self._ka_ms = keepalive_s * 1000
        self._connect_args = (keepalive_s, clean_session, will_topic, will_msg,
                              will_qos, will_retain, user, password)
        # build it once now so a bad configuration fails at start-up
        self._connect_pkt = connect_packet(client_id, *self._connect_args)
        self.max_inflight = max_inflight
        self.on_message = on_message
        self.on_puback = on_puback
        self.on_suback = on_suback
        self.ack_timeout_ms = ack_timeout_ms
        self.max_retries = max_retries
        self.max_packet = max_packet
        self._write_timeout_s = write_timeout_ms / 1000
        self._sock = None
        self._rx = bytearray()
        self._skip = 0
        self._pid = 0
        self._seq = 0
        # pid -> [seq, topic, msg, retain, sent_at, tries]
        self._inflight = {}
        self._subs = {}  # pid -> [topic, qos, sent_at]
        self._last_tx = 0
        self._last_rx = 0
        self._ping_at = None
        # counters (packets)
        self.sent = 0
        self.received = 0
        self.retransmits = 0
        self.dropped = 0  # oversize or undecodable incoming packets
        self.pings = 0
        self.callback_errors = 0
        self.sub_failures = 0
        self.connects = 0

    # -- state

    @property
    def connected(self):
        return self._sock is not None

    @property
    def inflight(self):
        """pids awaiting PUBACK, oldest first."""
        return self._inflight_order()

    def _inflight_order(self):
        items = [(e[0], pid) for pid, e in self._inflight.items()]
        items.sort()
        return [pid for _seq, pid in items]

    def take_inflight(self):
        """Give unacknowledged QoS 1 messages back to the caller (oldest first)
        as (topic, msg, retain) and forget them."""
        out = [(self._inflight[p][1], self._inflight[p][2], self._inflight[p][3])
               for p in self._inflight_order()]
        self._inflight = {}
        return out

    # -- connection

    def connect(self, now, timeout_ms=5000):
        """Open the socket, send CONNECT, wait for CONNACK (3.2).

        Blocks at most about timeout_ms (socket timeout; bounded reads).
        Returns session_present.  Raises MQTTError(code) on refusal and
        OSError on a socket error or timeout.
        """
        self.close()
        sock = self._connect_fn()
        self._sock = sock
        self._rx = bytearray()
        self._skip = 0
        self._ping_at = None
        try:
            sock.settimeout(timeout_ms / 1000)
            self._write_all(self._connect_pkt)
            # 3.2: the first packet from the server MUST be CONNACK
            head = self._read_exact(2)
            if head[0] != CONNACK or head[1] != 2:
                raise MQTTError(ERR_PROTOCOL)
            session_present, rc = decode_connack(self._read_exact(2))
            if rc != CONNACK_ACCEPTED:
                raise MQTTError(rc)
            sock.setblocking(False)
        except Exception:
            self.close()
            raise
        self.received += 1
        self.connects += 1
        self._last_tx = now
        self._last_rx = now
        # a SUBSCRIBE left unacknowledged on the old connection is not resent
        # (4.4 covers PUBLISH/PUBREL only): the app subscribes again whenever
        # session_present is False
        self._subs = {}
        return session_present

    def _read_exact(self, n):
        out = b""
        for _ in range(n + 2):  # each recv returns >= 1 byte or raises
            data = self._sock.recv(n - len(out))
            if not data:
                raise OSError(ECONNRESET)
            out += data
            if len(out) == n:
                return out
        raise OSError(ETIMEDOUT)

    def disconnect(self):
        """3.14 DISCONNECT (the server then discards the will), then close."""
        if self._sock is not None:
            try:
                self._write_all(DISCONNECT_PACKET)
            except OSError:
                pass
        self.close()

    def close(self):
        sock = self._sock
        self._sock = None
        self._ping_at = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _fail(self, code):
        self.close()
        raise OSError(code)

    # -- output

    def _write_all(self, data):
        """Write every byte (MicroPython's send may write part); bounded."""
        sock = self._sock
        if sock is None:
            raise OSError(ENOTCONN)
        mv = memoryview(data)
        off = 0
        for _ in range(8 + len(data) // 256):
            try:
                n = sock.send(mv[off:])
            except OSError as exc:
                if errno_of(exc) != EAGAIN:
                    raise
                n = 0
            off += n or 0
            if off >= len(data):
                self.sent += 1
                return
        raise OSError(ETIMEDOUT)

    def _send(self, data, now):
        """Send one packet while online (socket normally non-blocking)."""
        if self._sock is None:
            raise OSError(ENOTCONN)
        try:
            self._sock.settimeout(self._write_timeout_s)
            self._write_all(data)
            self._sock.setblocking(False)
        except OSError:
            self.close()
            raise
        self._last_tx = now

    def _next_pid(self):
        # 2.3.1: non-zero, unused by any in-flight exchange
        for _ in range(0x10000):
            self._pid = self._pid % 0xFFFF + 1
            if self._pid not in self._inflight and self._pid not in self._subs:
                return self._pid
        raise MQTTError(ERR_INFLIGHT_FULL)

    def publish(self, topic, msg, qos=0, retain=False, now=0):
        """3.3 PUBLISH.  Returns the pid (0 for QoS 0).

        Raises InflightFull when max_inflight QoS 1 messages await PUBACK,
        OSError when not connected or the send failed (link is then closed).
        """
        if self._sock is None:
            raise OSError(ENOTCONN)
        if qos == 0:
            self._send(publish_packet(topic, msg, 0, retain), now)
            return 0
        if len(self._inflight) >= self.max_inflight:
            raise InflightFull(ERR_INFLIGHT_FULL)
        pid = self._next_pid()
        pkt = publish_packet(topic, msg, 1, retain, False, pid)
        self._send(pkt, now)  # raises: the caller keeps the message
        self._seq += 1
        self._inflight[pid] = [self._seq, topic, msg, retain, now, 0]
        return pid

    def resend_inflight(self, now):
        """4.4: after reconnecting, re-send unacknowledged PUBLISHes with their
        original pids, DUP=1 (3.3.1.1), in original order (4.6)."""
        for pid in self._inflight_order():
            e = self._inflight[pid]
            self._send(publish_packet(e[1], e[2], 1, e[3], True, pid), now)
            e[4] = now
            e[5] = 0  # in-session retries count afresh on each connection
            self.retransmits += 1

    def subscribe(self, topic, qos=1, now=0):
        """3.8 SUBSCRIBE; returns the pid.  The SUBACK arrives through poll();
        a missing SUBACK after ack_timeout_ms declares the link dead."""
        pid = self._next_pid()
        self._send(subscribe_packet(pid, topic, qos), now)
        self._subs[pid] = [topic, qos, now]
        return pid

    # -- input and timers

    def poll(self, now, max_reads=8, chunk=512):
        """Non-blocking: read what is there, dispatch whole packets, run the
        keepalive and ack timers.  Raises OSError (after closing) when the
        link is dead, MQTTError on a protocol violation (also closed)."""
        if self._sock is None:
            raise OSError(ENOTCONN)
        got = False
        for _ in range(max_reads):
            try:
                data = self._sock.recv(chunk)
            except OSError as exc:
                if errno_of(exc) in (EAGAIN, ETIMEDOUT):
                    break
                self.close()
                raise
            if not data:  # orderly close by the broker
                self._fail(ECONNRESET)
            got = True
            self._feed(data)
            if len(data) < chunk:
                break
        if got:
            self._last_rx = now
        try:
            self._parse(now)
        except MQTTError:
            self.close()
            raise
        if self._sock is not None:
            self._timers(now)

    def _feed(self, data):
        if self._skip:
            k = min(self._skip, len(data))
            self._skip -= k
            data = data[k:]
        if data:
            self._rx += data

    def _parse(self, now):
        while self._sock is not None:
            hdr = parse_header(self._rx)
            if hdr is None:
                return
            first, rl, hlen = hdr
            total = hlen + rl
            if total > self.max_packet:
                # bounded input buffer: drop the packet and count it
                self.dropped += 1
                k = min(total, len(self._rx))
                self._rx = self._rx[k:]
                self._skip = total - k
                continue
            if len(self._rx) < total:
                return
            body = bytes(self._rx[hlen:total])
            self._rx = self._rx[total:]
            self.received += 1
            self._dispatch(first, body, now)

    def _dispatch(self, first, body, now):
        kind = first & 0xF0
        if kind == PUBLISH:
            topic, msg, qos, _dup, _retain, pid = decode_publish(first, body)
            if qos > 1:
                self.dropped += 1  # never subscribed above QoS 1
                return
            if self.on_message is not None:
                try:
                    self.on_message(topic, msg)
                except Exception:  # a bad message must not kill the link
                    self.callback_errors += 1
            if qos == 1:
                self._send(puback_packet(pid), now)  # 3.4, 4.3.2
        elif kind == PUBACK:
            pid = decode_pid(body)
            if self._inflight.pop(pid, None) is not None and self.on_puback is not None:
                try:
                    self.on_puback(pid)
                except Exception:
                    self.callback_errors += 1
        elif kind == SUBACK:
            pid, codes = decode_suback(body)
            self._subs.pop(pid, None)
            if SUBACK_FAILURE in codes:
                self.sub_failures += 1
            if self.on_suback is not None:
                try:
                    self.on_suback(pid, codes)
                except Exception:
                    self.callback_errors += 1
        elif kind == PINGRESP:
            self._ping_at = None
        else:
            # CONNACK twice, or a packet a server must not send to a client
            raise MQTTError(ERR_PROTOCOL)

    def _timers(self, now):
        ka = self._ka_ms
        if ka:  # 3.1.2.10: keepalive 0 turns the mechanism off
            if self._ping_at is not None:
                # 3.1.2.10: no PINGRESP in reasonable time -> close the link
                if now - self._ping_at >= max(ka // 2, 500):
                    self._fail(ETIMEDOUT)
            elif now - self._last_tx >= ka // 2 or now - self._last_rx >= ka // 2:
                self._send(PINGREQ_PACKET, now)  # 3.12
                self._ping_at = now
                self.pings += 1
        for pid in self._inflight_order():
            e = self._inflight[pid]
            if now - e[4] >= self.ack_timeout_ms:
                if e[5] >= self.max_retries:
                    self._fail(ETIMEDOUT)  # the reconnect path resends it
                self._send(publish_packet(e[1], e[2], 1, e[3], True, pid), now)
                e[4] = now
                e[5] += 1
                self.retransmits += 1
        for pid in self._subs:
            if now - self._subs[pid][2] >= self.ack_timeout_ms:
                self._fail(ETIMEDOUT)
