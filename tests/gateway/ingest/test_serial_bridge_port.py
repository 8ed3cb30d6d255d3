"""SerialBridge without a broker: what it writes to the box's port.

The port is pyserial's ``loop://`` (what the bridge writes comes back on a
read); the paho client is never connected: the bridge's callbacks are called
as paho's network thread would call them.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion

from chairside.contract import topic
from chairside.ingest.serial_bridge import SerialBridge

SITE, CHAIR = "clinic-usb", "u1"


def bridge_on_loop() -> tuple[SerialBridge, serial.SerialBase]:
    port = serial.serial_for_url("loop://", timeout=0.05)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bridge-unit")
    return SerialBridge(port, client, SITE, CHAIR, wall_ms=lambda: 1_790_000_000_000), port


def stored_message(seq: int) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic("stored", SITE, CHAIR).encode())
    msg.payload = b'{"v":1,"boot":0,"seq":%d,"t":1790000000000}' % seq
    return msg


def test_a_running_bridge_passes_the_stored_watermark_and_acks_to_the_box() -> None:
    bridge, port = bridge_on_loop()
    bridge._on_message(bridge.client, None, stored_message(20))
    bridge.handle_line(b"P 7 1 0 " + topic("vitals", SITE, CHAIR).encode() + b" {}")
    mid = next(iter(bridge._mid_to_pid))
    bridge._on_publish(bridge.client, None, mid)
    lines = port.read(4096).splitlines()
    assert lines[0].startswith(b"M " + topic("stored", SITE, CHAIR).encode() + b" ")
    assert lines[1] == b"A 7"
    assert bridge.counters["to_box"] == 1


def test_a_stopped_bridge_says_nothing_more_to_the_box() -> None:
    """After stop() paho may still deliver a watermark or a PUBACK until the
    caller stops its loop; passing either on would tell the box the host is
    still there, and the box would not notice the bridge is gone
    (HOST_SILENCE_MS) while it publishes into a port nobody reads."""
    bridge, port = bridge_on_loop()
    bridge.handle_line(b"P 8 1 0 " + topic("vitals", SITE, CHAIR).encode() + b" {}")
    mid = next(iter(bridge._mid_to_pid))
    bridge.stop()
    bridge._on_message(bridge.client, None, stored_message(21))
    bridge._on_publish(bridge.client, None, mid)
    assert port.read(4096) == b""
    assert bridge.counters["dropped_after_stop"] == 2
