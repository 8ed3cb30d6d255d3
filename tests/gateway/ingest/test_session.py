"""The gateway's receiving MQTT session: codec from the MQTT 3.1.1 spec's
examples, then the session against a real Mosquitto (persistent session,
acks only when told, redelivery of what was never acknowledged)."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chairside.ingest.session import (
    IngestSession,
    Packet,
    ProtocolError,
    SessionConfig,
    _remaining_length,
    connect_packet,
    parse_stream,
    puback_packets,
    publish_packet,
    subscribe_packet,
)
from chairside.sim.services import Mosquitto

_ids = itertools.count()


@pytest.mark.parametrize(("value", "encoded"), [
    # MQTT 3.1.1 section 2.2.3, table 2.4: the boundaries of 1..4 bytes
    (0, "00"), (127, "7F"), (128, "80 01"), (16_383, "FF 7F"), (16_384, "80 80 01"),
    (2_097_151, "FF FF 7F"), (2_097_152, "80 80 80 01"), (268_435_455, "FF FF FF 7F"),
])
def test_remaining_length_matches_the_spec_table(value: int, encoded: str) -> None:
    assert _remaining_length(value) == bytes.fromhex(encoded)


def test_connect_subscribe_and_puback_bytes() -> None:
    # 3.1: "MQTT", level 4, flags (user 0x80, password 0x40, clean 0x02), keepalive
    assert connect_packet("gw", 30, False, "u", "p") == bytes.fromhex(
        "10 14 0004 4d515454 04 c0 001e 0002 6777 0001 75 0001 70")
    assert connect_packet("gw", 60, True) == bytes.fromhex("10 0e 0004 4d515454 04 02 003c 0002 6777")
    # 3.8.1: fixed header 0x82; packet id, then (filter, requested QoS)
    assert subscribe_packet(1, ["a/#"]) == bytes.fromhex("82 08 0001 0003 612f23 01")
    assert puback_packets([1, 258]) == bytes.fromhex("40 02 0001 40 02 0102")
    # 3.3.1: QoS 0 has no packet id; RETAIN is bit 0 of the fixed header
    assert publish_packet("a/b", b"xy", retain=True) == bytes.fromhex("31 07 0003 612f62 7879")
    assert publish_packet("a/b", b"", retain=False) == bytes.fromhex("30 05 0003 612f62")


def _publish(topic: bytes, payload: bytes, qos: int, pid: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"") + payload
    return bytes((0x30 | qos << 1,)) + _remaining_length(len(body)) + body


def _parse_all(stream: bytes, chunk: int) -> tuple[list[tuple[Any, ...]], list[Packet]]:
    """Feed stream in chunks of `chunk` bytes, as reads would deliver it."""
    got: list[tuple[Any, ...]] = []
    other: list[Packet] = []
    buf = bytearray()
    for i in range(0, len(stream), chunk):
        buf += stream[i:i + chunk]
        used = parse_stream(buf, lambda *a: got.append(a), other.append)
        del buf[:used]
    assert not buf
    return got, other


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_packets_split_anywhere_come_out_whole_and_in_order(chunk: int) -> None:
    big = b"x" * 300  # a two-byte remaining length
    stream = (_publish(b"a/b", b"one", 1, 7) + b"\x90\x03\x00\x01\x01"
              + _publish(b"a/c", big, 0) + b"\xd0\x00" + _publish("c/ü".encode(), b"", 1, 65535))
    got, other = _parse_all(stream, chunk)
    assert got == [("a/b", b"one", 1, 7), ("a/c", big, 0, 0), ("c/ü", b"", 1, 65535)]
    assert [(p.first, p.body) for p in other] == [(0x90, b"\x00\x01\x01"), (0xD0, b"")]


@pytest.mark.parametrize(("stream", "reason"), [
    (bytes((0x34,)) + b"\x05\x00\x01a\x00\x01", "QoS 2"),
    (b"\x32\x03\x00\x09a", "shorter than its topic"),
    (b"\x30\x01\x00", "without a topic"),
    (b"\x30\x04\x00\x02\xff\xfe", "not UTF-8"),
    (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
])
def test_malformed_packets_raise_with_a_reason(stream: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_stream(bytearray(stream), lambda *a: None, lambda p: None)


def test_parse_stream_stops_after_limit_packets() -> None:
    buf = bytearray(b"\x20\x02\x01\x00" + _publish(b"a", b"x", 1, 9))
    other: list[Packet] = []
    used = parse_stream(buf, lambda *a: pytest.fail("parsed past the limit"), other.append, limit=1)
    assert used == 4 and [p.first for p in other] == [0x20]


def _read_packet(conn: socket.socket) -> bytes:
    """One whole packet (at most a one-byte remaining length: all this broker reads)."""
    head = conn.recv(2, socket.MSG_WAITALL)
    return head + (conn.recv(head[1], socket.MSG_WAITALL) if head[1] else b"")


def test_publishes_right_behind_the_connack_are_delivered() -> None:
    """A persistent session's queued messages follow the CONNACK at once; when
    one read holds both, the PUBLISH must be delivered, not refused as
    "before CONNACK" (which, with a backlog, failed every reconnect)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    acks: list[bytes] = []

    def scripted_broker() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            assert _read_packet(conn)[0] == 0x10  # CONNECT
            conn.sendall(b"\x20\x02\x01\x00" + _publish(b"t/queued", b"q", 1, 7))  # one write
            assert _read_packet(conn)[0] == 0x82  # SUBSCRIBE
            acks.append(_read_packet(conn))  # sent only once the message was seen and acked
            conn.sendall(b"\x90\x03\x00\x01\x01")  # SUBACK, granted QoS 1
            with contextlib.suppress(OSError):
                conn.recv(16)  # until the session disconnects

    broker = threading.Thread(target=scripted_broker, daemon=True)
    broker.start()
    received = Received()
    session = IngestSession(
        SessionConfig("127.0.0.1", server.getsockname()[1], "gw", ("t/#",), backoff_min_s=5),
        received, lambda state: None)
    session.start()
    try:
        (topic, payload, qos, pid, generation), = received.wait_for(1)
        assert (topic, payload, qos, pid) == ("t/queued", b"q", 1, 7)
        session.ack(generation, pid)
        broker.join(10)
        assert acks == [b"\x40\x02\x00\x07"]
        assert session.protocol_errors == 0 and session.connects == 1
    finally:
        session.stop()
        server.close()


