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
from mptest import Broker, SimClock, TinyUart, UpWlan, fresh_dir


class Recorder:
    """The test's side of mptest.Broker: every PUBLISH the box sent, decoded."""

    def __init__(self):
        self.published = []  # (topic, payload dict)
        self.broker = Broker(mqtt, self.on_publish)

    def on_publish(self, topic, msg):
        self.published.append((topic, json.loads(msg)))

    def send_command(self, topic, payload):
        self.broker.to_box.extend(mqtt.publish_packet(topic, payload, 1, False, False, 77))

    def topics(self, suffix):
        return [p for t, p in self.published if t.endswith(suffix)]


def _make():
    clock = SimClock()
    broker = Recorder()
    oxi, nibp = TinyUart(), TinyUart()
    hw = Hardware(oxi, nibp, UpWlan(), broker.broker.connect_fn, fresh_dir("app"), os,
                  rand=lambda: 0.5)
    cfg = {"site": "s1", "chair": "7", "mqtt": {"keepalive_s": 60}, "nibp_interval_s": 0}
    app = App(cfg, hw, clock, boot=4, fw_version="t", cfg_hash="abcd1234")
    return app, clock, broker, oxi


def _run(app, clock, oxi, ms, spo2=96, pr=70):
    frame = bci.encode_frame(6, 50, pr, spo2)
    for _ in range(ms // 20):
        clock.up += 20
        oxi.push(frame)
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
    broker.broker.up = False
    _run(app, clock, oxi, 30000)  # 30 readings while the broker is gone
    assert app.spool.depth >= 29
    broker.broker.up = True
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
    up = broker.topics("/vitals")[-1]["up"]
    broker.send_command("chairside/v1/s1/7/cmd",
                        b'{"v":1,"cmd":"time","id":"t1","t":1800000000000,"boot":4,"up":%d}' % up)
    broker.send_command("chairside/v1/s1/7/cmd", b'{"v":1,"cmd":"nibp_interval","id":"n1","s":5}')
    _run(app, clock, oxi, 2000)
    resp = broker.topics("/resp")
    assert [(r["id"], r["ok"]) for r in resp] == [("t1", 1), ("n1", 0)]
    assert resp[1]["err"] == "bad_arg:s"
    last = broker.topics("/vitals")[-1]
    assert last["sync"] == 1 and abs(last["t"] - 1800000000000 - 2000) <= 1000


def _time_cmd(cid, t, boot=None, up=None):
    extra = "" if boot is None else ',"boot":' + str(boot) + ',"up":' + str(up)
    return ('{"v":1,"cmd":"time","id":"' + cid + '","t":' + str(t) + extra + "}").encode()


def test_stale_time_commands_are_ignored_and_counted():
    # issue 17 point 3: a time command the broker queued during an outage
    # must not set the clock back (the gateway would file live data as history)
    app, clock, broker, oxi = _make()
    clock.synced = False
    _run(app, clock, oxi, 2000)
    up = broker.topics("/vitals")[-1]["up"]
    cmd = "chairside/v1/s1/7/cmd"
    broker.send_command(cmd, _time_cmd("nobootup", 1700000000000))        # old gateway: refused
    broker.send_command(cmd, _time_cmd("otherboot", 1700000000000, 3, up))  # previous boot
    _run(app, clock, oxi, 31000)  # more than 30 s after `up`
    broker.send_command(cmd, _time_cmd("old", 1700000000000, 4, up))
    _run(app, clock, oxi, 2000)
    resp = broker.topics("/resp")
    assert [(r["id"], r["ok"], r.get("err")) for r in resp] == [
        ("nobootup", 0, "stale_unsafe"), ("otherboot", 0, "expired"), ("old", 0, "expired")]
    assert not clock.synced and app.cmd_expired == 3
    assert broker.topics("/vitals")[-1]["sync"] == 0
    app._publish_status(clock.up)
    _run(app, clock, oxi, 100)
    assert broker.topics("/status")[-1]["cmd_expired"] == 3
    fresh = broker.topics("/vitals")[-1]["up"]
    clock.up += 29000  # 29 s later: still inside the window
    broker.send_command(cmd, _time_cmd("fresh", 1800000000000, 4, fresh))
    _run(app, clock, oxi, 100)
    assert broker.topics("/resp")[-1]["ok"] == 1 and clock.synced
    assert clock.epoch_ms() - 1800000000000 <= 200


def test_expired_command_is_ignored_when_the_clock_is_synced():
    app, clock, broker, oxi = _make()
    _run(app, clock, oxi, 2000)
    now = clock.epoch_ms()
    cmd = "chairside/v1/s1/7/cmd"
    broker.send_command(cmd, b'{"v":1,"cmd":"nibp_start","id":"late","exp":%d}' % (now - 1))
    _run(app, clock, oxi, 100)
    assert broker.topics("/resp")[-1]["err"] == "expired" and not app.nibp.busy
    assert app.cmd_expired == 1
    broker.send_command(cmd, b'{"v":1,"cmd":"nibp_start","id":"ok","exp":%d}' % (now + 60000))
    _run(app, clock, oxi, 100)
    assert broker.topics("/resp")[-1]["ok"] == 1 and app.nibp.busy and app.cmd_expired == 1


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


def test_ntp_never_runs_in_the_poll_that_connected():
    # issue 17 point 7: DNS/TLS/CONNECT and NTP in one poll starve the watchdog
    app, clock, _broker, oxi = _make()
    clock.synced = False
    calls = []

    def ntp_sync():
        calls.append((clock.up, app.link.since))
        if len(calls) == 1:
            return False  # the DNS step: the query comes in a later poll
        clock.set_epoch_ms(1800000000000 + clock.up)
        return True

    app.hw.ntp_sync = ntp_sync
    _run(app, clock, oxi, 3000)
    assert len(calls) == 2 and clock.synced
    for up, since in calls:
        assert up != since  # not the poll in which the link came up
    assert calls[1][0] - calls[0][0] >= 1000


def test_replay_after_a_year_of_uptime_keeps_the_measured_time():
    # issue 17 point 4: records spooled past 49.7 days of uptime replay with
    # the time they were measured (the spool kept only 32 bits of `up`)
    app, clock, broker, oxi = _make()
    year = 365 * 24 * 3600 * 1000
    clock.up = year
    clock.base = 1790000000000 - year  # the same wall clock as the other tests
    app.spool._ram = [None] * 4  # spill to flash quickly
    _run(app, clock, oxi, 3000)
    broker.broker.up = False
    _run(app, clock, oxi, 30000)
    broker.broker.up = True
    _run(app, clock, oxi, 70000)
    hist = [v for v in broker.topics("/vitals") if v.get("h") == 1]
    assert len(hist) >= 29 and app.spool.depth == 0
    for v in hist:
        assert v["up"] > year and v["t"] - v["up"] == 1790000000000 - year
