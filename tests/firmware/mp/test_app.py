# The whole box loop (csfw.app.App) on both VMs: sensor bytes in, MQTT
# packets out, outage -> spool -> replay with h=1, commands answered.  The
# "broker" is an in-test socket that answers CONNACK/SUBACK/PUBACK per the
# MQTT 3.1.1 spec, so this also runs on the MicroPython WebAssembly port,
# which has no sockets.
import json
import os

from csfw import bci, mqtt
from csfw.app import App, Hardware
from csfw.supervisor import Supervisor
from mptest import fresh_dir

EAGAIN = 11


class Clock:
    def __init__(self):
        self.up = 0
        self.synced = True
        self.base = 1790000000000

    def now_ms(self):
        return self.up

    def epoch_ms(self):
        return self.base + self.up

    def set_epoch_ms(self, ms):
        self.base = ms - self.up
        self.synced = True


class Uart:
    def __init__(self):
        self.rx = bytearray()
        self.tx = bytearray()

    def any(self):
        return len(self.rx)

    def readinto(self, buf, n=None):
        n = min(len(buf) if n is None else n, len(self.rx))
        for i in range(n):
            buf[i] = self.rx[i]
        self.rx = self.rx[n:]
        return n

    def read(self, n=None):
        n = len(self.rx) if n is None else min(n, len(self.rx))
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out

    def write(self, data):
        self.tx.extend(data)
        return len(data)


class Wlan:
    def __init__(self):
        self.up = True

    def active(self, on=None):
        return True

    def connect(self, ssid=None, key=None):
        pass

    def isconnected(self):
        return self.up

    def status(self, param=None):
        return 3 if self.up else 0


class Broker:
    """Records PUBLISHes; answers like a broker over a fake socket."""

    def __init__(self):
        self.published = []  # (topic, payload dict)
        self.to_box = bytearray()
        self.up = True
        self.subscribed = []

    def connect_fn(self):
        if not self.up:
            raise OSError(113)
        return Sock(self)

    def handle(self, data):
        buf = bytearray(data)
        while buf:
            head = mqtt.parse_header(buf)
            first, rl, hl = head
            body = bytes(buf[hl:hl + rl])
            buf = buf[hl + rl:]
            kind = first & 0xF0
            if kind == 0x10:
                self.to_box.extend(b"\x20\x02\x00\x00")
            elif kind == 0x30:
                topic, msg, qos, _dup, _retain, pid = mqtt.decode_publish(first, body)
                self.published.append((topic, json.loads(msg)))
                if qos:
                    self.to_box.extend(mqtt.puback_packet(pid))
            elif kind == 0x80:
                pid = (body[0] << 8) | body[1]
                self.subscribed.append(pid)
                self.to_box.extend(bytes([0x90, 3, body[0], body[1], 1]))
            elif kind == 0xC0:
                self.to_box.extend(b"\xd0\x00")

    def send_command(self, topic, payload):
        self.to_box.extend(mqtt.publish_packet(topic, payload, 1, False, False, 77))

    def topics(self, suffix):
        return [p for t, p in self.published if t.endswith(suffix)]


class Sock:
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
        if not self.broker.to_box:
            raise OSError(EAGAIN)
        out = bytes(self.broker.to_box[:n])
        self.broker.to_box = self.broker.to_box[n:]
        return out

    def close(self):
        self.closed = True


def _make():
    clock = Clock()
    broker = Broker()
    oxi, nibp = Uart(), Uart()
    hw = Hardware(oxi, nibp, Wlan(), broker.connect_fn, fresh_dir("app"), os, rand=lambda: 0.5)
    cfg = {"site": "s1", "chair": "7", "mqtt": {"keepalive_s": 60}, "nibp_interval_s": 0}
    app = App(cfg, hw, clock, boot=4, fw_version="t", cfg_hash="abcd1234")
    return app, clock, broker, oxi