# ---- against a real broker -------------------------------------------------------------


class Received:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, int, int, int]] = []
        self.cond = threading.Condition()

    def __call__(self, topic: str, payload: bytes, qos: int, pid: int, generation: int) -> None:
        with self.cond:
            self.items.append((topic, payload, qos, pid, generation))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10) -> list[tuple[str, bytes, int, int, int]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, timeout), self.items
            return list(self.items)


def _session(broker: Mosquitto, client_id: str, received: Received) -> IngestSession:
    states: list[str] = []
    session = IngestSession(
        SessionConfig("127.0.0.1", broker.port, client_id, ("t/#",), keepalive_s=5,
                      backoff_min_s=0.1, backoff_max_s=0.5),
        received, states.append)
    session.start()
    end = time.monotonic() + 10
    while session.state != "receiving" and time.monotonic() < end:
        time.sleep(0.01)
    assert session.state == "receiving", states
    return session


def _publish_qos1(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{next(_ids)}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.services
def test_qos0_messages_go_out_retained_only_while_receiving(mosquitto: Mosquitto) -> None:
    """``send_qos0`` (the gateway's stored watermarks): refused before the
    session is up, sent retained once it receives, so a late subscriber gets it."""
    idle = IngestSession(SessionConfig("127.0.0.1", mosquitto.port, "never-started", ("t/#",)), Received())
    assert not idle.send_qos0("w/0", b"early", retain=True)
    idle.stop()
    session = _session(mosquitto, f"ingest-{next(_ids)}", Received())
    try:
        assert session.send_qos0("w/1", b"one", retain=True)
        assert session.send_qos0("w/1", b"two", retain=True)  # supersedes the first
    finally:
        assert session.pause_reading(5)
        session.stop()
    got: list[tuple[str, bytes, bool]] = []
    done = threading.Event()
    late = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"late-{next(_ids)}")
    late.on_message = lambda c, u, m: (got.append((m.topic, m.payload, bool(m.retain))), done.set())
    late.on_connect = lambda c, u, f, rc, p: c.subscribe("w/#")
    late.connect("127.0.0.1", mosquitto.port)
    late.loop_start()
    try:
        assert done.wait(5)
        time.sleep(0.2)
        assert got == [("w/1", b"two", True)]
    finally:
        late.disconnect()
        late.loop_stop()


