// Prove the UART hot paths allocate nothing: feed bytes through
// csfw.bci.BciParser.feed, csfw.oximeter.Oximeter.poll (with a UART stand-in
// whose readinto does not allocate) and csfw.suntech.ResponseParser.feed
// under micropython.heap_lock() on the official WebAssembly port.
//   node tools/mpvm/heap_lock_check.mjs [--mpy]
// Prints one line per check; exit 1 on MemoryError or wrong frame counts.
// Modules not present are reported as SKIP.
import { newVM, run } from "./vm.mjs";

const mp = await newVM({ mpy: process.argv.includes("--mpy") });
const err = run(mp, `
import micropython

results = []

def _locked(name, fn, expect):
    try:
        micropython.heap_lock()
        try:
            got = fn()
        finally:
            micropython.heap_unlock()
    except MemoryError:
        results.append("FAIL " + name + ": allocated under heap_lock (MemoryError)")
        return
    if got != expect:
        results.append("FAIL " + name + ": %d frames, expected %d" % (got, expect))
    else:
        results.append("OK " + name + ": %d frames, no allocation" % got)

try:
    from csfw import bci
except ImportError:
    bci = None
try:
    from csfw import oximeter
except ImportError:
    oximeter = None
try:
    from csfw import suntech
except ImportError:
    suntech = None

if bci:
    frames = bytearray()
    for i in range(100):
        frames.extend(bci.encode_frame(i % 9, i % 128, 60 + i, 90 + i % 11))
    frames = bytes(frames)
    parser = bci.BciParser()

    def feed_bci():
        p = parser
        d = frames
        n = 0
        for i in range(len(d)):
            if p.feed(d[i]):
                n += 1
        return n
    _locked("bci.BciParser.feed", feed_bci, 100)
else:
    results.append("SKIP bci: csfw.bci missing")

if bci and oximeter:
    from mptest import ByteSource

    uart = ByteSource(frames)
    uart.release(len(frames))
    oxi = oximeter.Oximeter(uart)
    oxi.poll(0)  # first poll outside the lock: lazy state, if any
    uart.pos = 0
    oxi.parser.frames = 0

    def poll_oxi():
        for now in range(1, 60):
            oxi.poll(now)
        return oxi.parser.frames
    _locked("oximeter.Oximeter.poll", poll_oxi, 100)

    # a year of uptime: now is a long int on a 32-bit port (this VM and the
    # board), the parsers get the clock's 30-bit tick (issue 17 point 4)
    year = 365 * 24 * 3600 * 1000
    uart.pos = 0
    oxi2 = oximeter.Oximeter(uart)
    tick0 = year & 0x3FFFFFFF
    nows = [year + i for i in range(1, 60)]  # built outside the lock
    ticks = [(tick0 + i) & 0x3FFFFFFF for i in range(1, 60)]

    def poll_oxi_year():
        for i in range(59):
            oxi2.poll(nows[i], ticks[i])
        return oxi2.parser.frames
    _locked("oximeter.Oximeter.poll at a year of uptime", poll_oxi_year, 100)
elif not oximeter:
    results.append("SKIP oximeter: csfw.oximeter missing")

if suntech:
    one = suntech.response(suntech.bp_data_payload(124, 82, 96, 71))
    stream = one + one + one + one + one
    rp = suntech.ResponseParser()

    def feed_suntech():
        n = 0
        d = stream
        for i in range(len(d)):
            if rp.feed(d[i], 1000):
                n += 1
        return n
    _locked("suntech.ResponseParser.feed", feed_suntech, 5)

    rp2 = suntech.ResponseParser()
    wrap = suntech.TICK_MASK - 10  # a year of uptime sits anywhere in the tick range
    wticks = [(wrap + i) & 0x3FFFFFFF for i in range(len(stream))]

    def feed_suntech_wrap():
        n = 0
        d = stream
        for i in range(len(d)):
            if rp2.feed(d[i], wticks[i]):
                n += 1
        return n
    _locked("suntech.ResponseParser.feed across the tick wrap", feed_suntech_wrap, 5)
else:
    results.append("SKIP suntech: csfw.suntech missing")
`);
if (err !== null) {
  console.log(err);
  process.exit(2);
}
const results = mp.globals.get("results");
let failed = 0;
for (const line of results) {
  console.log(line);
  if (line.startsWith("FAIL")) failed += 1;
}
process.exitCode = failed ? 1 : 0;