def _run(app, clock, oxi, ms, spo2=96, pr=70):
    frame = bci.encode_frame(6, 50, pr, spo2)
    for _ in range(ms // 20):
        clock.up += 20
        oxi.rx.extend(frame)
        app.poll()


def test_publishes_birth_and_one_vitals_per_second():
    app, clock, broker, oxi = _make()
    _run(app, clock, oxi, 5000)
    status = broker.topics("/status")
    assert status and status[0]["state"] == "online" and status[0]["cfg"] == "abcd1234"
    vitals = broker.topics("/vitals")
    assert len(vitals) == 5
    assert [v["seq"] for v in vitals] == sorted(v["seq"] for v in vitals)
    assert vitals[-1]["spo2"] == 96 and vitals[-1]["pr"] == 70 and vitals[-1]["st"] == "ok"
    assert vitals[-1]["t"] - vitals[-1]["up"] == 1790000000000 and vitals[-1]["boot"] == 4
    assert "h" not in vitals[-1]


def test_outage_spools_then_replays_in_order_as_historical():
    app, clock, broker, oxi = _make()
    _run(app, clock, oxi, 3000)
    broker.up = False
    _run(app, clock, oxi, 30000)  # 30 readings while the broker is gone
    assert app.spool.depth >= 29
    broker.up = True
    _run(app, clock, oxi, 70000)  # backoff, reconnect, replay
    assert app.spool.depth == 0
    vitals = broker.topics("/vitals")
    seqs = [v["seq"] for v in vitals]
    assert len(set(seqs)) == len(seqs)  # nothing published twice
    every = sorted(p["seq"] for t, p in broker.published)  # seq counts every box message
    assert every == list(range(every[0], every[-1] + 1))  # nothing lost
    hist = [v for v in vitals if v.get("h") == 1]
    assert len(hist) >= 29
    assert [v["seq"] for v in hist] == sorted(v["seq"] for v in hist)
    for v in hist:  # stored at the time measured: t rebuilt from the boot epoch
        assert v["t"] - v["up"] == 1790000000000


def test_answers_commands_and_time_sync():
    app, clock, broker, oxi = _make()
    clock.synced = False
    _run(app, clock, oxi, 2000)
    assert broker.topics("/vitals")[-1]["sync"] == 0
    broker.send_command("chairside/v1/s1/7/cmd", b'{"v":1,"cmd":"time","id":"t1","t":1800000000000}')
    broker.send_command("chairside/v1/s1/7/cmd", b'{"v":1,"cmd":"nibp_interval","id":"n1","s":5}')
    _run(app, clock, oxi, 2000)
    resp = broker.topics("/resp")
    assert [(r["id"], r["ok"]) for r in resp] == [("t1", 1), ("n1", 0)]
    assert resp[1]["err"] == "bad_arg:s"
    last = broker.topics("/vitals")[-1]
    assert last["sync"] == 1 and abs(last["t"] - 1800000000000 - 2000) <= 1000


def test_watchdog_fed_only_while_every_task_progresses():
    class Wdt:
        feeds = 0

        def feed(self):
            Wdt.feeds += 1

    sup = Supervisor(Wdt(), stall_ms=1000)
    a = sup.register("sensors", 0)
    b = sup.register("link", 0)
    sup.progress(a, 500)
    sup.progress(b, 500)
    assert sup.check(900) and Wdt.feeds == 1
    sup.progress(a, 1800)
    assert not sup.check(1800) and sup.stalled == "link" and Wdt.feeds == 1


def test_serial_transport_starts_over_when_an_ack_is_lost():
    from csfw.app import SerialTransport
    from csfw.serial_link import SerialLink

    host_lines = [b"H 1790000000000\n"]
    sent = []
    events = []
    link = SerialLink(sent.append, lambda: host_lines.pop(0) if host_lines else None)
    transport = SerialTransport(link, lambda present, now: events.append(("up", now)),
                                lambda cause, now: events.append((cause, now)))
    transport.poll(0)
    assert transport.online and events == [("up", 0)]
    pid = transport.publish("chairside/v1/s/1/vitals", b"{}", 1, False, 100)
    assert pid and sent[-1].startswith(b"P ")
    host_lines.append(b"H 1790000005000\n")  # the host still talks, but never answers `A`
    transport.poll(5000)
    assert transport.online
    host_lines.append(b"H 1790000011000\n")
    transport.poll(10200)
    assert ("ack_timeout", 10200) in events and not transport.online