@pytest.mark.services
def test_unacknowledged_messages_come_back_acknowledged_ones_do_not(mosquitto: Mosquitto) -> None:
    client_id = f"ingest-{next(_ids)}"
    first = Received()
    session = _session(mosquitto, client_id, first)
    _publish_qos1(mosquitto, [(f"t/{i}", str(i).encode()) for i in range(6)])
    got = first.wait_for(6)
    assert [(t, p, q) for t, p, q, _pid, _g in got] == [(f"t/{i}", str(i).encode(), 1) for i in range(6)]
    for _t, payload, _q, pid, generation in got:
        if int(payload) % 2 == 0:
            session.ack(generation, pid)  # "durable": the even ones
    session.ack(generation - 1, got[1][3])  # from an older connection: ignored
    assert session.pause_reading(5)
    session.stop()  # sends the due PUBACKs, then DISCONNECT; the session persists

    # what the first connection got and did not acknowledge: the odd ones, and
    # any copy the broker sent again meanwhile (QoS 1 is at least once)
    acked = {pid for _t, payload, _q, pid, _g in got if int(payload) % 2 == 0}
    unacked = sorted(p for _t, p, _q, pid, _g in first.items if pid not in acked)
    assert set(unacked) == {b"1", b"3", b"5"}, first.items
    second = Received()
    again = _session(mosquitto, client_id, second)
    try:
        redelivered = second.wait_for(len(unacked))
        time.sleep(0.3)  # nothing else arrives
        again_got = sorted(p for _t, p, *_ in second.items)
        # every unacknowledged message comes back (nothing is lost) ...
        assert set(again_got) >= set(unacked), (first.items, second.items)
        # ... and the acknowledged ones do not, but for one: Mosquitto 2.0.11 was
        # seen (about 1 run in 20 on a loaded machine) to redeliver the message
        # PUBACKed last before the DISCONNECT; QoS 1 allows a duplicate, and the
        # gateway drops it (ingest/dedup.py)
        assert len(again_got) - len(unacked) <= 1, (first.items, second.items)
        assert {g for *_, g in redelivered} == {again.generation}
    finally:
        again.stop()


@pytest.mark.services
def test_reconnects_after_the_broker_restarts(mosquitto: Mosquitto) -> None:
    received = Received()
    session = _session(mosquitto, f"ingest-{next(_ids)}", received)
    try:
        generation = session.generation
        mosquitto.stop(remove=False)
        mosquitto.start()
        end = time.monotonic() + 15
        while (session.state != "receiving" or session.generation == generation) and time.monotonic() < end:
            time.sleep(0.05)
        assert session.state == "receiving" and session.generation > generation
        _publish_qos1(mosquitto, [("t/after", b"x")])
        assert received.wait_for(1)[-1][:2] == ("t/after", b"x")
    finally:
        session.stop()


class FailsOnce(Received):
    def __call__(self, topic: str, payload: bytes, qos: int, pid: int, generation: int) -> None:
        super().__call__(topic, payload, qos, pid, generation)
        if len(self.items) == 1:
            raise RuntimeError("a bug in the gateway's handler")


@pytest.mark.services
def test_a_failing_callback_costs_a_reconnect_not_the_session(mosquitto: Mosquitto) -> None:
    received = FailsOnce()
    session = _session(mosquitto, f"ingest-{next(_ids)}", received)
    try:
        _publish_qos1(mosquitto, [("t/x", b"1")])
        first, again = received.wait_for(2)
        assert first[:2] == again[:2] == ("t/x", b"1")  # unacknowledged: delivered again
        assert again[4] > first[4]  # on a new connection
    finally:
        session.stop()


@pytest.mark.services
def test_a_session_the_broker_lost_is_reported(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Broker killed and started again without its state (kill -9 before an
    autosave): the session reconnects and says, at WARNING and in
    ``sessions_lost``, that the broker no longer had it; a broker restart that
    kept its state (clean stop, persistence file written) is not reported."""
    broker = Mosquitto(workdir=tmp_path / "broker")
    broker.start()
    received = Received()
    session = _session(broker, f"ingest-{next(_ids)}", received)
    try:
        broker.stop(remove=False)  # clean stop: the persistence file keeps the session
        broker.start()
        _wait_state(session, "receiving")
        assert session.sessions_lost == 0
        broker.kill()
        for leftover in (tmp_path / "broker").glob("*.db"):
            leftover.unlink()
        broker.start()
        _wait_state(session, "receiving", after_connects=3)
        assert session.sessions_lost == 1
        assert any("lost by the broker" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    finally:
        session.stop()
        broker.stop()


def _wait_state(session: IngestSession, state: str, after_connects: int = 2) -> None:
    end = time.monotonic() + 15
    while (session.state != state or session.connects < after_connects) and time.monotonic() < end:
        time.sleep(0.02)
    assert session.state == state and session.connects >= after_connects
