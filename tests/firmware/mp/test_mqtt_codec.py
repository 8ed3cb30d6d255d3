# MQTT 3.1.1 codec and client logic against exact bytes (runs on MicroPython too).
# Byte layouts follow the OASIS MQTT 3.1.1 spec sections cited per test.
from csfw import mqtt
from mptest import hexbytes, raises


class FakeSock:
    """In-memory socket with MicroPython semantics: EAGAIN (11) when a
    non-blocking recv has no data, ETIMEDOUT (110) when a timed one has none;
    send writes at most max_send bytes per call (partial writes)."""

    def __init__(self, inbox=b"", max_send=1000):
        self.inbox = bytearray(inbox)
        self.out = bytearray()
        self.max_send = max_send
        self.timeout = None
        self.closed = False

    def settimeout(self, t):
        self.timeout = t

    def setblocking(self, flag):
        self.timeout = None if flag else 0

    def send(self, data):
        if self.closed:
            raise OSError(9)
        n = min(len(data), self.max_send)
        self.out += bytes(data[:n])
        return n

    write = send

    def recv(self, n):
        if self.closed:
            raise OSError(9)
        if not self.inbox:
            raise OSError(11 if self.timeout == 0 else 110)
        data = bytes(self.inbox[:n])
        self.inbox = self.inbox[n:]
        return data

    def close(self):
        self.closed = True

    def take(self):
        data = bytes(self.out)
        self.out = bytearray()
        return data


CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_PRESENT = b"\x20\x02\x01\x00"


def make_client(inbox=CONNACK_OK, max_send=1000, **kw):
    socks = []

    def connect_fn():
        sock = FakeSock(inbox, max_send)
        socks.append(sock)
        return sock

    got = {"msgs": [], "acks": []}
    kw.setdefault("on_message", lambda t, m: got["msgs"].append((t, m)))
    kw.setdefault("on_puback", lambda pid: got["acks"].append(pid))
    client = mqtt.MQTTClient("box1", connect_fn, **kw)
    return client, socks, got


# -- 2.2.3 remaining length


def test_remaining_length_spec_table():
    table = (
        (0, "00"), (127, "7F"), (128, "80 01"), (16383, "FF 7F"), (16384, "80 80 01"),
        (2097151, "FF FF 7F"), (2097152, "80 80 80 01"), (268435455, "FF FF FF 7F"),
    )
    for value, text in table:
        enc = mqtt.encode_remaining_length(value)
        assert enc == hexbytes(text), value
        assert mqtt.decode_remaining_length(b"\x30" + enc) == (value, len(enc))
    raises(ValueError, mqtt.encode_remaining_length, 268435456)
    raises(ValueError, mqtt.encode_remaining_length, -1)


def test_remaining_length_incomplete_and_malformed():
    assert mqtt.decode_remaining_length(b"\x30\x80") == (-1, 0)
    assert mqtt.decode_remaining_length(b"\x30") == (-1, 0)
    assert mqtt.parse_header(b"\x30\xff\xff") is None
    assert mqtt.parse_header(b"\x30\x05abc") == (0x30, 5, 2)
    exc = raises(mqtt.MQTTError, mqtt.decode_remaining_length, b"\x30\xff\xff\xff\xff\x01")
    assert exc.code == mqtt.ERR_MALFORMED


# -- 3.1 CONNECT


def test_connect_with_will_and_credentials_exact_bytes():
    pkt = mqtt.connect_packet("box1", keepalive_s=30, clean_session=False,
                              will_topic="s/t", will_msg=b"off", will_qos=1,
                              will_retain=True, user="u", password="pw")
    expected = hexbytes(
        "10 21"                      # CONNECT, remaining length 33
        " 00 04 4D 51 54 54"         # 3.1.2.1 "MQTT"
        " 04"                        # 3.1.2.2 level 4
        " EC"                        # 3.1.2.3 user|pw|will retain|will qos 1|will
        " 00 1E"                     # 3.1.2.10 keepalive 30 s
        " 00 04 62 6F 78 31"         # client id "box1"
        " 00 03 73 2F 74"            # will topic "s/t"
        " 00 03 6F 66 66"            # will message "off"
        " 00 01 75"                  # user "u"
        " 00 02 70 77")              # password "pw"
    assert pkt == expected


def test_connect_minimal_clean_session():
    assert mqtt.connect_packet("a", keepalive_s=60) == hexbytes(
        "10 0D 00 04 4D 51 54 54 04 02 00 3C 00 01 61")


def test_connect_rejects_bad_combinations():
    raises(ValueError, mqtt.connect_packet, "a", password="x")          # 3.1.2.9
    raises(ValueError, mqtt.connect_packet, "", clean_session=False)    # 3.1.3.1
    raises(ValueError, mqtt.connect_packet, "a", keepalive_s=70000)


# -- 3.2 CONNACK


