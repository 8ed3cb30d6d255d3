"""Issue 3 item 8: a box without Wi-Fi speaks the contract as lines over USB CDC.

The real firmware runs with ``csfw.serial_link.SerialLink`` as its transport
(``SimBox(transport="serial")``) on the box end of a pseudo-terminal pair; the
gateway's real ``SerialBridge`` opens the other end with pyserial, republishes
to the real Mosquitto, passes commands back and answers ``A <pid>`` once the
broker accepted each reading; the real gateway stores them in real InfluxDB.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import serial
from e2e_support import Observer, wait_rows
from paho.mqtt.enums import CallbackAPIVersion

from chairside.contract import topic
from chairside.ingest import serial_bridge
from chairside.ingest.serial_bridge import OFFLINE_PAYLOAD, SerialBridge
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from chairside.sim.simulator import make_box
from host.clock import SimClock

pytestmark = pytest.mark.services
SITE = "clinic-usb"
CHAIR = "u1"
EPOCH = 1_790_000_000_000


class Bridged:
    """The bridge as `chairside serial-bridge` runs it: pyserial on the pty's
    host end, a persistent paho session with the offline status as last will."""

    def __init__(self, path: str, broker_port: int, clock: SimClock) -> None:
        self.port = serial.serial_for_url(path, baudrate=115200, timeout=0.05)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chairside-serial-{SITE}-{CHAIR}",
                                  clean_session=False)
        self.client.will_set(topic("status", SITE, CHAIR), OFFLINE_PAYLOAD, qos=1, retain=True)
        self.bridge = self._new_bridge(clock)
        self.client.connect("127.0.0.1", broker_port, keepalive=30)
        self.client.loop_start()
        self.thread = self.bridge.start()
        assert self._subscribed.wait(5), "bridge did not subscribe to the command topic"

    def _new_bridge(self, clock: SimClock) -> SerialBridge:
        bridge = SerialBridge(self.port, self.client, SITE, CHAIR,
                                      wall_ms=lambda: int(clock.true_epoch_ms()))
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        return bridge

    def close(self) -> None:
        self.bridge.stop()
        self.thread.join(2)
        self.client.loop_stop()
        self.client.disconnect()
        self.port.close()


@pytest.fixture
def usb_box(tmp_path: Path, mosquitto: Mosquitto, sim_clock: SimClock) -> Iterator[Any]:
    box = make_box(SITE, CHAIR, "bp_spike", "127.0.0.1", mosquitto.port, clock=sim_clock,
                   fs_dir=str(tmp_path / "box"), transport="serial")
    yield box
    box.close()


@pytest.fixture
def bridged(usb_box: Any, mosquitto: Mosquitto, sim_clock: SimClock,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Bridged]:
    # a silent box is declared offline after 1 real second instead of 15, to keep the test short
    monkeypatch.setattr(serial_bridge, "BOX_SILENCE_S", 1.0)
    b = Bridged(usb_box.serial_path, mosquitto.port, sim_clock)
    yield b
    b.close()


def pace(box: Any, sim_ms: int, chunk_ms: int = 200, pause_s: float = 0.003) -> None:
    """Step the box in chunks with a short real pause, so the bridge's `A` lines
    come back before the next reading (as over a real cable)."""
    for _ in range(sim_ms // chunk_ms):
        box.step(chunk_ms)
        time.sleep(pause_s)


def test_usb_box_reaches_influxdb_through_the_bridge_and_answers_commands(
    usb_box: Any, bridged: Bridged, gateway: Gateway, observer: Observer, influxdb: InfluxDB,
    sim_clock: SimClock,
) -> None:
    assert usb_box.serial_path and usb_box.serial_path.startswith("/dev/pts/")
    pace(usb_box, 30_000)
    assert usb_box.app.link.online, "the bridge's heartbeat/acks keep the USB link up"
    birth = observer.wait_for(f"/{CHAIR}/status", lambda p: p.get("state") == "online")
    assert birth["link"] == "usb" and birth["rssi"] is None

    # a command from MQTT reaches the box over the cable; its answer comes back
    cmd = {"v": 1, "cmd": "nibp_start", "id": "usb-cmd-1"}
    observer.client.publish(topic("cmd", SITE, CHAIR), json.dumps(cmd), qos=1)
    end = time.monotonic() + 10
    while not observer.payloads(f"/{CHAIR}/resp") and time.monotonic() < end:
        pace(usb_box, 1000)
    resp = observer.wait_for(f"/{CHAIR}/resp", lambda p: p["id"] == "usb-cmd-1", timeout=1)
    assert resp["cmd"] == "nibp_start" and resp["ok"] == 1
    # ... and the measurement it started is published when the cuff is done
    pace(usb_box, 60_000)
    nibp = observer.wait_for(f"/{CHAIR}/nibp", timeout=5)
    assert nibp["st"] == "ok" and nibp["sys"] > 100

    last_up = sim_clock.now_ms() // 1000 * 1000
    q = f"SELECT * FROM vitals WHERE site = '{SITE}' AND chair = '{CHAIR}'"
    rows = sorted(wait_rows(influxdb, q, last_up // 1000), key=lambda r: r["time"])
    assert [r["up"] for r in rows] == list(range(1000, last_up + 1, 1000)), "every reading, once"
    assert all(r["time"] == EPOCH + r["up"] and r["hist"] is False for r in rows)
    stored_nibp = wait_rows(influxdb, f"SELECT * FROM nibp WHERE chair = '{CHAIR}'", 1)
    assert [(r["sys"], r["dia"]) for r in stored_nibp] == [(nibp["sys"], nibp["dia"])]
    device = wait_rows(influxdb, f"SELECT last(link) FROM device WHERE chair = '{CHAIR}'", 1)
    assert device[0]["last"] == "usb"
    assert bridged.bridge.counters["bad_line"] == 0 and bridged.bridge.counters["foreign_topic"] == 0
    assert usb_box.app.link.serial.bad_lines == 0

    # the box falls silent (USB stalls): the bridge publishes its offline status
    time.sleep(serial_bridge.BOX_SILENCE_S + 0.5)
    observer.wait_for(f"/{CHAIR}/status", lambda p: p == {"v": 1, "state": "offline"}, timeout=5)
    offline = wait_rows(influxdb, f"SELECT state FROM device WHERE chair = '{CHAIR}' AND state = 'offline'", 1)
    assert offline, "the gateway stored the offline state"


def only_recent_held(box: Any) -> bool:
    """Only the last seconds' readings wait for the gateway's stored watermark."""
    oldest = box.app.spool.peek(0)
    return oldest is None or box.app.clock.now_ms() - oldest[3] <= 15_000


def test_usb_box_spools_while_the_bridge_is_gone_and_replays_after(
    usb_box: Any, bridged: Bridged, gateway: Gateway, influxdb: InfluxDB, sim_clock: SimClock,
) -> None:
    """The bridge stops (host program restarted) for two simulated minutes: the
    box notices the host's silence, spools, and replays with h=1 once a new
    bridge talks on the same port; nothing is lost or stored twice."""
    pace(usb_box, 20_000)
    bridged.bridge.stop()
    bridged.thread.join(2)
    gone_up = sim_clock.now_ms()
    noticed_up = None
    for _ in range(120):
        pace(usb_box, 1000)
        if noticed_up is None and not usb_box.app.link.online:
            noticed_up = sim_clock.now_ms()
    assert noticed_up is not None and noticed_up - gone_up <= 16_000  # HOST_SILENCE_MS
    bridged.bridge = bridged._new_bridge(sim_clock)
    bridged.thread = bridged.bridge.start()
    back_up = None
    for _ in range(600):
        pace(usb_box, 200)
        if back_up is None and usb_box.app.link.online:
            back_up = sim_clock.now_ms()
        if back_up is not None and only_recent_held(usb_box):
            break
    assert back_up is not None and only_recent_held(usb_box)
    pace(usb_box, 5_000)
    last_up = sim_clock.now_ms() // 1000 * 1000
    q = f"SELECT * FROM vitals WHERE site = '{SITE}' AND chair = '{CHAIR}'"
    rows = sorted(wait_rows(influxdb, q, last_up // 1000), key=lambda r: r["time"])
    assert [r["up"] for r in rows] == list(range(1000, last_up + 1, 1000)), "every reading, once"
    assert all(r["time"] == EPOCH + r["up"] for r in rows)
    spooled = [r for r in rows if noticed_up < r["up"] <= back_up - 200]
    assert len(spooled) >= 100 and all(r["hist"] is True for r in spooled)
    # live before the bridge stopped and after it came back; the last second or
    # two before the stop may have been on the wire, unforwarded, and come back
    # replayed (h=1), which is right
    live = [r for r in rows if r["up"] <= gone_up - 2_000 or r["up"] > back_up]
    assert not [r["up"] for r in live if r["hist"]], (gone_up, back_up)
