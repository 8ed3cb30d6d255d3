"""The firmware MQTT client (csfw.mqtt + csfw.link) against a real Mosquitto.

CPython runs the firmware code through host.sockets (MicroPython socket API)
and host.wlan (FakeWLAN with cut/restore); paho-mqtt 2.x is the independent
peer on the other side of the broker.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from csfw import link as L
from csfw import mqtt
from csfw.contract import OFFLINE_PAYLOAD
from host.sockets import HostSocket, make_connect_fn
from host.wlan import FakeWLAN

pytestmark = pytest.mark.services

STATUS = "chairside/v1/site1/c1/status"
CMD = "chairside/v1/site1/c1/cmd"
VITALS = "chairside/v1/site1/c1/vitals"


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)


def pump(step: Callable[[], Any], done: Callable[[], bool], timeout_s: float) -> bool:
    """Call step() every 10 ms until done() or timeout; return done()."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        step()
        if done():
            return True
        time.sleep(0.01)
    return done()


class Peer:
    """paho-mqtt subscriber collecting messages in a queue."""

    def __init__(self, port: int, topics: list[str], client_id: str = "peer") -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(t, 1) for t in topics])
            assert self.subscribed.wait(5), "peer subscription not acknowledged"

    def get(self, timeout_s: float = 5) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout_s)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peer_factory(mosquitto: Any) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(topics: list[str], client_id: str = "peer") -> Peer:
        p = Peer(mosquitto.port, topics, client_id)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


class Box:
    """Firmware client + recorder of what it received/acknowledged."""

    def __init__(self, port: int, wlan: FakeWLAN | None = None, **kw: Any) -> None:
        self.wlan = wlan or FakeWLAN()
        self.wlan.active(True)
        self.wlan.connect("clinic", "key")
        self.clock = Clock()
        self.msgs: list[tuple[str, bytes]] = []
        self.acks: list[int] = []
        self.wire: list[bytearray] = []  # bytes written, one buffer per socket
        inner = make_connect_fn("127.0.0.1", port, self.wlan, timeout_s=2)

        def connect_fn() -> HostSocket:
            sock = inner()
            buf = bytearray()
            self.wire.append(buf)
            send = sock.send

            def recording_send(data: Any) -> int:
                n = send(data)
                buf.extend(bytes(data[:n]))
                return n

            sock.send = recording_send  # type: ignore[method-assign]
            return sock

        kw.setdefault("keepalive_s", 30)
        self.client = mqtt.MQTTClient(
            "box-c1",
            connect_fn,
            on_message=lambda t, m: self.msgs.append((t, m)),
            on_puback=self.acks.append,
            **kw,
        )

    def now(self) -> int:
        return self.clock.now()

    def poll(self) -> None:
        self.client.poll(self.now())


@pytest.fixture
def make_box(mosquitto: Any) -> Iterator[Callable[..., Box]]:
    """Box factory bound to the test's broker; closes every client afterwards."""
    boxes: list[Box] = []

    def make(**kw: Any) -> Box:
        box = Box(mosquitto.port, **kw)
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.client.close()


def packets(wire: bytes) -> list[tuple[int, bytes]]:
    """Split recorded bytes into (first_byte, body) packets."""
    out = []
    while wire:
        hdr = mqtt.parse_header(wire)
        assert hdr is not None
        first, rl, hlen = hdr
        out.append((first, bytes(wire[hlen : hlen + rl])))
        wire = wire[hlen + rl :]
    return out


def test_qos0_and_qos1_publish_received_and_puback(make_box: Any, peer_factory: Any) -> None:
    peer = peer_factory([VITALS])
    box = make_box()
    assert box.client.connect(box.now(), 2000) is False
    box.client.publish(VITALS, b'{"q":0}', qos=0, now=box.now())
    pid = box.client.publish(VITALS, b'{"q":1}', qos=1, now=box.now())
    assert pid > 0 and box.client.inflight == [pid]
    assert pump(box.poll, lambda: box.acks == [pid], 5)
    assert box.client.inflight == []
    got = sorted([peer.get().payload, peer.get().payload])
    assert got == [b'{"q":0}', b'{"q":1}']
    box.client.disconnect()
    assert not box.client.connected


def test_last_will_delivered_when_wlan_cut(make_box: Any, peer_factory: Any) -> None:
    peer = peer_factory([STATUS])
    box = make_box(will_topic=STATUS, will_msg=OFFLINE_PAYLOAD, will_retain=True)
    box.client.connect(box.now(), 2000)
    box.client.publish(STATUS, b'{"v":1,"state":"online"}', qos=1, retain=True, now=box.now())
    assert peer.get().payload == b'{"v":1,"state":"online"}'
    box.wlan.cut()
    with pytest.raises(OSError):
        box.poll()
    assert not box.client.connected
    assert peer.get().payload == OFFLINE_PAYLOAD
    # the will was retained: a late subscriber (the gateway restarting) sees it
    late = peer_factory([STATUS], client_id="late")
    msg = late.get()
    assert msg.payload == OFFLINE_PAYLOAD and msg.retain


def test_clean_disconnect_sends_no_will(make_box: Any, peer_factory: Any) -> None:
    peer = peer_factory([STATUS])
    box = make_box(will_topic=STATUS, will_msg=OFFLINE_PAYLOAD)
    box.client.connect(box.now(), 2000)
    box.client.disconnect()
    with pytest.raises(queue.Empty):
        peer.get(0.5)