def test_connack_decode_codes():
    assert mqtt.decode_connack(b"\x00\x00") == (False, 0)
    assert mqtt.decode_connack(b"\x01\x00") == (True, 0)
    for code in range(1, 6):
        assert mqtt.decode_connack(bytes((0, code))) == (False, code)
        assert code in mqtt.CONNACK_TEXT
    raises(mqtt.MQTTError, mqtt.decode_connack, b"\x02\x00")  # reserved bits
    raises(mqtt.MQTTError, mqtt.decode_connack, b"\x00")


def test_client_connect_refused_raises_code_and_closes():
    client, socks, _ = make_client(inbox=b"\x20\x02\x00\x05")
    exc = raises(mqtt.MQTTError, client.connect, 0, 1000)
    assert exc.code == mqtt.CONNACK_NOT_AUTHORIZED
    assert not client.connected and socks[0].closed


def test_client_connect_timeout_is_oserror():
    client, socks, _ = make_client(inbox=b"\x20")
    exc = raises(OSError, client.connect, 0, 1000)
    assert mqtt.errno_of(exc) == mqtt.ETIMEDOUT
    assert socks[0].timeout == 1.0 and not client.connected


def test_client_connect_sends_connect_and_reports_session():
    client, socks, _ = make_client(inbox=CONNACK_PRESENT, keepalive_s=30, max_send=3)
    assert client.connect(0, 2000) is True
    assert socks[0].take() == mqtt.connect_packet("box1", 30, False, None, None, 1, True)
    assert socks[0].timeout == 0 and client.connected  # non-blocking once online


# -- 3.3 PUBLISH / 3.4 PUBACK


def test_publish_qos1_dup_exact_bytes():
    pkt = mqtt.publish_packet("a/b", b"hi", qos=1, retain=False, dup=True, pid=10)
    assert pkt == hexbytes("3A 09 00 03 61 2F 62 00 0A 68 69")
    assert mqtt.publish_packet("a/b", "hi", retain=True) == hexbytes("31 07 00 03 61 2F 62 68 69")
    # 3.3.1.1: DUP MUST be 0 for QoS 0
    assert mqtt.publish_packet("a/b", b"", dup=True) == hexbytes("30 05 00 03 61 2F 62")
    raises(ValueError, mqtt.publish_packet, "a/+", b"x")  # 3.3.2.1
    raises(ValueError, mqtt.publish_packet, "a/#", b"x")
    raises(ValueError, mqtt.publish_packet, "a", b"x", 1, False, False, 0)  # 2.3.1


def test_publish_decode_round_trip():
    pkt = mqtt.publish_packet("chairside/v1/s/1/cmd", b'{"v":1}', qos=1, retain=True,
                              dup=True, pid=513)
    first, rl, hlen = mqtt.parse_header(pkt)
    assert hlen + rl == len(pkt)
    assert mqtt.decode_publish(first, pkt[hlen:]) == (
        "chairside/v1/s/1/cmd", b'{"v":1}', 1, True, True, 513)
    raises(mqtt.MQTTError, mqtt.decode_publish, 0x36, b"\x00\x01a")  # QoS 3


def test_puback_subscribe_suback_ping_disconnect_bytes():
    assert mqtt.puback_packet(10) == hexbytes("40 02 00 0A")
    assert mqtt.decode_pid(b"\x01\x02") == 258
    assert mqtt.subscribe_packet(1, "c/d", 1) == hexbytes("82 08 00 01 00 03 63 2F 64 01")
    assert mqtt.decode_suback(b"\x00\x01\x01") == (1, [1])
    assert mqtt.decode_suback(b"\x00\x02\x80") == (2, [0x80])
    assert hexbytes("C0 00") == mqtt.PINGREQ_PACKET
    assert hexbytes("D0 00") == mqtt.PINGRESP_PACKET
    assert hexbytes("E0 00") == mqtt.DISCONNECT_PACKET


# -- client behaviour over a fake socket


def test_qos1_publish_inflight_until_puback():
    client, socks, got = make_client(max_send=4)  # partial writes
    client.connect(0, 1000)
    sock = socks[0]
    sock.take()
    pid = client.publish("a/b", b"hi", qos=1, now=10)
    assert pid == 1 and client.inflight == [1]
    assert sock.take() == hexbytes("32 09 00 03 61 2F 62 00 01 68 69")
    assert client.publish("a/b", b"x", qos=0, now=11) == 0
    sock.inbox += mqtt.puback_packet(pid)
    client.poll(20)
    assert got["acks"] == [1] and client.inflight == []


def test_inflight_window_full_raises():
    client, _socks, _ = make_client(max_inflight=2)
    client.connect(0, 1000)
    client.publish("t", b"1", qos=1, now=1)
    client.publish("t", b"2", qos=1, now=1)
    exc = raises(mqtt.InflightFull, client.publish, "t", b"3", 1, False, 1)
    assert exc.code == mqtt.ERR_INFLIGHT_FULL and len(client.inflight) == 2


