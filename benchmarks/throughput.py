"""Gateway throughput on one core: drain a backlog through the real chain.

    python benchmarks/throughput.py [--readings 200000] [--chairs 1000]

What it measures: how many readings per second the gateway stores when it is
never starved and never throttled by the load generator.  The gateway's MQTT
session (QoS 1, clean session off) is registered, the gateway is stopped,
``--readings`` contract-exact vitals readings from ``--chairs`` chairs are
queued in Mosquitto for it (published with QoS 1 over a raw socket using the
firmware's own MQTT and contract encoders), and then the gateway is started
again and drains them into InfluxDB.  The readings are 10 Hz per chair and
stamped from "now" on, so the drain takes about as long as the data spans and
the gateway treats them as live (alarm engine included), as it would at a
sustained 10 Hz; a real backlog older than 30 s skips the live alarm path and
would flatter the figure.

With two or more CPUs the gateway process is pinned to the first CPU (and
nothing else is: see ``ingest.gateway_cpu``), so "stored per second" is the
rate of one gateway core.  Reported: stored/s over the middle 80 % of the
drain (slope of ``count(seq)`` in InfluxDB), the gateway's CPU use, readings
per gateway CPU-second, and a per-chair check that every (chair, seq) was
stored exactly once.  Latency under a live load is ``benchmarks/ingest.py``'s
job; a drain has no meaningful publish→stored latency.

Beside it, in the same run, a baseline: a bare paho-mqtt subscriber (clean
session off, QoS 1, pinned to the same CPU) drains the same backlog doing
only ``json.loads``; the report prints the gateway's rate ÷ that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _extra in (REPO / "gateway", REPO / "firmware", HERE):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

from ingest import (  # noqa: E402
    BenchGateway,
    RawConnection,
    deploy_limits,
    gateway_cpu,
    influx_query,
    pin,
    stored_count,
)

from chairside.sim.services import InfluxDB, Mosquitto  # noqa: E402
from csfw import contract as fw  # noqa: E402

DEADLINE_S = 600.0
PERIOD_MS = 100  # 10 Hz per chair
LEAD_MS = 3_000  # the first reading's time: a little after queuing starts
POLL_S = 1.0  # count(seq) polls: each scans the stored points, so not too often
ACK_TIMEOUT_S = 30.0  # the broker's PUBACKs while queuing


def queue_backlog(port: int, site: str, chairs: int, readings: int, t0_ms: int) -> float:
    """Publish readings (QoS 1) for the gateway's stored session; returns the
    publish rate.  Waits for every PUBACK, so the broker holds them all."""
    conn = RawConnection(port, f"bench-backlog-{os.getpid()}")
    topics = [fw.Topics(site, f"c{i:05d}").vitals for i in range(chairs)]
    per_chair = readings // chairs
    started = time.monotonic()
    try:
        for seq in range(per_chair):
            for i, topic in enumerate(topics):
                up = 60_000 + seq * PERIOD_MS
                env = fw.link(fw.envelope(seq, 1, up, t0_ms + seq * PERIOD_MS + i % PERIOD_MS, True, False), seq - 1)
                conn.add(topic, fw.vitals_payload(env, 97 + (seq + i) % 3, 70 + i % 20, 7, fw.ST_OK))
                if conn.buffered > 60_000:
                    conn.flush()
                    _wait_acked(conn, conn.sent - 5000)  # at most ~5,000 unacknowledged
        conn.flush()
        _wait_acked(conn, conn.sent)
    finally:
        conn.close()
    return per_chair * chairs / (time.monotonic() - started)


def _wait_acked(conn: RawConnection, count: int) -> None:
    if not conn.wait_acked(count, ACK_TIMEOUT_S):
        raise RuntimeError(f"the broker acknowledged {conn.acked} of {conn.sent} readings in time")


def drain(gw: BenchGateway, influx_url: str, site: str, total: int,
          since_ms: int) -> list[tuple[float, int, float]]:
    """(monotonic, stored count, gateway CPU s) samples until all are stored."""
    samples: list[tuple[float, int, float]] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and gw.proc is not None and gw.proc.poll() is None:
        count = stored_count(influx_url, site, since_ms)
        samples.append((time.monotonic(), count, gw.cpu_seconds()))
        if count >= total:
            break
        time.sleep(POLL_S)
    return samples


def check_exactly_once(influx_url: str, site: str, chairs: int, per_chair: int,
                       since_ms: int) -> int:
    """Chairs whose stored seqs are not exactly 0..per_chair-1, once each."""
    series = influx_query(influx_url, f"SELECT count(\"seq\"), min(\"seq\"), max(\"seq\") FROM "
                                      f"\"vitals\" WHERE \"site\"='{site}' AND time >= {since_ms}ms "
                                      f"GROUP BY \"chair\"")
    good = sum(1 for s in series if s["values"][0][1:4] == [per_chair, 0, per_chair - 1])
    return chairs - good


def bare_child(port: int, client_id: str, topic: str, total: int) -> None:
    """Child process: a bare paho subscriber with a persistent session that
    only decodes JSON.  ``total`` 0 registers the session and exits; otherwise
    it drains ``total`` messages and prints its rate (middle 80 %) as JSON."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(100)
    marks: dict[str, float] = {}
    count = 0

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        json.loads(msg.payload)
        count += 1
        if count == max(1, total // 10):
            marks["lo"] = time.monotonic()
        elif count == max(2, total * 9 // 10):
            marks["hi"] = time.monotonic()
        if count >= total:
            c.disconnect()

    def on_subscribe(c: mqtt.Client, *args: object) -> None:
        if total == 0:
            c.disconnect()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_forever()
    if total:
        span = marks.get("hi", 0.0) - marks.get("lo", 0.0)
        rate = (total * 8 // 10) / span if span > 0 else 0.0
        print(json.dumps({"received": count, "rate": rate}))


def _run_bare(port: int, client_id: str, topic: str, total: int, cpus: set[int], pinned: bool) -> float:
    proc = subprocess.Popen([sys.executable, __file__, "--bare-child", str(port), client_id, topic, str(total)],
                            stdout=subprocess.PIPE, text=True)
    if pinned:
        pin(proc.pid, cpus)
    out, _ = proc.communicate(timeout=DEADLINE_S)
    return float(json.loads(out.strip().splitlines()[-1])["rate"]) if total else 0.0


def bare_paho_rate(port: int, site: str, chairs: int, total: int, cpus: set[int], pinned: bool) -> float:
    """The baseline: the same backlog drained by a bare paho subscriber."""
    client_id = f"bench-bare-{os.getpid()}"
    topic = f"{fw.Topics(site, 'x').vitals.rsplit('/', 2)[0]}/+/vitals"
    _run_bare(port, client_id, topic, 0, cpus, pinned)  # register the session
    queue_backlog(port, site, chairs, total, time.time_ns() // 1_000_000 + LEAD_MS)
    return _run_bare(port, client_id, topic, total, cpus, pinned)


def overrides(pairs: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        out[name] = float(value) if "." in value else int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--chairs", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a GatewayConfig field for the drain, e.g. ack_window=64")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the gateway use every CPU (for comparison)")
    args = parser.parse_args(argv)
    per_chair = max(1, args.readings // args.chairs)
    total = per_chair * args.chairs
    gw_cpus = gateway_cpu()
    site = f"t{os.getpid() % 10000}"
    with tempfile.TemporaryDirectory(prefix="chairside-throughput-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(extra_config=deploy_limits(), workdir=work / "mosquitto")
        influx = InfluxDB(workdir=work / "influxd")
        broker.start()
        try:
            influx.start()
            client_id = f"bench-gw-{os.getpid()}"
            with BenchGateway(broker, influx, work, {}, client_id=client_id):
                pass  # started = subscribed: the broker now queues for this session
            t0_ms = time.time_ns() // 1_000_000 + LEAD_MS
            pub_rate = queue_backlog(broker.port, site, args.chairs, total, t0_ms)
            gw = BenchGateway(broker, influx, work, overrides(args.set), client_id=client_id)
            gw.start()
            try:
                if not args.no_pin:
                    assert gw.proc is not None
                    pin(gw.proc.pid, gw_cpus)
                samples = drain(gw, influx.url, site, total, t0_ms - 1000)
            finally:
                gw.stop()
            missing = check_exactly_once(influx.url, site, args.chairs, per_chair, t0_ms - 1000)
            bare = bare_paho_rate(broker.port, f"{site}b", args.chairs, total, gw_cpus, not args.no_pin)
        finally:
            influx.stop()
            broker.stop()
    report(args, total, pub_rate, samples, missing, gw_cpus, bare)
    return 0 if missing == 0 and samples and samples[-1][1] == total else 1


def report(args: argparse.Namespace, total: int, pub_rate: float,
           samples: list[tuple[float, int, float]], missing: int, gw_cpus: set[int], bare: float) -> None:
    stored = samples[-1][1] if samples else 0
    lo = [s for s in samples if s[1] >= 0.1 * total]
    hi = [s for s in samples if s[1] <= 0.9 * total]
    print(f"throughput benchmark: {total:,} readings from {args.chairs} chairs queued in "
          f"Mosquitto at {pub_rate:,.0f}/s, gateway pinned to CPU {sorted(gw_cpus)}")
    if lo and hi and hi[-1][0] > lo[0][0]:
        a, b = lo[0], hi[-1]
        rate = (b[1] - a[1]) / (b[0] - a[0])
        cpu = (b[2] - a[2]) / (b[0] - a[0])
        per_cpu = (b[1] - a[1]) / max(1e-9, b[2] - a[2])
        print(f"stored/s (middle 80 % of the drain): {rate:,.0f}")
        if bare > 0:
            print(f"baseline, bare paho subscriber (json.loads only, same CPU): {bare:,.0f}/s; "
                  f"gateway ÷ baseline = {rate / bare:.2f}")
        print(f"gateway CPU: {cpu * 100:.0f} % of one core; readings per gateway CPU-second: "
              f"{per_cpu:,.0f}")
    first = next((s for s in samples if s[1] > 0), None)
    if first and stored:
        print(f"drain: {stored:,} stored in {samples[-1][0] - first[0]:.1f} s after the first "
              f"point appeared")
    print(f"exactly once: {'yes' if missing == 0 and stored == total else 'NO'} "
          f"({stored:,} of {total:,} stored; {missing} chairs with a gap or duplicate)")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--bare-child":
        bare_child(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
