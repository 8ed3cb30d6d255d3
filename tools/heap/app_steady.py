# The whole box loop (csfw.app.App) for tools/heap_budget.py; runs ON
# MicroPython (the Unix port under a fixed `-X heapsize`).  Simulated time,
# 20 ms per App.poll() like the board's loop: BCI frames at 60 Hz on the
# oximeter UART, a SunTech-speaking NIBP UART (a measurement every 120 s),
# and an in-script broker that answers CONNECT/SUBSCRIBE/PUBLISH/PINGREQ per
# MQTT 3.1.1 but keeps nothing, with a minimal gateway stand-in (Confirm) that
# follows the readings' p links and confirms them every second on the box's
# `stored` topic.  The
# broker is up for the first third, gone for the second (the app spools),
# back for the last (the app replays and the gateway confirms).
# The app catches every exception in its loop and counts it, so a
# MemoryError shows up as `errors`; the run fails on any error or on a
# reading that never reached the broker.  Prints one line "HEAP {json}".
import gc
import json
import os
import sys

from csfw import bci, mqtt, suntech
from csfw.app import App, Hardware
from mptest import Broker, ByteSource, SimClock, UpWlan

ARGS = getattr(sys, "argv", [])
SECONDS = int(ARGS[1]) if len(ARGS) > 1 else 900
FS_DIR = ARGS[2] if len(ARGS) > 2 else "/w/fs"
STEP_MS = 20

gc.collect()
modules_alloc = gc.mem_alloc()
peak_live = [0]


def sample_live():
    """Live objects only: what a heap must hold at the least (after a GC)."""
    gc.collect()
    a = gc.mem_alloc()
    if a > peak_live[0]:
        peak_live[0] = a


class NibpModule(ByteSource):
    """Answers the SunTech commands the driver sends (csfw/suntech.py); a
    measurement completes at once (the 'K' follows the start 'O')."""

    def __init__(self):
        self.replies = {
            suntech.command(suntech.START_BP): suntech.response(suntech.char_payload(
                suntech.R_ACK)) + suntech.response(suntech.char_payload(suntech.R_DONE)),
            suntech.command(suntech.GET_CUFF_PRESSURE): suntech.response(
                suntech.cuff_payload(0)),
            suntech.command(suntech.GET_BP_DATA): suntech.response(
                suntech.bp_data_payload(124, 82, 96, 71)),
            suntech.command(suntech.ABORT_BP): suntech.response(
                suntech.char_payload(suntech.R_ABORTED)),
        }
        ByteSource.__init__(self, b"")

    def write(self, data):
        reply = self.replies.get(bytes(data))
        if reply is not None:
            self.data = reply
            self.pos = 0
            self.end = len(reply)
        return len(data)


class Confirm:
    """The gateway's watermark in miniature (gateway/chairside/store/watermark.py):
    a reading joins when its p <= W, readings that arrive before their link wait."""

    def __init__(self, broker, topic):
        self.broker = broker
        self.topic = topic
        self.w = {}
        self.waiting = {}  # (boot, seq) -> p
        self.sent = {}
        self.next_ms = 0

    def on_publish(self, topic, msg):
        if topic.endswith("/vitals") or topic.endswith("/nibp"):
            m = json.loads(msg)
            boot = m["boot"]
            self.waiting[(boot, m["seq"])] = m["p"]
            w = self.w.get(boot, -1)
            moved = True
            while moved:
                moved = False
                for key in list(self.waiting):
                    if key[0] == boot and self.waiting[key] <= w:
                        del self.waiting[key]
                        w = max(w, key[1])
                        moved = True
            self.w[boot] = w

    def tick(self, now):
        if now < self.next_ms or not self.broker.up:
            return
        self.next_ms = now + 1000
        for boot in self.w:
            if self.w[boot] > self.sent.get(boot, -1):
                self.sent[boot] = self.w[boot]
                payload = json.dumps({"v": 1, "boot": boot, "seq": self.w[boot], "t": now})
                self.broker.to_box.extend(mqtt.publish_packet(self.topic, payload, 1, True, False, 1))


class Counts:
    """Readings that reached the broker, live and replayed (kept: nothing)."""

    def __init__(self):
        self.live = 0
        self.historical = 0
        self.gateway = None

    def on_publish(self, topic, msg):
        self.gateway.on_publish(topic, msg)
        if topic.endswith("/vitals") or topic.endswith("/nibp"):
            if b'"h"' in msg:
                self.historical += 1
            else:
                self.live += 1


def make_fs_dir(path):
    try:  # noqa: SIM105 (no contextlib on MicroPython)
        os.mkdir(path)
    except OSError:
        pass


frames = bytearray()
for i in range(120):
    frames.extend(bci.encode_frame(5, i % 100, 72, 97))
oxi_uart = ByteSource(bytes(frames))
del frames
counts = Counts()
broker = Broker(mqtt, counts.on_publish)
counts.gateway = Confirm(broker, "chairside/v1/clinic1/12/stored")
make_fs_dir(FS_DIR)
clock = SimClock()
hw = Hardware(oxi_uart, NibpModule(), UpWlan(), broker.connect_fn, FS_DIR, os, rand=lambda: 0.5)
cfg = {"site": "clinic1", "chair": "12", "mqtt": {"keepalive_s": 30}, "nibp_interval_s": 120}
app = App(cfg, hw, clock, boot=1, fw_version="heap", cfg_hash="00000000")
gc.collect()
setup_alloc = gc.mem_alloc()

max_depth = 0
steps_per_s = 1000 // STEP_MS
for second in range(SECONDS):
    broker.up = not (SECONDS // 3 <= second < 2 * SECONDS // 3)
    sample_live()
    for _ in range(steps_per_s):
        clock.up += STEP_MS
        oxi_uart.release(6)  # 60 BCI frames/s of 5 bytes = 300 bytes/s
        app.poll()
        counts.gateway.tick(clock.up)
    if app.spool.depth > max_depth:
        max_depth = app.spool.depth
# let the replay finish: the broker stays up, sensors keep running; the
# newest one or two readings always wait for the next watermark (1 s)
UNCONFIRMED_OK = 2
drain = 0
while app.spool.depth > UNCONFIRMED_OK and drain < 600:
    drain += 1
    sample_live()
    for _ in range(steps_per_s):
        clock.up += STEP_MS
        oxi_uart.release(6)
        app.poll()
        counts.gateway.tick(clock.up)

gc.collect()
result = {
    "engine_heap_total": gc.mem_alloc() + gc.mem_free(),
    "seconds": SECONDS + drain,
    "modules_alloc": modules_alloc,
    "setup_alloc": setup_alloc,
    "end_alloc": gc.mem_alloc(),
    "peak_live": peak_live[0],
    "errors": app.errors,
    "last_error": getattr(app, "last_error", None),
    "live_published": counts.live,
    "historical_published": counts.historical,
    "max_spool_depth": max_depth,
    "spool_depth": app.spool.depth if app.spool.depth > UNCONFIRMED_OK else 0,
    "confirmed": app.confirmed,
    "resends": app.resends,
    "spool_dropped": app.spool.dropped,
    "nibp_measurements": app.nibp.measurements,
}
print("HEAP " + json.dumps(result))
