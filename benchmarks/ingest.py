"""Ingest benchmark: virtual chairs → real Mosquitto → real gateway → real InfluxDB.

Run from the repository root with the project's Python::

    python benchmarks/ingest.py                      # quick run (50 chairs, 1 Hz, 10 s)
    python benchmarks/ingest.py --chairs 1000 --rate 10 --seconds 30
    python benchmarks/ingest.py --preset issue8      # 100 and 1,000 chairs, plus 10k/s

Everything runs on loopback: a private Mosquitto (``chairside.sim.services``,
with the deployed broker's in-flight/queue limits unless ``--broker-limits
test``), a private InfluxDB 1.x, and the gateway as a *subprocess*
(``python -m chairside.cli gateway``) so that it has its own interpreter and
GIL, as in production, and its CPU time can be read from /proc.  With two or
more CPUs the gateway is pinned to the first (``--no-pin`` lets it roam), so
its figures are one core's; everything else may use every CPU.

Virtual chairs are a publisher child process speaking MQTT 3.1.1 over a few
raw connections (``RawConnection``) with the firmware's own packet and
payload encoders (``firmware/csfw/mqtt.py``, ``contract.py``), QoS 1 like a
box.  Per run:

1. **baseline** -- the same load to a bare paho subscriber (QoS 1, no
   gateway): the broker's raw delivery rate and publish→receive latency;
2. **gateway** -- the load through the gateway into InfluxDB, measuring

   * stored readings/s: slope of the gateway's ``points_written`` counter
     (lines InfluxDB answered 204 to) over the last 75 % of the publishing
     window, sampled every 0.5 s;
   * publish→stored latency: *probe chairs* (``p###``) are polled every
     ``--poll-ms`` with ``last(seq) ... GROUP BY chair`` over the recent
     points only; a reading counts as stored at the end of the first query
     that shows a ``seq`` at or beyond its own (the gateway writes in order
     per chair).  Each figure is an upper bound, late by at most one poll
     interval plus one query;
   * limit-crossing→alarm latency: *alarm chairs* (``a###``) publish one
     SpO2 of 80 % (below ``spo2_critical``'s 85 %, which has no delay) at
     staggered times; the latency runs from that publish to the ``raised``
     event on ``.../alarms`` seen by an MQTT subscriber;
   * readings lost: per chair, ``count``/``min``/``max`` of the stored
     ``seq`` against what was published (each reading has its own
     timestamp, so count = published and min/max = first/last means every
     (chair, seq) arrived exactly once).

Bounded: every phase has a deadline; the script stops its services itself.
Performance figures go to docs/performance.md (with machine and date).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _extra in (REPO / "gateway", REPO / "firmware"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from chairside.sim.services import GatewayProcess, InfluxDB, Mosquitto  # noqa: E402

DEPLOY_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "chairside.conf"


def deploy_limits() -> str:
    """deploy/mosquitto/chairside.conf's queue bounds (applied after services.Mosquitto's own)."""
    keep = ("max_inflight_messages", "max_queued_messages")
    return "".join(line.strip() + "\n" for line in DEPLOY_CONF.read_text().splitlines()
                   if line.strip().startswith(keep))

SPO2_CRITICAL_PROBE = 80
MAX_DRAIN_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def gateway_cpu() -> set[int]:
    """The CPU the gateway is pinned to (the first), so that a figure is one core's.

    Only the gateway is pinned.  Confining the broker, InfluxDB and the load
    to the other CPU as well (measured on 2 vCPUs, 2026-11-26) made each
    InfluxDB write take 17-18 ms instead of 2-3 ms (scheduling delay on a
    busy CPU, with GOMAXPROCS 1 or 2 alike) and the writes, not the gateway,
    became the limit."""
    return {min(os.sched_getaffinity(0))}


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus``; no-op on one CPU.  Twice: a
    thread started during the first pass may have inherited the old mask."""
    if len(os.sched_getaffinity(0)) < 2:
        return
    for _ in range(2):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(tid), cpus)


# ---------------------------------------------------------------- publishers


