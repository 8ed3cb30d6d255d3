"""USB-serial bridge: a box without Wi-Fi, on a USB port of a clinic PC.

Reads the box's line protocol (see ``firmware/csfw/serial_link.py``) with
pyserial, republishes each ``P`` line to MQTT and answers ``A <pid>`` once the
broker has accepted a QoS 1 publish (that frees the box's send window; the
box keeps the reading until the gateway's ``stored`` watermark covers it);
forwards the chair's command and ``stored`` topics to the box as ``M``
lines; sends a heartbeat with the wall time (``H``) every few seconds, which
also sets the box clock.  The bridge is bound to one site and chair: lines
for another chair's topics are refused and counted.  When the box falls
silent or the port fails, the bridge publishes the box's offline status, as
the broker would for a Wi-Fi box's last will.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion

from chairside import mqtt_auth
from chairside.contract import topic

LOG = logging.getLogger("chairside.ingest.serial_bridge")
OFFLINE_PAYLOAD = b'{"v":1,"state":"offline"}'
HEARTBEAT_S = 5.0
BOX_SILENCE_S = 15.0
MAX_LINE = 1100
MAX_EARLY = 1024


class SerialBridge:
    def __init__(
        self,
        port: serial.SerialBase,
        client: mqtt.Client,
        site: str,
        chair: str,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.port = port
        self.client = client
        self.site = site
        self.chair = chair
        self.prefix = topic("status", site, chair).rsplit("/", 1)[0] + "/"
        self.cmd_topic = topic("cmd", site, chair)
        self.stored_topic = topic("stored", site, chair)
        self.status_topic = topic("status", site, chair)
        self.wall_ms = wall_ms
        self.counters: Counter[str] = Counter()
        self._mid_to_pid: dict[int, int] = {}
        self._early: set[int] = set()  # mids whose PUBACK came before their pid was registered
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._last_box_line = 0.0
        self._box_online = False
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_connect = self._on_connect

    # -- MQTT side -----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        # the box's two inbound topics; the retained watermark comes at once
        client.subscribe([(self.cmd_topic, 1), (self.stored_topic, 1)])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._send(b"M " + msg.topic.encode() + b" " + msg.payload.replace(b"\n", b" ") + b"\n")
        self.counters["to_box"] += 1

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _rc: Any = None, _p: Any = None) -> None:
        # paho calls this holding its own output lock: never call paho from
        # here, and take only our small mid->pid lock
        with self._lock:
            pid = self._mid_to_pid.pop(mid, None)
            if pid is None and len(self._early) < MAX_EARLY:
                self._early.add(mid)  # the PUBACK beat the registration in handle_line
        if pid:
            self._send(f"A {pid}\n".encode())

    # -- serial side ---------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self._stop.is_set():
            # a stopped bridge no longer speaks for the host: paho may still
            # deliver a `stored` watermark, a command or a PUBACK until its
            # loop is stopped, and any line would tell the box the host is
            # there (it would keep publishing into a port nobody reads)
            self.counters["dropped_after_stop"] += 1
            return
        with self._write_lock:
            try:
                self.port.write(data)
                self.port.flush()
            except (serial.SerialException, OSError) as exc:
                self.counters["serial_write_errors"] += 1
                LOG.warning("serial write failed: %s", exc)

    def handle_line(self, line: bytes) -> None:
        """Republish one ``P`` line; anything else is counted and logged."""
        parts = line.split(b" ", 5)
        if len(parts) != 6 or parts[0] != b"P":
            self.counters["bad_line"] += 1
            LOG.warning("bad line from box: %r", line[:80])
            return
        try:
            pid, qos, retain = int(parts[1]), int(parts[2]), parts[3] == b"1"
            topic_name = parts[4].decode()
        except (ValueError, UnicodeDecodeError):
            self.counters["bad_line"] += 1
            return
        if not topic_name.startswith(self.prefix) or qos not in (0, 1):
            self.counters["foreign_topic"] += 1
            LOG.warning("refused topic %s from box bound to %s/%s", topic_name, self.site, self.chair)
            return
        self._last_box_line = time.monotonic()
        self._box_online = True
        # publish without holding our lock (paho takes its own and calls
        # _on_publish under it: holding both in opposite orders deadlocks)
        info = self.client.publish(topic_name, parts[5], qos=qos, retain=retain)
        self.counters["from_box"] += 1
        if qos and pid:
            with self._lock:
                early = info.mid in self._early
                self._early.discard(info.mid)
                if not early:
                    self._mid_to_pid[info.mid] = pid
            if early:
                self._send(f"A {pid}\n".encode())

    def _read_loop(self) -> None:
        buf = bytearray()
        next_heartbeat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                self._send(f"H {self.wall_ms()}\n".encode())
                next_heartbeat = now + HEARTBEAT_S
            if self._box_online and now - self._last_box_line > BOX_SILENCE_S:
                self._mark_offline("box silent")
            try:
                chunk = self.port.read(self.port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                self.counters["serial_read_errors"] += 1
                self._mark_offline(f"serial error: {exc}")
                self._stop.wait(1.0)
                continue
            buf.extend(chunk)
            while (nl := buf.find(b"\n")) >= 0:
                line = bytes(buf[:nl]).rstrip(b"\r")
                del buf[: nl + 1]
                if line:
                    self.handle_line(line)
            if len(buf) > MAX_LINE:
                self.counters["overlong_line"] += 1
                buf.clear()

    def _mark_offline(self, why: str) -> None:
        if self._box_online:
            LOG.warning("box %s/%s offline: %s", self.site, self.chair, why)
            self.client.publish(self.status_topic, OFFLINE_PAYLOAD, qos=1, retain=True)
            self._box_online = False

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._read_loop, name="serial-bridge", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop reading and writing the port (lines for the box are dropped
        from here on); the MQTT client is the caller's to stop."""
        self._stop.set()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="serial port or pyserial URL, e.g. /dev/ttyACM0")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--site", required=True)
    parser.add_argument("--chair", required=True)
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    mqtt_auth.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        port = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.2)
    except (serial.SerialException, OSError) as exc:
        LOG.error("cannot open %s: %s", args.port, exc)
        return 2
    try:
        # the bridge speaks for the box: with the box's config.json as
        # --mqtt-credentials it logs in, and is known, as box-<site>-<chair>
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=mqtt_auth.client_id(args.mqtt_credentials,
                                          f"chairside-serial-{args.site}-{args.chair}"),
            clean_session=False,
        )
        mqtt_auth.apply(client, args.mqtt_credentials, args.mqtt_ca)
    except mqtt_auth.CredentialsError as exc:
        LOG.error("%s", exc)
        return 2
    client.will_set(topic("status", args.site, args.chair), OFFLINE_PAYLOAD, qos=1, retain=True)
    bridge = SerialBridge(port, client, args.site, args.chair)
    client.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    client.loop_start()
    bridge.start()
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    bridge.stop()
    client.loop_stop()
    client.disconnect()
    return 0
