# The whole box loop (csfw.app.App) for tools/heap_budget.py; runs ON
# MicroPython (the Unix port under a fixed `-X heapsize`).  Simulated time,
# 20 ms per App.poll() like the board's loop: BCI frames at 60 Hz on the
# oximeter UART, a SunTech-speaking NIBP UART (a measurement every 120 s),
# and an in-script broker that answers CONNECT/SUBSCRIBE/PUBLISH/PINGREQ per
# MQTT 3.1.1 but keeps nothing.  The broker is up for the first third, gone
# for the second (the app spools), back for the last (the app replays).
# The app catches every exception in its loop and counts it, so a
# MemoryError shows up as `errors`; the run fails on any error or on a
# reading that never reached the broker.  Prints one line "HEAP {json}".
import gc
import json
import os
import sys

from csfw import bci, mqtt, suntech
from csfw.app import App, Hardware

ARGS = getattr(sys, "argv", [])
SECONDS = int(ARGS[1]) if len(ARGS) > 1 else 900
FS_DIR = ARGS[2] if len(ARGS) > 2 else "/w/fs"
STEP_MS = 20
EAGAIN = 11

gc.collect()
modules_alloc = gc.mem_alloc()
peak_live = [0]


def sample_live():
    """Live objects only: what a heap must hold at the least (after a GC)."""
    gc.collect()
    a = gc.mem_alloc()
    if a > peak_live[0]:
        peak_live[0] = a


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


class ByteSource:
    """UART receive side: serves `release`d bytes of a fixed buffer in place."""

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.end = 0

    def release(self, n):
        if self.end + n > len(self.data):
            self.pos = self.end = 0
        self.end += n

    def any(self):
        return self.end - self.pos

    def readinto(self, buf, n=None):
        if n is None or n > len(buf):
            n = len(buf)
        if n > self.end - self.pos:
            n = self.end - self.pos
        d = self.data
        p = self.pos
        for i in range(n):
            buf[i] = d[p + i]
        self.pos = p + n
        return n

    def write(self, data):
        return len(data)


class NibpModule(ByteSource):
    """Answers the SunTech commands the driver sends (csfw/suntech.py)."""

    def __init__(self):
        self.replies = {
            suntech.command(suntech.START_BP): suntech.response(bytes((suntech.R_START,))),
            suntech.command(suntech.GET_STATUS): suntech.response(
                suntech.status_payload(suntech.ST_DONE)),
            suntech.command(suntech.GET_BP_DATA): suntech.response(
                suntech.bp_data_payload(124, 82, 96, 71)),
            suntech.command(suntech.ABORT_BP): suntech.response(bytes((suntech.R_ABORT,))),
        }
        ByteSource.__init__(self, b"")

    def write(self, data):
        reply = self.replies.get(bytes(data))
        if reply is not None:
            self.data = reply
            self.pos = 0
            self.end = len(reply)
        return len(data)


class Wlan:
    def active(self, on=None):
        return True

    def connect(self, ssid=None, key=None):
        pass

    def isconnected(self):
        return True

    def status(self, param=None):
        return 3


class Broker:
    """Answers like an MQTT broker; counts PUBLISHes, keeps nothing."""

    def __init__(self):
        self.up = True
        self.to_box = bytearray()
        self.live = 0
        self.historical = 0

    def connect_fn(self):
        if not self.up:
            raise OSError(113)
        return Sock(self)

    def handle(self, data):
        pos = 0
        while pos < len(data):
            first, rl, hl = mqtt.parse_header(data[pos:pos + 5])
            kind = first & 0xF0
            body = data[pos + hl:pos + hl + rl]
            pos += hl + rl
            if kind == 0x10:
                self.to_box.extend(b"\x20\x02\x00\x00")
            elif kind == 0x30:
                self._on_publish(first, body)
            elif kind == 0x80:
                self.to_box.extend(bytes((0x90, 3, body[0], body[1], 1)))
            elif kind == 0xC0:
                self.to_box.extend(b"\xd0\x00")

    def _on_publish(self, first, body):
        topic, msg, qos, _dup, _retain, pid = mqtt.decode_publish(first, body)
        if topic.endswith("/vitals") or topic.endswith("/nibp"):
            if b'"h"' in msg:
                self.historical += 1
            else:
                self.live += 1
        if qos:
            self.to_box.extend(mqtt.puback_packet(pid))


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
        box = self.broker.to_box
        if not box:
            raise OSError(EAGAIN)
        out = bytes(box[:n])
        self.broker.to_box = box[n:]
        return out

    def close(self):
        self.closed = True


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
broker = Broker()
make_fs_dir(FS_DIR)
clock = Clock()
hw = Hardware(oxi_uart, NibpModule(), Wlan(), broker.connect_fn, FS_DIR, os, rand=lambda: 0.5)
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
    if app.spool.depth > max_depth:
        max_depth = app.spool.depth
# let the replay finish: the broker stays up, sensors keep running
drain = 0
while app.spool.depth and drain < 600:
    drain += 1
    sample_live()
    for _ in range(steps_per_s):
        clock.up += STEP_MS
        oxi_uart.release(6)
        app.poll()

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
    "live_published": broker.live,
    "historical_published": broker.historical,
    "max_spool_depth": max_depth,
    "spool_depth": app.spool.depth,
    "spool_dropped": app.spool.dropped,
    "nibp_measurements": app.nibp.measurements,
}
print("HEAP " + json.dumps(result))