@dataclass
class PubPlan:
    port: int
    site: str
    chairs: list[str]
    rate: float
    seconds: float
    clients: int
    start_at: float
    """time.monotonic() at which to start (CLOCK_MONOTONIC is system-wide)"""
    alarm_at: dict[str, int] = field(default_factory=dict)
    """chair -> seq that carries the SpO2 crossing"""


@dataclass
class PubResult:
    pub_times: dict[str, list[float]]
    """chair -> publish time (monotonic) per seq"""
    published: int
    acked: int
    first: float
    last: float
    error: str = ""


def _publisher_main(plan: PubPlan, conn: Any) -> None:
    """Child process: publish the plan, then send a PubResult through ``conn``."""
    try:
        conn.send(_publish(plan))
    except Exception as exc:  # report, never hang the parent
        conn.send(PubResult({}, 0, 0, 0.0, 0.0, error=repr(exc)))
    finally:
        conn.close()


class RawConnection:
    """One MQTT 3.1.1 connection speaking the firmware's own packet codec
    (``csfw.mqtt``), carrying QoS 1 PUBLISHes for many virtual chairs.

    A box sends one small packet at a time; a load generator that did the
    same through a general client library spent a whole core at 10,000
    messages/s and starved what it was meant to measure.  Here a slot's
    packets go out in one ``sendall`` and a reader thread counts PUBACKs."""

    def __init__(self, port: int, client_id: str) -> None:
        from csfw import mqtt as mq

        self._mq = mq
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(mq.connect_packet(client_id, keepalive_s=120))
        connack = self.sock.recv(4)
        if len(connack) < 4 or connack[0] != mq.CONNACK or connack[3] != mq.CONNACK_ACCEPTED:
            raise RuntimeError(f"{client_id}: CONNECT refused ({connack!r})")
        self.sent = 0
        self.acked = 0
        self._pid = 0
        self._pending = bytearray()
        self._reader = threading.Thread(target=self._read_acks, name=f"acks-{client_id}", daemon=True)
        self._reader.start()

    def add(self, topic: str, payload: bytes) -> None:
        self._pid = self._pid % 0xFFFF + 1
        self._pending += self._mq.publish_packet(topic, payload, qos=1, pid=self._pid)
        self.sent += 1

    @property
    def buffered(self) -> int:
        """Bytes added and not yet flushed."""
        return len(self._pending)

    def flush(self) -> None:
        if self._pending:
            self.sock.sendall(self._pending)
            self._pending.clear()

    def wait_acked(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` PUBACKs have arrived; False at the deadline."""
        end = time.monotonic() + timeout
        while self.acked < count:
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)
        return True

    def _read_acks(self) -> None:
        buf = bytearray()
        with contextlib.suppress(OSError):
            while data := self.sock.recv(65536):
                buf += data
                while (head := self._mq.parse_header(buf)) is not None and len(buf) >= head[1] + head[2]:
                    if head[0] == self._mq.PUBACK:
                        self.acked += 1
                    del buf[: head[1] + head[2]]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(self._mq.DISCONNECT_PACKET)
        self.sock.close()
        self._reader.join(5)


def _publish(plan: PubPlan) -> PubResult:
    from csfw import contract as fw  # the firmware's encoders: contract-exact payloads

    conns = [RawConnection(plan.port, f"bench-pub-{plan.site}-{os.getpid()}-{i}") for i in range(plan.clients)]
    n = len(plan.chairs)
    period = 1.0 / plan.rate
    per_chair = max(1, int(plan.seconds * plan.rate))
    slots = max(1, min(n, round(period / 0.005)))
    buckets: list[list[int]] = [[] for _ in range(slots)]
    for i in range(n):
        buckets[i * slots // n].append(i)
    topics = [fw.Topics(plan.site, chair).vitals for chair in plan.chairs]
    pub_times: dict[str, list[float]] = {chair: [] for chair in plan.chairs}
    last_t = [0] * n
    rng = random.Random(plan.site)
    boot_up = [rng.randrange(60_000, 600_000) for _ in range(n)]
    delay = plan.start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    start = time.monotonic()
    up0 = start
    published = 0
    for cycle in range(per_chair):
        for slot, members in enumerate(buckets):
            due = start + cycle * period + slot * period / slots
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            for i in members:
                chair = plan.chairs[i]
                now_wall = time.time_ns() // 1_000_000
                t_ms = max(now_wall, last_t[i] + 1)
                last_t[i] = t_ms
                up = boot_up[i] + int((time.monotonic() - up0) * 1000)
                env = fw.link(fw.envelope(cycle, 1, up, t_ms, True, False), cycle - 1)
                spo2 = SPO2_CRITICAL_PROBE if plan.alarm_at.get(chair) == cycle else 97 + (cycle + i) % 3
                payload = fw.vitals_payload(env, spo2, 70 + (i % 20), 7, fw.ST_OK)
                pub_times[chair].append(time.monotonic())
                conns[i % len(conns)].add(topics[i], payload)
                published += 1
            for c in conns:
                c.flush()
    last = time.monotonic()
    for c in conns:  # one 30-s deadline for all
        c.wait_acked(c.sent, max(0.0, last + 30.0 - time.monotonic()))
    acked = sum(c.acked for c in conns)
    for c in conns:
        c.close()
    return PubResult(pub_times, published, acked, start, last)


def run_publishers(plan: PubPlan, procs: int) -> list[PubResult]:
    """Split ``plan`` over ``procs`` child processes; wait (bounded) for all."""
    ctx = mp.get_context("spawn")
    parts: list[tuple[Any, Any]] = []
    per = math.ceil(len(plan.chairs) / procs)
    for k in range(procs):
        chairs = plan.chairs[k * per : (k + 1) * per]
        if not chairs:
            continue
        sub = PubPlan(plan.port, plan.site, chairs, plan.rate, plan.seconds,
                      max(1, plan.clients // procs), plan.start_at,
                      {c: s for c, s in plan.alarm_at.items() if c in chairs})
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_publisher_main, args=(sub, child), daemon=True)
        proc.start()
        child.close()
        parts.append((proc, parent))
    results = []
    deadline = time.monotonic() + plan.seconds + (plan.start_at - time.monotonic()) + 60.0
    for proc, parent in parts:
        if not parent.poll(max(0.0, deadline - time.monotonic())):
            proc.kill()
            raise RuntimeError("publisher process did not finish in time")
        results.append(parent.recv())
        proc.join(5)
    for res in results:
        if res.error:
            raise RuntimeError(f"publisher failed: {res.error}")
    return results


# ---------------------------------------------------------------- subscribers


class Recorder:
    """A bare paho subscriber recording (topic, payload, monotonic rx time)."""

    def __init__(self, port: int, topic: str, name: str) -> None:
        self.rows: list[tuple[str, bytes, float]] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{name}: subscription not granted")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.rows.append((msg.topic, msg.payload, time.monotonic()))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------- InfluxDB helpers


def influx_query(url: str, q: str, db: str = "chairside") -> list[dict[str, Any]]:
    """InfluxQL → list of series dicts (empty if the database does not exist yet)."""
    data = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ms"}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=30) as resp:
        body = json.loads(resp.read())
    series: list[dict[str, Any]] = []
    for res in body.get("results", []):
        if "error" in res:
            if "database not found" in res["error"]:
                return []
            raise RuntimeError(res["error"])
        series.extend(res.get("series", []) or [])
    return series


def stored_count(url: str, site: str, since_ms: int) -> int:
    series = influx_query(url, f"SELECT count(\"seq\") FROM \"vitals\" WHERE \"site\"='{site}' "
                               f"AND time >= {since_ms}ms")
    return int(series[0]["values"][0][1]) if series else 0


def influx_write_stats(url: str) -> tuple[int, int]:
    """InfluxDB's own (write requests, total ns spent in them) from SHOW STATS."""
    for s in influx_query(url, "SHOW STATS FOR 'httpd'", db=""):
        row = dict(zip(s["columns"], s["values"][0], strict=True))
        return int(row["writeReq"]), int(row["writeReqDurationNs"])
    return 0, 0


class ProbePoller:
    """Polls the probe chairs' newest stored seq; records when each seq became visible.

    Each query reads only points at or after the oldest probe's newest visible
    point (``last()`` returns its time; a chair's timestamps rise with seq), so
    it costs InfluxDB a few hundred points however long the run.  Queries over
    everything since the start, 20 times a second, competed with the
    gateway's writes and slowed them.  ``written`` (the gateway's
    ``points_written`` counter: lines InfluxDB answered 204 to) is sampled
    every ``count_interval_s`` for the stored rate."""

    def __init__(self, url: str, site: str, since_ms: int, interval_s: float, probes: int,
                 written: Callable[[], float], count_interval_s: float = 0.5) -> None:
        self.url, self.site, self.interval_s, self.probes = url, site, interval_s, probes
        self.cursor_ms = since_ms
        self.written, self.count_interval_s = written, count_interval_s
        self.visible: dict[str, dict[int, float]] = {}
        self._max: dict[str, int] = {}
        self._last_ms: dict[str, int] = {}
        self.query_s: list[float] = []
        self.counts: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="probe-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _poll_once(self) -> None:
        q = (f"SELECT last(\"seq\") FROM \"vitals\" WHERE \"site\"='{self.site}' AND \"chair\" =~ /^p/ "
             f"AND time >= {self.cursor_ms}ms GROUP BY \"chair\"")
        try:
            series = influx_query(self.url, q)
        except (OSError, RuntimeError):
            return
        seen = time.monotonic()
        for s in series:
            chair = s["tags"]["chair"]
            t_ms, top = int(s["values"][0][0]), int(s["values"][0][1])
            self._last_ms[chair] = t_ms
            prev = self._max.get(chair, -1)
            if top > prev:
                marks = self.visible.setdefault(chair, {})
                for seq in range(prev + 1, top + 1):
                    marks[seq] = seen
                self._max[chair] = top
        if len(self._last_ms) == self.probes:  # every probe seen: none can hide before the cursor
            self.cursor_ms = max(self.cursor_ms, min(self._last_ms.values()))

    def _loop(self) -> None:
        next_count = 0.0
        while not self._stop.is_set():
            began = time.monotonic()
            self._poll_once()
            self.query_s.append(time.monotonic() - began)
            if began >= next_count:
                next_count = began + self.count_interval_s
                self.counts.append((time.monotonic(), self.written()))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))


# ---------------------------------------------------------------- gateway process


def _metrics(port: int) -> dict[str, float]:
    """Sum the gateway's Prometheus counters/gauges by name (labels folded)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_part, _, value = line.rpartition(" ")
        name = re.sub(r"\{.*\}", "", name_part).removeprefix("chairside_gateway_").removesuffix("_total")
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class BenchGateway(GatewayProcess):
    """The gateway child process (``chairside.sim.services.GatewayProcess``), with
    GatewayConfig overrides through a two-line bootstrap, and its CPU time
    and metrics for the figures."""

    BOOTSTRAP = (
        "import sys, dataclasses as d, json; from chairside import cli, gateway_command as g\n"
        "o = json.loads(sys.argv[1]); c = g.config_from_args\n"
        "g.config_from_args = lambda a: d.replace(c(a), **o)\n"
        "sys.exit(cli.main(sys.argv[2:]))\n"
    )

    def __init__(self, broker: Mosquitto, influx: InfluxDB, workdir: Path, overrides: dict[str, Any],
                 client_id: str = "") -> None:
        boot = ["-c", self.BOOTSTRAP, json.dumps(overrides)] if overrides else None
        self.client_id = client_id or f"bench-gw-{os.getpid()}-{time.monotonic_ns()}"
        self.broker_port = broker.port
        super().__init__(broker.port, influx.url, workdir / "gw-state", workdir=workdir,
                         client_id=self.client_id, python_args=boot)

    def discard_session(self) -> None:
        """End the stopped gateway's persistent MQTT session (3.1.2.4: a clean
        CONNECT discards it).  Left behind, it had the broker queue every
        later phase's messages for nobody, which cost Mosquitto twice the CPU
        and slowed the later phases."""
        RawConnection(self.broker_port, self.client_id).close()  # its CONNECT is a clean one

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def metrics(self) -> dict[str, float]:
        return _metrics(self.metrics_port)


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    chairs: int
    rate: float
    seconds: float
    published: int = 0
    offered_per_s: float = 0.0
    baseline_per_s: float = 0.0
    baseline_p50_ms: float = math.nan
    baseline_p99_ms: float = math.nan
    stored: int = 0
    stored_per_s: float = 0.0
    stored_p50_ms: float = math.nan
    stored_p99_ms: float = math.nan
    stored_samples: int = 0
    alarm_p50_ms: float = math.nan
    alarm_p99_ms: float = math.nan
    alarm_n: int = 0
    alarm_expected: int = 0
    lost: int = 0
    drain_s: float = 0.0
    gw_cpu: float = 0.0
    """gateway CPU seconds per wall second during the gateway phase"""
    gw_stored_per_cpu_s: float = 0.0
    poll_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def _chair_names(n: int) -> tuple[list[str], list[str], list[str]]:
    """(all, probes, alarm chairs): a few p### probe and a### alarm chairs among c####."""
    probes = max(2, min(50, n // 20)) if n >= 4 else 1
    alarms = max(1, min(20, n // 50)) if n >= 3 else 0
    plain = max(0, n - probes - alarms)
    p = [f"p{i:03d}" for i in range(probes)]
    a = [f"a{i:03d}" for i in range(alarms)]
    c = [f"c{i:05d}" for i in range(plain)]
    return p + a + c, p, a


def wait_progress(count: Callable[[], float], target: int, deadline: float, interval_s: float) -> None:
    """Poll ``count`` until it reaches ``target``, ``deadline`` passes, or it stops rising for 5 s."""
    best, best_at = -math.inf, time.monotonic()
    while time.monotonic() < deadline:
        now_count = count()
        if now_count >= target:
            return
        if now_count > best:
            best, best_at = now_count, time.monotonic()
        elif time.monotonic() - best_at > 5:
            return
        time.sleep(interval_s)


def run_once(args: argparse.Namespace, chairs: int, rate: float, seconds: float,
             broker: Mosquitto, influx: InfluxDB, workdir: Path, tag: str,
             gw_cpus: set[int] | None) -> RunResult:
    result = RunResult(chairs, rate, seconds)
    names, probes, alarm_chairs = _chair_names(chairs)
    per_chair = max(1, int(seconds * rate))
    procs = args.pub_procs
    clients = args.pub_clients

    # -- 1. baseline: the same load to a bare paho subscriber -----------------
    base_site = f"b{tag}"
    rec = Recorder(broker.port, f"chairside/v1/{base_site}/+/vitals", "baseline")
    try:
        plan = PubPlan(broker.port, base_site, names, rate, seconds, clients, time.monotonic() + 1.5)
        pubs = run_publishers(plan, procs)
        expected = sum(r.published for r in pubs)
        end = time.monotonic() + 30
        while len(rec.rows) < expected and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        rec.close()
    rows = rec.rows
    if len(rows) >= 2:
        result.baseline_per_s = (len(rows) - 1) / max(1e-9, rows[-1][2] - rows[0][2])
    pub_index = {c: t for r in pubs for c, t in r.pub_times.items()}
    lat = []
    for topic, payload, rx in rows:
        chair = topic.split("/")[3]
        seq = json.loads(payload)["seq"]
        lat.append(rx - pub_index[chair][seq])
    result.baseline_p50_ms, result.baseline_p99_ms = _pct(lat, 50) * 1e3, _pct(lat, 99) * 1e3
    if len(rows) != expected:
        result.notes.append(f"baseline subscriber got {len(rows)} of {expected}")

    # -- 2. through the gateway ------------------------------------------------
    site = f"g{tag}"
    overrides: dict[str, Any] = dict(getattr(args, "set_fields", {}) or {})
    if args.batch_max:
        overrides["batch_max"] = args.batch_max
    if args.batch_interval:
        overrides["batch_interval_s"] = args.batch_interval
    gw = BenchGateway(broker, influx, workdir, overrides)
    gw.start()
    alarms: Recorder | None = None
    poller: ProbePoller | None = None
    try:
        if gw_cpus is not None:
            assert gw.proc is not None
            pin(gw.proc.pid, gw_cpus)
        warm = Recorder(broker.port, "chairside/v1/+/+/cmd", "warmup")
        from csfw import contract as fw

        warm_site = f"w{tag}"
        deadline = time.monotonic() + 30
        seq = 0
        since_ms = time.time_ns() // 1_000_000 - 1000
        while stored_count(influx.url, warm_site, since_ms) == 0:
            if time.monotonic() > deadline or gw.proc is None or gw.proc.poll() is not None:
                raise RuntimeError(f"gateway did not store a warm-up reading; log: {gw.log_path}")
            env = fw.envelope(seq, 1, 1000 + seq, time.time_ns() // 1_000_000, True, False)
            warm.client.publish(fw.Topics(warm_site, "w0").vitals, fw.vitals_payload(env, 98, 70, 7, "ok"), qos=1)
            seq += 1
            time.sleep(0.3)
        warm.close()
        alarms = Recorder(broker.port, f"chairside/v1/{site}/+/alarms", "alarms")
        since_ms = time.time_ns() // 1_000_000 - 1000
        def written() -> float:
            return gw.metrics().get("points_written", math.nan)

        poller = ProbePoller(influx.url, site, since_ms, args.poll_ms / 1000, len(probes), written)
        poller.start()
        start_at = time.monotonic() + 1.5
        alarm_at = {c: max(1, (k + 1) * per_chair // (len(alarm_chairs) + 1)) for k, c in enumerate(alarm_chairs)}
        alarm_at = {c: s for c, s in alarm_at.items() if s < per_chair}
        cpu0, wall0 = gw.cpu_seconds(), time.monotonic()
        influx0 = influx_write_stats(influx.url)
        pubs = run_publishers(PubPlan(broker.port, site, names, rate, seconds, clients, start_at, alarm_at), procs)
        published = sum(r.published for r in pubs)
        first = min(r.first for r in pubs)
        last = max(r.last for r in pubs)
        result.published = published
        result.offered_per_s = published / (last - first + 1.0 / rate)
        # drain: wait until everything is stored or progress stops; the cheap
        # counter first, then InfluxDB's own count (which scans the whole run)
        drain_end = time.monotonic() + min(MAX_DRAIN_S, 10 + seconds)
        wait_progress(lambda: written() - poller.counts[0][1], published, drain_end, 0.1)
        wait_progress(lambda: stored_count(influx.url, site, since_ms), published, drain_end, 1.0)
        done = time.monotonic()
        result.drain_s = max(0.0, done - last)
        time.sleep(args.poll_ms / 1000 * 3)  # let the poller see the tail
        cpu1, wall1 = gw.cpu_seconds(), time.monotonic()
        influx1 = influx_write_stats(influx.url)
        poller.stop()
        alarms.close()
        metrics = gw.metrics()
    finally:
        gw.stop()
        gw.discard_session()
        if poller is not None:
            poller.stop()
        if alarms is not None:
            alarms.close()

    pub_index = {c: t for r in pubs for c, t in r.pub_times.items()}
    # stored/s: slope of count over the last 75 % of the publishing window
    counts = [(t, c) for t, c in poller.counts if first + 0.25 * (last - first) <= t <= last + 0.5]
    if len(counts) >= 2 and counts[-1][0] > counts[0][0]:
        result.stored_per_s = (counts[-1][1] - counts[0][1]) / (counts[-1][0] - counts[0][0])
    else:  # very short runs: everything stored over first publish → all visible
        final_t = poller.counts[-1][0] if poller.counts else done
        result.stored_per_s = stored_count(influx.url, site, since_ms) / max(1e-9, final_t - first)
    # publish→stored latency from the probe chairs
    lat = []
    for chair, marks in poller.visible.items():
        times = pub_index.get(chair, [])
        for seq, seen in marks.items():
            if seq < len(times):
                lat.append(seen - times[seq])
    result.stored_samples = len(lat)
    result.stored_p50_ms, result.stored_p99_ms = _pct(lat, 50) * 1e3, _pct(lat, 99) * 1e3
    result.poll_ms = args.poll_ms + 1e3 * statistics.fmean(poller.query_s) if poller.query_s else args.poll_ms
    # alarm latency
    raised: dict[str, float] = {}
    unexpected = 0
    for topic, payload, rx in alarms.rows:
        event = json.loads(payload)
        chair = topic.split("/")[3]
        if event.get("alarm") == "spo2_critical" and event.get("event") == "raised" and chair in alarm_at:
            raised.setdefault(chair, rx)
        else:
            unexpected += 1
    alat = [raised[c] - pub_index[c][s] for c, s in alarm_at.items() if c in raised]
    result.alarm_expected, result.alarm_n = len(alarm_at), len(alat)
    result.alarm_p50_ms, result.alarm_p99_ms = _pct(alat, 50) * 1e3, _pct(alat, 99) * 1e3
    if unexpected:
        result.notes.append(f"{unexpected} other alarm events")
    # loss, by chair and seq
    series = influx_query(influx.url, f"SELECT count(\"seq\"), min(\"seq\"), max(\"seq\") FROM \"vitals\" "
                                      f"WHERE \"site\"='{site}' AND time >= {since_ms}ms GROUP BY \"chair\"")
    got = {s["tags"]["chair"]: s["values"][0][1:4] for s in series}
    lost = 0
    for chair in names:
        sent = len(pub_index.get(chair, []))
        n, lo, hi = got.get(chair, (0, None, None))
        if n == sent and (sent == 0 or (lo == 0 and hi == sent - 1)):
            continue
        lost += max(sent - int(n), 0) or 1
    result.lost = lost
    result.stored = sum(int(v[0]) for v in got.values())
    gw_wall = wall1 - wall0
    result.gw_cpu = (cpu1 - cpu0) / max(1e-9, gw_wall)
    result.gw_stored_per_cpu_s = result.stored / max(1e-9, cpu1 - cpu0)
    for name in ("messages_in", "points_written", "queue_dropped", "processing_errors", "duplicates", "spooled",
                 "spool_dropped"):
        if metrics.get(name):
            result.notes.append(f"gateway {name}={metrics[name]:g}")
    writes = metrics.get("write_seconds_count", 0.0)
    if writes:
        server = (influx1[1] - influx0[1]) / max(1, influx1[0] - influx0[0]) / 1e6
        result.notes.append(f"{writes:.0f} writes of {metrics.get('points_written', 0.0) / writes:.0f} lines, "
                            f"{1e3 * metrics.get('write_seconds_sum', 0.0) / writes:.1f} ms each in the gateway, "
                            f"{server:.1f} ms in InfluxDB")
    if result.stored > published:
        result.notes.append(f"stored {result.stored} > published {published}")
    return result


# ---------------------------------------------------------------- output


def _f(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def print_table(results: Sequence[RunResult], out: Any = sys.stdout) -> None:
    head = ["chairs", "Hz", "s", "published", "offered/s", "broker/s", "broker p50/p99 ms",
            "stored/s", "ratio", "stored p50/p99 ms", "alarm p50/p99 ms (n)", "lost", "gw cpu",
            "stored/cpu-s"]
    rows = []
    for r in results:
        ratio = r.stored_per_s / r.baseline_per_s if r.baseline_per_s else math.nan
        rows.append([
            str(r.chairs), f"{r.rate:g}", f"{r.seconds:g}", f"{r.published:,}", _f(r.offered_per_s),
            _f(r.baseline_per_s), f"{_f(r.baseline_p50_ms, 1)}/{_f(r.baseline_p99_ms, 1)}",
            _f(r.stored_per_s), _f(ratio, 2), f"{_f(r.stored_p50_ms)}/{_f(r.stored_p99_ms)}",
            f"{_f(r.alarm_p50_ms)}/{_f(r.alarm_p99_ms)} ({r.alarm_n}/{r.alarm_expected})",
            str(r.lost), f"{r.gw_cpu * 100:.0f}%", _f(r.gw_stored_per_cpu_s),
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)
    for r in results:
        extra = f"; {'; '.join(r.notes)}" if r.notes else ""
        print(f"# {r.chairs} chairs @ {r.rate:g} Hz: {r.stored:,} stored of {r.published:,}, "
              f"drain {r.drain_s:.1f} s after the last publish, latency samples {r.stored_samples} "
              f"(resolution ≤ {r.poll_ms:.0f} ms){extra}", file=out)


PRESETS: dict[str, list[tuple[int, float, float]]] = {
    # issue 8: 100 and 1,000 chairs at the real 1 Hz, then 1,000 chairs at 10 Hz (10,000 readings/s)
    "issue8": [(100, 1.0, 30.0), (1000, 1.0, 30.0), (1000, 10.0, 30.0)],
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chairs", type=int, default=50, help="virtual chairs (default 50)")
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per chair (default 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per phase (default 10)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="run a named set of loads instead")
    parser.add_argument("--broker-limits", choices=("deploy", "test"), default="deploy",
                        help="deploy: max_inflight_messages / max_queued_messages as in "
                             "deploy/mosquitto/chairside.conf (default); test: services.Mosquitto's own")
    parser.add_argument("--pub-procs", type=int, default=1, help="publisher processes (default 1)")
    parser.add_argument("--pub-clients", type=int, default=4,
                        help="publisher MQTT connections in all (default 4)")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the gateway use every CPU too (default: only the first)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="probe poll interval (default 50 ms)")
    parser.add_argument("--batch-max", type=int, default=0, help="override GatewayConfig.batch_max")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="set_pairs",
                        help="override another GatewayConfig field, e.g. watermark_interval_ms=5000")
    parser.add_argument("--batch-interval", type=float, default=0.0,
                        help="override GatewayConfig.batch_interval_s (seconds)")
    args = parser.parse_args(argv)
    args.set_fields = {name: float(value) if "." in value else int(value)
                       for name, _, value in (pair.partition("=") for pair in args.set_pairs)}
    loads = PRESETS[args.preset] if args.preset else [(args.chairs, args.rate, args.seconds)]
    for chairs, rate, seconds in loads:
        if chairs < 1 or rate <= 0 or seconds <= 0 or chairs * rate > 50_000 or seconds > 600:
            parser.error("need 1 <= chairs, 0 < rate, 0 < seconds <= 600, chairs*rate <= 50,000")
    results = []
    gw_cpus = gateway_cpu()
    with tempfile.TemporaryDirectory(prefix="chairside-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(extra_config=deploy_limits() if args.broker_limits == "deploy" else "",
                           workdir=work / "mosquitto")
        influx = InfluxDB(workdir=work / "influxd")
        broker.start()
        try:
            influx.start()
            for k, (chairs, rate, seconds) in enumerate(loads):
                print(f"running {chairs} chairs at {rate:g} Hz for {seconds:g} s ...", file=sys.stderr, flush=True)
                tag = f"{os.getpid() % 10000}r{k}"
                results.append(run_once(args, chairs, rate, seconds, broker, influx, work, tag,
                                        None if args.no_pin else gw_cpus))
        finally:
            influx.stop()
            broker.stop()
    tuned = {"batch_max": args.batch_max, "batch_interval_s": args.batch_interval}
    tuned.update(args.set_fields)
    gateway = f"overrides {tuned}" if args.batch_max or args.batch_interval or args.set_fields else "defaults"
    where = ("every CPU shared" if args.no_pin
             else f"gateway pinned to CPU {sorted(gw_cpus)}, the rest unpinned")
    print(f"ingest benchmark: broker limits {args.broker_limits}, gateway {gateway}; {where}")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
