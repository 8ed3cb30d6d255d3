"""End-to-end delivery (issue 16), firmware side: the real firmware on the host
layer keeps each reading until a `stored` watermark covers it.

The box (host.box.SimBox: csfw.app.App, real TCP to a real Mosquitto, or the
USB line protocol through the real SerialBridge) talks to a confirming peer
that plays the gateway's part with the real chairside.store.watermark
(a reading counts as durable when it arrives; the gateway's own writer is
tested elsewhere).  Time is simulated for the box and the watermarks; the
broker runs in real time, so the box is stepped in small chunks with short
real pauses.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import serial
from paho.mqtt.enums import CallbackAPIVersion

from chairside.contract import topic
from chairside.ingest.serial_bridge import SerialBridge
from chairside.sim.services import Mosquitto
from chairside.store.watermark import Watermarks
from host.box import SimBox
from host.clock import SimClock

pytestmark = pytest.mark.services
SITE = "clinic-e2e"


class ConfirmingGateway:
    """Subscribes to the kept readings, feeds Watermarks, publishes `stored`."""

    def __init__(self, port: int, clock: SimClock) -> None:
        self.port = port
        self.clock = clock
        self.wm = Watermarks()
        self.lock = threading.Lock()
        self.stored: dict[tuple[str, int, int], int] = {}  # (chair, boot, seq) -> times received
        self.recovered = 0
        self.subscribed = threading.Event()
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-e2e", clean_session=False)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_a: self.subscribed.set()
        return client

    def start(self) -> None:
        self.subscribed.clear()
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client = self._client()

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe([(f"chairside/v1/{SITE}/+/vitals", 1), (f"chairside/v1/{SITE}/+/nibp", 1)])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        m = json.loads(msg.payload)
        chair = msg.topic.split("/")[3]
        with self.lock:
            key = (chair, m["boot"], m["seq"])
            if key not in self.stored and m.get("h") == 1:
                self.recovered += 1  # first seen as a re-send: its first copy was lost
            self.stored[key] = self.stored.get(key, 0) + 1
            self.wm.durable(SITE, chair, m["boot"], m["seq"], m["p"], self.clock.now_ms())

    def publish_due(self) -> None:
        now = self.clock.now_ms()
        with self.lock:
            self.wm.expire_gaps(now)
            due = self.wm.due(now)
            for site, chair, boot, seq in due:
                self.wm.mark_published(site, chair, boot, seq, now)
        for site, chair, boot, seq in due:
            payload = json.dumps({"v": 1, "boot": boot, "seq": seq, "t": self.clock.true_epoch_ms()})
            self.client.publish(topic("stored", site, chair), payload, qos=1, retain=True)


def kept_log(box: SimBox) -> list[tuple[int, int]]:
    """Record (boot, seq) of every kept reading the box makes (all go through the spool)."""
    made: list[tuple[int, int]] = []
    push = box.app.spool.push

    def recording_push(rec: Any) -> None:
        made.append((rec[1], rec[2]))
        push(rec)

    box.app.spool.push = recording_push
    return made


def run(box: SimBox, gw: ConfirmingGateway | None, sim_ms: int, chunk_ms: int = 200) -> None:
    for _ in range(sim_ms // chunk_ms):
        box.step(chunk_ms)
        if gw is not None:
            gw.publish_due()
        time.sleep(0.003)


@pytest.fixture
def sim_clock() -> SimClock:
    return SimClock(epoch_at_boot_ms=1_790_000_000_000, synced=True)


def test_every_reading_confirmed_across_a_broker_crash_without_persistence(
    mosquitto: Mosquitto, sim_clock: SimClock, tmp_path: Path
) -> None:
    gw = ConfirmingGateway(mosquitto.port, sim_clock)
    gw.start()
    box = SimBox(SITE, "c1", mqtt_port=mosquitto.port, clock=sim_clock, fs_dir=str(tmp_path / "box"),
                 nibp_interval_s=60)
    made = kept_log(box)
    run(box, gw, 20_000)
    assert box.app.link.online and box.app.confirmed >= 15 and box.app.spool.depth <= 2
    assert box.app.spool.dropped == 0 and not list((tmp_path / "box" / "spool").glob("*.sp"))

    # the broker dies with kill -9 and comes back without its state: the
    # gateway's session and every queued or PUBACKed-but-undelivered reading are gone
    gw.stop()
    mosquitto.kill()
    for db in mosquitto.workdir.glob("*.db"):
        db.unlink()
    run(box, None, 5_000)
    mosquitto.start()
    run(box, None, 10_000)  # the box reconnects first and publishes to nobody
    assert box.app.link.online
    gw.start()  # a fresh session: everything published meanwhile was lost
    run(box, gw, 50_000)  # the box re-sends what stays unconfirmed (30 s without progress)
    assert box.app.resends >= 1
    run(box, gw, 5_000)
    assert gw.recovered >= 8  # published to nobody after the crash, then re-sent
    missing = [k for k in made[:-2] if ("c1",) + k not in gw.stored]
    assert missing == [], f"{len(missing)} readings never reached the gateway"
    assert box.app.spool.depth <= 2 and box.app.spool.dropped == 0
    assert gw.wm.watermark(SITE, "c1", box.boot) is not None
    assert gw.wm.watermark(SITE, "c1", box.boot) >= made[-3][1]
    assert gw.wm.counters.watermark_gaps == 0
    gw.stop()
    box.close()


def test_usb_box_is_confirmed_through_the_serial_bridge(
    mosquitto: Mosquitto, sim_clock: SimClock, tmp_path: Path
) -> None:
    gw = ConfirmingGateway(mosquitto.port, sim_clock)
    gw.start()
    box = SimBox(SITE, "u1", mqtt_port=mosquitto.port, clock=sim_clock, fs_dir=str(tmp_path / "box"),
                 transport="serial")
    made = kept_log(box)
    assert box.serial_path is not None
    port = serial.serial_for_url(box.serial_path, baudrate=115200, timeout=0.05)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chairside-serial-{SITE}-u1",
                         clean_session=False)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    bridge = SerialBridge(port, client, SITE, "u1", wall_ms=sim_clock.true_epoch_ms)
    client.connect("127.0.0.1", mosquitto.port, keepalive=30)
    client.loop_start()
    thread = bridge.start()
    try:
        assert subscribed.wait(5), "the bridge subscribes to the box's cmd and stored topics"
        run(box, gw, 30_000)
        assert box.app.link.online and box.app.confirmed >= 20
        assert box.app.spool.depth <= 6 and box.app.resends == 0
        assert not list((tmp_path / "box" / "spool").glob("*.sp"))  # no flash writes
        assert all(("u1",) + k in gw.stored for k in made[:-6])
        assert bridge.counters["to_box"] >= 15  # the watermarks went down the cable
    finally:
        bridge.stop()
        thread.join(2)
        client.loop_stop()
        client.disconnect()
        port.close()
        box.close()
        gw.stop()
