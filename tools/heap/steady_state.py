# Firmware steady state for tools/heap_budget.py; runs ON MicroPython (the
# WASI Unix port under a fixed heap).  One tick = one simulated second:
# UART bytes through the BCI (and, every 5 min, SunTech) parsers, the 1 Hz
# vitals JSON payload, its MQTT PUBLISH packet, and the spool (offline for
# the first half: push; online for the second half: replay + commit).
# gc.collect() once per tick, between ticks; the heap
# figure is the gc.mem_alloc() high-water sampled after every stage, i.e. live
# objects + the garbage one tick makes.  Prints one line "HEAP {json}".
import gc
import json
import os
import sys

from mptest import ByteSource

try:
    _ARGS = _CS_ARGS  # set by tools/mpvm/heap_steady.mjs (that port has no sys.argv)
except NameError:
    _ARGS = getattr(sys, "argv", [])
TICKS = int(_ARGS[1]) if len(_ARGS) > 1 else 600
SPOOL_DIR = _ARGS[2] if len(_ARGS) > 2 else "/w/spool"

gc.collect()
base_alloc = gc.mem_alloc()
peak = [0, ""]
used = []
skipped = []


def sample(stage):
    a = gc.mem_alloc()
    if a > peak[0]:
        peak[0] = a
        peak[1] = stage


def load(name):
    try:
        mod = __import__("csfw." + name, None, None, ["x"])
        used.append(name)
        return mod
    except ImportError as exc:
        skipped.append(name + ": " + str(exc))
        return None


contract = load("contract")
bci = load("bci")
oximeter = load("oximeter")
suntech = load("suntech")
mqtt = load("mqtt")
spool = load("spool")
gc.collect()
modules_alloc = gc.mem_alloc()
sample("imports")


# 1 s of BCI frames (60 frames/s), built once
oxi_bytes = b""
if bci:
    frames = bytearray()
    for i in range(180):
        frames.extend(bci.encode_frame(5, i % 100, 72, 97))
    oxi_bytes = bytes(frames)
    del frames
bp_bytes = b""
if suntech:
    bp_bytes = suntech.response(suntech.bp_data_payload(124, 82, 96, 71))

uart = ByteSource(oxi_bytes)
oxi = oximeter.Oximeter(uart) if (oximeter and bci) else None
bparser = bci.BciParser() if (bci and not oxi) else None
rparser = suntech.ResponseParser() if suntech else None
topics = contract.Topics("clinic1", "12") if contract else None
sp = None
if spool:
    try:  # noqa: SIM105 (no contextlib on MicroPython)
        os.mkdir(SPOOL_DIR)
    except OSError:
        pass
    sp = spool.Spool(SPOOL_DIR, os)
gc.collect()
sample("setup")
setup_alloc = gc.mem_alloc()

state = {"seq": 0, "pid": 0, "published": 0}
t0 = 1790000000000


def tick(tick):
    now = tick * 1000
    spo2, pr, sig, st = 97, 72, 5, "ok"
    if oxi:
        uart.release(300)
        oxi.poll(now)
        spo2, pr, sig, st = oxi.summary(now + 1)
    elif bparser:
        for i in range(300):
            bparser.feed(oxi_bytes[i])
    sample("uart")
    nibp = None
    if rparser and tick % 300 == 299:
        for i in range(len(bp_bytes)):
            if rparser.feed(bp_bytes[i], now):
                nibp = suntech.decode_bp_data(rparser.payload[:rparser.n])
        sample("nibp")
    payload = None
    if contract:
        env = contract.envelope(state["seq"], 3, now, t0 + now, True, False)
        payload = contract.vitals_payload(env, spo2, pr, sig, st)
        state["seq"] += 1
        sample("json")
    online = tick >= TICKS // 2
    if online and mqtt and payload is not None:
        state["pid"] = state["pid"] % 65535 + 1
        mqtt.publish_packet(topics.vitals, payload, qos=1, pid=state["pid"])
        state["published"] += 1
        sample("publish")
        if nibp is not None:
            env = contract.envelope(state["seq"], 3, now, t0 + now, True, False)
            mqtt.publish_packet(topics.nibp, contract.nibp_payload(env, True, *nibp[:4]),
                                qos=1, pid=state["pid"])
            state["seq"] += 1
    if sp:
        if not online:
            sp.push(spool.vitals_record(3, state["seq"], now, True, spo2, pr, sig, st))
            if nibp is not None:
                sp.push(spool.nibp_record(3, state["seq"], now, True, True, nibp[0], nibp[1],
                                          nibp[2], nibp[3]))
            sample("spool_push")
        else:
            batch = sp.next_batch(8)
            for rec in batch:
                if contract and mqtt and rec[0] == spool.KIND_VITALS:
                    env = contract.envelope(state["seq"], 3, rec[3], t0 + rec[3], rec[4], True)
                    body = contract.vitals_payload(env, rec[5], rec[6], rec[7], rec[8])
                    state["pid"] = state["pid"] % 65535 + 1
                    mqtt.publish_packet(topics.vitals, body, qos=1, pid=state["pid"])
                    state["seq"] += 1
            sp.commit(len(batch))
            sample("spool_replay")


def report():
    gc.collect()
    result = {
        "ticks": TICKS,
        "heap_total": gc.mem_alloc() + gc.mem_free(),
        "base_alloc": base_alloc,
        "modules_alloc": modules_alloc,
        "setup_alloc": setup_alloc,
        "end_alloc": gc.mem_alloc(),
        "peak_alloc": peak[0],
        "peak_stage": peak[1],
        "published": state["published"],
        "spool_depth": sp.depth if sp else None,
        "spool_dropped": sp.dropped if sp else None,
        "used": used,
        "skipped": skipped,
    }
    print("HEAP " + json.dumps(result))


try:
    _DRIVEN = _CS_DRIVEN  # tools/mpvm/heap_steady.mjs calls tick() itself
except NameError:
    _DRIVEN = False
if not _DRIVEN:
    for _t in range(TICKS):
        gc.collect()
        tick(_t)
    report()