@pytest.mark.slow
def test_keepalive_pings_keep_link_alive(make_box: Any) -> None:
    box = make_box(keepalive_s=2)
    box.client.connect(box.now(), 2000)
    # > 1.5 x keepalive, the broker's limit (3.1.2.10); Mosquitto 2.0 checks
    # it with whole-second granularity and drops an idle 2 s client after ~5 s
    # (see the control below), so stay up for 6 s.
    end = time.monotonic() + 6
    while time.monotonic() < end:
        box.poll()
        time.sleep(0.02)
    # at least one ping per keepalive period kept it up (about one per 1 s when
    # the polls run on time; a loaded CI delays them, so not more is required)
    assert box.client.connected and box.client.pings >= 3
    pid = box.client.publish(VITALS, b"x", qos=1, now=box.now())
    assert pump(box.poll, lambda: pid in box.acks, 3)
    # control: without polls (so no pings) the broker drops us after 1.5 x 2 s
    sock = box.client._sock
    assert sock is not None
    t0 = time.monotonic()
    sock.settimeout(10)
    assert sock.recv(16) == b""  # EOF: Mosquitto closed the connection
    assert 2.5 < time.monotonic() - t0 < 10
    box.client.close()


def test_connect_times_out_against_silent_server() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # the kernel completes the handshake; nobody ever answers
    try:
        port = srv.getsockname()[1]
        client = mqtt.MQTTClient("box-c1", make_connect_fn("127.0.0.1", port, timeout_s=2))
        t0 = time.monotonic()
        with pytest.raises(OSError):
            client.connect(0, 500)
        elapsed = time.monotonic() - t0
        assert 0.4 <= elapsed < 1.5
        assert not client.connected
    finally:
        srv.close()


def test_connect_refused_when_no_broker_and_when_wlan_down() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = mqtt.MQTTClient("box-c1", make_connect_fn("127.0.0.1", port, timeout_s=1))
    with pytest.raises(OSError):
        client.connect(0, 500)
    wlan = FakeWLAN()
    client = mqtt.MQTTClient("box-c1", make_connect_fn("127.0.0.1", port, wlan, timeout_s=1))
    with pytest.raises(OSError):
        client.connect(0, 500)  # wlan never joined


def run_link(box: Box, lk: L.Link, done: Callable[[], bool], timeout_s: float) -> bool:
    return pump(lambda: lk.poll(box.now()), done, timeout_s)


def test_persistent_session_delivers_command_sent_while_offline(
    make_box: Any, peer_factory: Any
) -> None:
    gateway = peer_factory([], client_id="gw")
    box = make_box(clean_session=False)
    onlines: list[bool] = []

    def on_online(present: bool, now: int) -> None:
        onlines.append(present)
        if not present:
            box.client.subscribe(CMD, 1, now)

    wlan = box.wlan
    wlan.disconnect()
    lk = L.mqtt_link(
        wlan,
        box.client,
        "clinic",
        "key",
        connect_timeout_ms=2000,
        on_online=on_online,
        min_backoff_ms=100,
        clock_rand=lambda: 0.0,
    )
    assert run_link(box, lk, lambda: lk.online and not box.client._subs, 5)
    assert onlines == [False]

    wlan.cut()
    assert run_link(box, lk, lambda: lk.state == L.BACKOFF, 2)
    assert lk.failures[L.WIFI_LOST] == 1
    time.sleep(0.2)  # let the broker notice the drop
    gateway.publish(CMD, b'{"v":1,"cmd":"status","id":"q1"}', qos=1)
    assert box.msgs == []

    wlan.restore()
    assert run_link(box, lk, lambda: bool(box.msgs), 10)
    assert onlines == [False, True]  # session_present on the reconnect
    assert box.msgs == [(CMD, b'{"v":1,"cmd":"status","id":"q1"}')]
    assert lk.reconnects == 1


def test_inflight_qos1_resent_with_dup_after_reconnect(make_box: Any, peer_factory: Any) -> None:
    peer = peer_factory([VITALS])
    box = make_box(clean_session=False)
    wlan = box.wlan
    lk = L.mqtt_link(
        wlan,
        box.client,
        "clinic",
        "key",
        connect_timeout_ms=2000,
        min_backoff_ms=100,
        clock_rand=lambda: 0.0,
    )
    assert run_link(box, lk, lambda: lk.online, 5)
    pid = box.client.publish(VITALS, b'{"seq":1}', qos=1, now=box.now())
    wlan.cut()  # before the PUBACK is read: the message stays in flight
    assert run_link(box, lk, lambda: lk.state == L.BACKOFF, 2)
    assert box.client.inflight == [pid] and box.acks == []
    wlan.restore()
    assert run_link(box, lk, lambda: box.acks == [pid], 10)
    assert box.client.inflight == [] and box.client.retransmits == 1

    first_try = packets(bytes(box.wire[0]))
    assert [f for f, _ in first_try] == [mqtt.CONNECT, 0x32]  # QoS 1, DUP 0
    second = packets(bytes(box.wire[1]))
    assert second[0][0] == mqtt.CONNECT
    first, body = second[1]
    assert first == 0x3A  # PUBLISH, DUP=1, QoS 1 (3.3.1.1, 4.4)
    assert mqtt.decode_publish(first, body)[5] == pid  # original packet identifier
    assert peer.get().payload == b'{"seq":1}'  # at least once


def test_dead_link_detected_by_missing_pingresp(make_box: Any) -> None:
    box = make_box(keepalive_s=1)
    box.client.connect(box.now(), 2000)
    # swallow everything the broker sends from now on: PINGRESP never arrives
    sock = box.client._sock
    assert sock is not None

    def silent(n: int) -> bytes:
        raise OSError(11, "would block")

    sock.recv = silent
    t0 = time.monotonic()
    with pytest.raises(OSError):
        for _ in range(300):
            box.poll()
            time.sleep(0.01)
    assert time.monotonic() - t0 < 3.0  # ping after 0.5 s + 0.5 s deadline, with room for a loaded CI
    assert box.client.pings == 1 and not box.client.connected