def test_incoming_qos1_publish_split_across_reads_is_acked():
    client, socks, got = make_client()
    client.connect(0, 1000)
    sock = socks[0]
    sock.take()
    pkt = mqtt.publish_packet("c/d", b"cmd", qos=1, pid=7)
    sock.inbox += pkt[:3]
    client.poll(5)
    assert got["msgs"] == [] and sock.take() == b""
    sock.inbox += pkt[3:] + mqtt.publish_packet("c/d", b"q0")
    client.poll(6)
    assert got["msgs"] == [("c/d", b"cmd"), ("c/d", b"q0")]
    assert sock.take() == hexbytes("40 02 00 07")
    assert client.received == 3  # CONNACK + 2 PUBLISH


def test_oversize_incoming_packet_dropped_and_counted():
    client, socks, got = make_client(max_packet=64)
    client.connect(0, 1000)
    big = mqtt.publish_packet("c/d", b"x" * 1000)
    socks[0].inbox += big + mqtt.publish_packet("c/d", b"ok")
    for now in range(10):
        client.poll(now)
    assert client.dropped == 1 and got["msgs"] == [("c/d", b"ok")]


def test_callback_error_counted_not_raised():
    def boom(topic, msg):
        raise ValueError("bad")

    client, socks, _ = make_client(on_message=boom)
    client.connect(0, 1000)
    socks[0].take()
    socks[0].inbox += mqtt.publish_packet("c/d", b"x", qos=1, pid=3)
    client.poll(1)
    assert client.callback_errors == 1 and socks[0].take() == mqtt.puback_packet(3)


def test_keepalive_ping_and_dead_link():
    client, socks, _ = make_client(keepalive_s=10)
    client.connect(0, 1000)
    sock = socks[0]
    sock.take()
    client.poll(4999)
    assert sock.take() == b""
    client.poll(5000)  # quiet for keepalive/2 -> PINGREQ (3.12)
    assert sock.take() == hexbytes("C0 00") and client.pings == 1
    sock.inbox += mqtt.PINGRESP_PACKET
    client.poll(5100)
    client.poll(9999)
    assert client.connected and sock.take() == b""
    client.poll(10100)  # second ping, never answered
    assert sock.take() == hexbytes("C0 00")
    client.poll(15099)
    assert client.connected
    exc = raises(OSError, client.poll, 15100)
    assert mqtt.errno_of(exc) == mqtt.ETIMEDOUT
    assert not client.connected and sock.closed
    raises(OSError, client.poll, 15200)


def test_broker_close_raises():
    client, socks, _ = make_client()
    client.connect(0, 1000)

    def eof(n):
        return b""

    socks[0].recv = eof
    raises(OSError, client.poll, 1)
    assert not client.connected


def test_resend_inflight_with_dup_after_reconnect():
    client, socks, got = make_client(keepalive_s=0)
    client.connect(0, 1000)
    p1 = client.publish("a/b", b"1", qos=1, now=1)
    p2 = client.publish("a/b", b"2", qos=1, now=2)
    client.close()
    assert client.inflight == [p1, p2]
    assert client.connect(100, 1000) is False
    sock = socks[1]
    sock.take()
    client.resend_inflight(100)
    assert sock.take() == (mqtt.publish_packet("a/b", b"1", 1, False, True, p1)
                           + mqtt.publish_packet("a/b", b"2", 1, False, True, p2))
    assert sock.take() == b""
    assert client.retransmits == 2
    sock.inbox += mqtt.puback_packet(p2) + mqtt.puback_packet(p1)
    client.poll(110)
    assert got["acks"] == [p2, p1] and client.inflight == []


def test_ack_timeout_retransmits_then_declares_link_dead():
    client, socks, _ = make_client(keepalive_s=0, ack_timeout_ms=1000, max_retries=1)
    client.connect(0, 1000)
    sock = socks[0]
    pid = client.publish("a/b", b"1", qos=1, now=0)
    sock.take()
    client.poll(999)
    assert sock.take() == b""
    client.poll(1000)
    assert sock.take() == mqtt.publish_packet("a/b", b"1", 1, False, True, pid)
    raises(OSError, client.poll, 2000)
    assert not client.connected and client.inflight == [pid]


def test_subscribe_and_suback():
    subacks = []
    client, socks, _ = make_client(keepalive_s=0, on_suback=lambda p, c: subacks.append((p, c)))
    client.connect(0, 1000)
    sock = socks[0]
    sock.take()
    pid = client.subscribe("c/d", 1, 5)
    assert sock.take() == mqtt.subscribe_packet(pid, "c/d", 1)
    sock.inbox += bytes((0x90, 3, 0, pid, 0x80))
    client.poll(6)
    assert subacks == [(pid, [0x80])] and client.sub_failures == 1


def test_missing_suback_declares_link_dead():
    client, _socks, _ = make_client(keepalive_s=0, ack_timeout_ms=500)
    client.connect(0, 1000)
    client.subscribe("c/d", 1, 0)
    client.poll(499)
    raises(OSError, client.poll, 500)


def test_disconnect_sends_packet_and_closes():
    client, socks, _ = make_client()
    client.connect(0, 1000)
    socks[0].take()
    client.disconnect()
    assert socks[0].take() == hexbytes("E0 00") and socks[0].closed
    raises(OSError, client.publish, "a", b"x")
