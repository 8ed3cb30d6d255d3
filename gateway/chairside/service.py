"""The gateway: MQTT (box topics) → validate → timestamp → alarm stage → InfluxDB.

Three threads, each with one job:

* the ingest session's thread (:mod:`chairside.ingest.session`, the box
  topics' persistent subscription) runs :meth:`Gateway._on_message` for each
  message as it is parsed: validate, timestamp, alarm stage, publish alarm
  events, hand line protocol to the store buffer.  While it processes it does
  not read, so a burst waits in the broker (backpressure), and no queue sits
  between receiving and alarming;
* the timer ticks the alarm stage every ``tick_interval_s`` (delays,
  staleness, renotify) and flushes aggregated rejects; it and the ingest
  thread share the alarm stage under one lock;
* the writer takes the store buffer in batches (``batch_max`` lines or every
  ``batch_interval_s``) and makes each batch durable: written to InfluxDB, or,
  while InfluxDB is unreachable (or the spool still holds older points),
  appended to the on-disk :class:`~chairside.store.spool.PointSpool`.  With
  ``manual_ack`` each MQTT message is acknowledged only once all its points
  are durable, so a gateway crash makes the broker redeliver (persistent
  session: QoS 1, clean session off, stable client id) instead of losing.
  The spool is replayed oldest first when InfluxDB returns; new batches queue
  behind it, so order is kept.  A batch InfluxDB rejects as malformed is
  bisected to isolate the bad line(s), which go to the dead-letter file with
  the reason; the rest is stored.

Alarms never wait for InfluxDB: the processor never touches storage, and the
writer acknowledges spooled messages at once, so the broker's in-flight
window never stalls live alarm evaluation.  Writes are idempotent (same
series and timestamp ⇒ the same point: boot times are frozen in the state
dir), so a redelivery or a spool replay after a partial write stores nothing
twice.  Everything the gateway publishes (alarm events, time, staff
answers) goes through a separate paho client.  When the spool is full, batches are dropped (counted) and a technical
alarm event ``gateway_spool_full`` is published like any other alarm event.

``/health`` (JSON, 200 or 503) and ``/metrics`` (Prometheus text) are served
on ``127.0.0.1:metrics_port`` when that is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from chairside import contract, mqtt_auth
from chairside.ingest.session import IngestSession, SessionConfig
from chairside.ingest.timebase import Timebase
from chairside.ingest.validate import Accepted, Rejected, validate
from chairside.metrics import Metrics
from chairside.model import AlarmEvent, AlarmStage, Reading
from chairside.store.deadletter import DeadLetters
from chairside.store.influx import InfluxRejected, InfluxUnavailable, InfluxWriter
from chairside.store.points import alarm_event_line, reading_line, reject_line
from chairside.store.spool import PointSpool, SpoolError

log = logging.getLogger("chairside.service")

SUBSCRIBED_KINDS = ("vitals", "nibp", "status", "resp")
CONTROL_KINDS = ("alarm_ack", "limits_set", "chair_standby", "drill_end")
TIME_SYNC_INTERVAL_MS = 60_000
_SEEN_PER_BOOT = 1024
_SEEN_BOOTS = 4096
_REJECT_LOG_PER_WINDOW = 10
SKEW_LOG_INTERVAL_MS = 60_000  # clock-skew warnings: at most one per chair per minute
MAX_SKEW_LOG_KEYS = 10_000
MALFORMED_STATUSES = frozenset({400, 413, 422})
"""InfluxDB answers that blame the lines themselves: bisect, dead-letter the bad ones"""
SPOOL_FULL_ALARM = "gateway_spool_full"


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall clock, milliseconds since 1970-01-01 UTC."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    client_id: str = "chairside-gateway"
    keepalive_s: int = 30
    influx_url: str = "http://127.0.0.1:8086"
    database: str = "chairside"
    influx_timeout_s: float = 2.0
    state_dir: Path | None = None
    store_max_lines: int = 200_000
    """store buffer bound (lines waiting for InfluxDB, incl. retries)"""
    batch_max: int = 500
    batch_interval_s: float = 0.05
    ack_window: int = 16
    """Flush as soon as this many MQTT messages wait for their ack: the broker
    sends no more than its in-flight limit (max_inflight_messages) unacked, so
    waiting for a full batch would cap throughput at in-flight ÷ interval."""
    tick_interval_s: float = 0.25  # condition delays are honoured to within this
    late_live_ms: int = 30_000
    """A live reading measured longer ago than this is treated as historical by the alarm stage."""
    retry_min_s: float = 0.5
    retry_max_s: float = 15.0
    reject_interval_s: float = 10.0
    """at most one ``rejects`` point per reason per interval"""
    skew_limit_ms: int = 120_000
    manual_ack: bool = True
    strict_fields: bool = False
    stop_timeout_s: float = 5.0
    metrics_port: int | None = None
    """serve /metrics and /health on 127.0.0.1:PORT"""
    spool_max_bytes: int = 256 * 1024 * 1024
    """bound of the on-disk spool (state_dir/spool); past it batches are dropped"""
    spool_segment_bytes: int = 4 * 1024 * 1024
    spool_fsync: bool = True
    deadletter_max_bytes: int = 64 * 1024 * 1024
    probe_interval_s: float = 5.0
    """while idle, check InfluxDB is reachable this often (for /health)"""
    health_write_age_s: float = 300.0
    """/health reports 503 when points are waiting and none was written for this long"""
    site: str = "gateway"
    """site id under which the gateway publishes its own technical alarm events"""

    def __post_init__(self) -> None:
        positive = {
            "mqtt_port": self.mqtt_port,
            "keepalive_s": self.keepalive_s,
            "influx_timeout_s": self.influx_timeout_s,
            "store_max_lines": self.store_max_lines,
            "batch_max": self.batch_max,
            "batch_interval_s": self.batch_interval_s,
            "ack_window": self.ack_window,
            "tick_interval_s": self.tick_interval_s,
            "retry_min_s": self.retry_min_s,
            "reject_interval_s": self.reject_interval_s,
            "stop_timeout_s": self.stop_timeout_s,
            "spool_max_bytes": self.spool_max_bytes,
            "spool_segment_bytes": self.spool_segment_bytes,
            "deadletter_max_bytes": self.deadletter_max_bytes,
            "probe_interval_s": self.probe_interval_s,
            "health_write_age_s": self.health_write_age_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"GatewayConfig.{name} must be > 0, got {value!r}")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("GatewayConfig.retry_max_s must be >= retry_min_s")
        if self.store_max_lines < self.batch_max:
            raise ValueError("GatewayConfig.store_max_lines must be >= batch_max")
        if not contract.id_regex().fullmatch(self.site):
            raise ValueError(f"GatewayConfig.site {self.site!r} is not a valid id")


@dataclass(frozen=True, slots=True)
class _Ack:
    pid: int
    generation: int
    """the ingest session's connection the message came on"""


@dataclass(frozen=True, slots=True)
class _Control:
    """A staff message (alarm acknowledgement or limit change) for a chair."""

    kind: str
    site: str
    chair: str
    payload: bytes
    rx_ms: int
    ack: _Ack | None


@dataclass(slots=True)
class _Entry:
    line: str
    ack: _Ack | None
    """set on the last line of a message: acknowledge once this is written"""


@dataclass(slots=True)
class _RejectWindow:
    n: int
    topic: str
    detail: str


class Gateway:
    """Runs the pipeline; ``start()``/``stop()``; counters in ``metrics``."""

    def __init__(
        self,
        config: GatewayConfig,
        alarm_stage: AlarmStage,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.alarm_stage = alarm_stage
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self._describe_metrics()
        self.timebase = Timebase(config.state_dir, skew_limit_ms=config.skew_limit_ms)
        self.influx = InfluxWriter(config.influx_url, config.database, config.influx_timeout_s)
        self._lock = threading.Lock()  # the alarm stage and per-chair state: ingest vs timer
        self._processing = 0  # messages inside _on_message (for wait_idle)
        self._time_sent: dict[tuple[str, str], int] = {}
        self._store: deque[_Entry] = deque()
        self._acks_waiting = 0  # entries in _store that carry an MQTT ack
        self._store_cond = threading.Condition()
        self._writing = False
        self._db_ready = False
        self._temp_dir: Path | None = None
        if config.state_dir is not None:
            storage_dir = config.state_dir
        else:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="chairside-gateway-"))
            storage_dir = self._temp_dir
            log.warning("no state dir: spool in %s will not survive a restart", storage_dir)
        self.spool = PointSpool(
            storage_dir / "spool",
            max_bytes=config.spool_max_bytes,
            segment_bytes=config.spool_segment_bytes,
            fsync=config.spool_fsync,
        )
        self.deadletters = DeadLetters(
            storage_dir / "deadletter", max_bytes=config.deadletter_max_bytes, fsync=config.spool_fsync
        )
        self._spool_full = False
        self._spool_lock = threading.Lock()
        self._influx_ok: bool | None = None
        self._last_write: float | None = None
        self._last_contact = 0.0
        self._started = time.monotonic()
        self._update_spool_gauges()
        self._stop_timer = threading.Event()
        self._stop_writer = threading.Event()
        self._subscribed = threading.Event()
        self._seen: OrderedDict[tuple[str, str, int], tuple[deque[int], set[int]]] = (
            OrderedDict()
        )
        self._rejects: dict[str, _RejectWindow] = {}
        self._skew_logged: dict[tuple[str, str], list[int]] = {}  # chair -> [rx_ms, suppressed]
        self._threads: list[threading.Thread] = []
        self._http: ThreadingHTTPServer | None = None
        self.ingest = IngestSession(
            SessionConfig(
                config.mqtt_host, config.mqtt_port, config.client_id,
                tuple(contract.subscription(kind) for kind in SUBSCRIBED_KINDS + CONTROL_KINDS),
                keepalive_s=config.keepalive_s, auto_ack=not config.manual_ack,
            ),
            self._on_message, self._on_ingest_state,
        )
        # publishing only (alarm events, time, staff answers): QoS 1 messages
        # are queued in paho while the broker is away
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{config.client_id}-pub",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_queued_messages_set(10_000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("messages_in", "counter", "MQTT messages received on box topics")
        m.describe("rejected", "counter", "messages rejected by validation, by reason")
        m.describe("points_written", "counter", "line-protocol points written to InfluxDB")
        m.describe("write_errors", "counter", "failed InfluxDB writes, by kind")
        m.describe("queue_dropped", "counter", "items dropped from a full buffer, by queue")
        m.describe("alarm_events", "counter", "alarm events from the alarm stage")
        m.describe("duplicates", "counter", "redelivered messages (same boot and seq)")
        m.describe("clock_skew", "counter", "live synced messages whose clock is off rx time")
        m.describe("time_estimated", "counter", "messages stored with an estimated timestamp")
        m.describe("processing_errors", "counter", "unexpected errors while processing")
        m.describe("mqtt_connected", "gauge", "1 while the ingest session is connected to the broker")
        m.describe("mqtt_publisher_connected", "gauge", "1 while the publishing connection is up")
        m.describe("write_seconds", "histogram", "InfluxDB write latency")
        m.describe("spool_depth", "gauge", "points waiting in the on-disk spool")
        m.describe("spool_bytes", "gauge", "bytes of the on-disk spool")
        m.describe("spooled", "counter", "points appended to the on-disk spool")
        m.describe("spool_dropped", "counter", "points dropped because the spool was full")
        m.describe("spool_errors", "counter", "failed spool appends (disk errors)")
        m.describe("deadletters", "counter", "points InfluxDB rejected as malformed (dead-lettered)")
        m.describe("influx_reachable", "gauge", "1 while InfluxDB answers")

    # ---- lifecycle ---------------------------------------------------------

    def use_broker_login(self, credentials: Path | None, ca_file: Path | None) -> None:
        """Log in with a provisioned credentials file and/or verify the broker
        against the clinic CA (TLS), on both connections; before ``start()``."""
        mqtt_auth.apply(self.client, credentials, ca_file)
        user, password = (mqtt_auth.read_credentials(credentials) if credentials is not None
                          else (None, None))
        self.ingest.config = dataclasses.replace(
            self.ingest.config, user=user, password=password,
            tls=mqtt_auth.tls_context(ca_file) if ca_file is not None else None)

    def start(self) -> None:
        """Start the worker threads and connect (the broker may be down: both retry)."""
        if self._threads:
            return
        self._started = time.monotonic()
        self._restore_overrides()  # before the first reading is evaluated
        self._threads = [
            threading.Thread(target=self._timer_loop, name="gw-timer", daemon=True),
            threading.Thread(target=self._writer_loop, name="gw-writer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if self.config.metrics_port is not None:
            self._start_metrics_server(self.config.metrics_port)
        self.client.connect_async(
            self.config.mqtt_host, self.config.mqtt_port, keepalive=self.config.keepalive_s
        )
        self.client.loop_start()
        self.ingest.start()

    def stop(self) -> None:
        """Stop reading, flush what InfluxDB accepts within the deadline, send
        the acknowledgements that became due, disconnect."""
        deadline = time.monotonic() + self.config.stop_timeout_s
        self.ingest.pause_reading(max(0.0, deadline - time.monotonic()))
        self._stop_timer.set()
        if self._threads:
            self._threads[0].join(max(0.0, deadline - time.monotonic()))
        self.timebase.flush()
        self._stop_writer.set()
        with self._store_cond:
            self._store_cond.notify_all()
        if len(self._threads) > 1:
            self._threads[1].join(max(0.0, deadline - time.monotonic()) + 1.0)
        with self._store_cond:
            left = len(self._store)
        if left:
            self.metrics.inc("queue_dropped", left, queue="store_at_stop")
            log.warning("%d points neither written nor spooled at stop (unacked: redelivered)", left)
        self.ingest.stop()
        self.client.disconnect()
        self.client.loop_stop()
        self.influx.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self._threads = []
        if self._temp_dir is not None and self.spool.empty:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the box-topic subscriptions are granted."""
        return self._subscribed.wait(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """True when nothing is queued, processing, buffered, spooled or being written."""
        return self._wait(timeout, spool_too=True)

    def wait_durable(self, timeout: float) -> bool:
        """True when everything received is in InfluxDB or in the disk spool."""
        return self._wait(timeout, spool_too=False)

    def _wait(self, timeout: float, *, spool_too: bool) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._store_cond:
                store_idle = not self._store and not self._writing
                spool_idle = not spool_too or self.spool.empty
            if self._processing == 0 and store_idle and spool_idle:
                return True
            time.sleep(0.02)
        return False

    # ---- MQTT callbacks (the connections' threads: never raise) ---------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the publishing connection: %s", reason_code)
            return
        self.metrics.set("mqtt_publisher_connected", 1)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self.metrics.set("mqtt_publisher_connected", 0)
        if reason_code.is_failure:
            log.warning("publishing connection lost: %s (paho reconnects)", reason_code)

    def _on_ingest_state(self, state: str) -> None:
        self.metrics.set("mqtt_connected", 1 if state in ("subscribing", "receiving") else 0)
        if state == "receiving":
            self._subscribed.set()
        else:
            self._subscribed.clear()

    def _on_message(self, topic: str, payload: bytes, qos: int, pid: int, generation: int) -> None:
        """One message, start to finish, on the ingest session's thread."""
        ack: _Ack | None = None
        self._processing += 1
        try:
            rx_ms = self.clock.now_ms()
            self.metrics.inc("messages_in")
            if self.config.manual_ack and qos > 0:
                ack = _Ack(pid, generation)
            control = _control_of(topic, payload, rx_ms, ack)
            if control is not None:
                with self._lock:
                    self._process_control(control)
                return
            result = validate(topic, payload, strict=self.config.strict_fields)
            with self._lock:
                self._process(result, rx_ms, ack)
        except Exception:
            self.metrics.inc("processing_errors", stage="process")
            log.exception("unexpected error processing a message on %s", topic)
            self._ack(ack)
        finally:
            self._processing -= 1

    def _ack(self, ack: _Ack | None) -> None:
        """PUBACK (a message from an earlier connection is skipped: the broker
        redelivers it on the current one)."""
        if ack is not None:
            self.ingest.ack(ack.generation, ack.pid)

    # ---- processing (under self._lock) -----------------------------------------

    def _timer_loop(self) -> None:
        next_rejects = time.monotonic() + self.config.reject_interval_s
        while not self._stop_timer.wait(self.config.tick_interval_s):
            try:
                with self._lock:
                    self._tick()
                    if time.monotonic() >= next_rejects:
                        next_rejects = time.monotonic() + self.config.reject_interval_s
                        self._flush_rejects()
            except Exception:
                self.metrics.inc("processing_errors", stage="timer")
                log.exception("unexpected error in the timer")
        with self._lock:
            self._flush_rejects()

    def _process(self, result: Accepted | Rejected, rx_ms: int, ack: _Ack | None) -> None:
        if isinstance(result, Rejected):
            self._note_reject(result)
            self._ack(ack)
            return
        if result.ignored:
            self.metrics.inc("unknown_fields_ignored")
            log.info("ignored unknown fields %s on %s", ",".join(result.ignored), result.topic)
        stamp = self.timebase.stamp(
            result.site, result.chair, result.fields, rx_ms, historical=result.historical
        )
        if stamp.skew_ms is not None:
            self._note_skew(result.site, result.chair, stamp.skew_ms, rx_ms)
        if stamp.time_estimated:
            self.metrics.inc("time_estimated")
        reading = Reading(
            site=result.site,
            chair=result.chair,
            kind=result.kind,
            fields=result.fields,
            measured_ms=stamp.measured_ms,
            received_ms=rx_ms,
            historical=result.historical,
            time_estimated=stamp.time_estimated,
        )
        lines: list[str] = []
        line = reading_line(reading)
        if line is not None:
            lines.append(line)
        if result.kind == "resp":
            log.info("box %s/%s answered %s", result.site, result.chair, dict(result.fields))
        elif result.last_will:
            log.warning("box %s/%s went offline (last will)", result.site, result.chair)
        if not reading.historical and reading.kind in ("vitals", "status"):
            self._maybe_send_time(reading)
        if self._is_duplicate(reading):
            self.metrics.inc("duplicates")
        else:
            try:
                events = self.alarm_stage.on_reading(self._for_alarms(reading), self.clock.now_ms())
            except Exception:
                self.metrics.inc("processing_errors", stage="alarm_stage")
                log.exception("alarm stage failed on %s", result.topic)
                events = []
            lines.extend(self._emit(events))
        self._store_lines(lines, ack)

    def _note_skew(self, site: str, chair: str, skew_ms: int, rx_ms: int) -> None:
        """Count every skewed message; warn at most once a minute per chair.

        A box with a wrong clock, or a backlog the broker held during a
        gateway outage, would otherwise log one line per reading."""
        self.metrics.inc("clock_skew")
        key = (site, chair)
        last = self._skew_logged.get(key)
        if last is not None and rx_ms - last[0] < SKEW_LOG_INTERVAL_MS:
            last[1] += 1
            return
        if len(self._skew_logged) >= MAX_SKEW_LOG_KEYS:
            self._skew_logged.clear()
        more = f" ({last[1]} more since the last warning)" if last is not None and last[1] else ""
        log.warning("clock skew %+d ms on %s/%s (device t vs receive time)%s",
                    skew_ms, site, chair, more)
        self._skew_logged[key] = [rx_ms, 0]

    def _for_alarms(self, reading: Reading) -> Reading:
        """A reading the box sent as live but that was measured long ago (a
        QoS 1 resend after a reconnect, a backlog the broker kept while the
        gateway was down) is history by now: stored as sent, never alarmed on."""
        if reading.historical or reading.kind == "status" or reading.time_estimated:
            return reading
        if reading.received_ms - reading.measured_ms <= self.config.late_live_ms:
            return reading
        self.metrics.inc("late_live_readings")
        return dataclasses.replace(reading, historical=True)

    def _maybe_send_time(self, reading: Reading) -> None:
        """Send the box the wall time when its clock is not synchronised (no NTP
        on the clinic network); at most once a minute per chair."""
        if reading.fields.get("sync") != 0:
            return
        key = (reading.site, reading.chair)
        now = self.clock.now_ms()
        last = self._time_sent.get(key)
        if last is not None and now - last < TIME_SYNC_INTERVAL_MS:
            return
        self._time_sent[key] = now
        self.metrics.inc("time_commands")
        command = {"v": 1, "cmd": "time", "id": f"time-{now}", "t": now}
        self._publish(contract.topic("cmd", reading.site, reading.chair),
                      json.dumps(command, separators=(",", ":")), retain=False)

    def _process_control(self, item: _Control) -> None:
        """Apply a staff message (acknowledgement, limit change, standby, drill
        end) and answer it on the chair's staff/result topic."""
        from chairside.alarms.engine import AlarmEngine

        engine = self.alarm_stage
        if not isinstance(engine, AlarmEngine):
            self.metrics.inc("control_rejected", reason="no_engine")
            self._ack(item.ack)
            return
        lines: list[str] = []
        rejected = self._apply_control(item, engine, self.clock.now_ms(), lines)
        if rejected is None:
            self._publish_control_result(item, True)
        else:
            self._control_rejected(item, rejected.reason, rejected.detail)
        self._store_lines(lines, item.ack)

    def _apply_control(self, item: _Control, engine: Any, now: int, lines: list[str]) -> Any:
        """Apply one staff message to the engine, adding the points to store to
        ``lines``; returns the adapter's Rejected, or None when applied."""
        from chairside.alarms import adapter

        if item.kind == "chair_standby":
            standby = adapter.handle_standby(engine, item.site, item.chair, item.payload, now)
            if isinstance(standby, adapter.Rejected):
                return standby
            events, records = standby
            log.warning("chair %s/%s in standby (%d limit(s) reset)", item.site, item.chair, len(records))
            lines.extend(self._emit(events))
            lines.extend(adapter.audit_line(record) for record in records)
            if records:
                self._save_overrides(engine)
            self._publish_active(item.site, item.chair)  # empties even with no event
            return None
        if item.kind in ("alarm_ack", "drill_end"):
            handler = adapter.handle_ack if item.kind == "alarm_ack" else adapter.handle_drill_end
            result = handler(engine, item.site, item.chair, item.payload, now)
            if isinstance(result, adapter.Rejected):
                return result
            lines.extend(self._emit(result))
            if item.kind == "drill_end":
                log.warning("drill chair %s/%s forgotten", item.site, item.chair)
                self._publish_active(item.site, item.chair)
            return None
        record = adapter.handle_limits_set(engine, item.site, item.chair, item.payload, now)
        if isinstance(record, adapter.Rejected):
            return record
        log.warning("limit %s on %s/%s: %s -> %s by %s", record.param, item.site, item.chair,
                    record.old, record.new, record.by)
        self.metrics.inc("limit_changes")
        lines.append(adapter.audit_line(record))
        self._save_overrides(engine)
        return None

    def _publish_control_result(self, item: _Control, ok: bool, reason: str = "", detail: str = "") -> None:
        """Answer a staff message on the chair's staff/result topic, echoing its
        ``id``, so `chairside staff` can tell applied from refused."""
        try:
            request = json.loads(item.payload)
            request_id = request.get("id") if isinstance(request, dict) else None
        except ValueError:
            request_id = None
        result: dict[str, Any] = {"v": 1, "kind": item.kind, "ok": 1 if ok else 0, "t": self.clock.now_ms()}
        if isinstance(request_id, str) and len(request_id) <= 36:
            result["id"] = request_id
        if not ok:
            result["reason"] = reason
            result["detail"] = detail[:200]
        self._publish(contract.topic("control_result", item.site, item.chair),
                      json.dumps(result, separators=(",", ":")), retain=False)

    def _overrides_path(self) -> Path | None:
        return None if self.config.state_dir is None else self.config.state_dir / "limit_overrides.json"

    def _save_overrides(self, engine: Any) -> None:
        """Per-chair limits survive a gateway restart (written atomically)."""
        path = self._overrides_path()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(engine.all_overrides(), f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            self.metrics.inc("persist_errors", what="limit_overrides")
            log.error("cannot save per-chair limits to %s: %s", path, exc)

    def _restore_overrides(self) -> None:
        """Re-apply per-chair limits saved before a restart; each is audited
        (by "gateway", reason "restored after restart") so the record shows it."""
        from chairside.alarms import adapter
        from chairside.alarms.engine import AlarmEngine
        from chairside.alarms.profile import ProfileError

        path = self._overrides_path()
        engine = self.alarm_stage
        if path is None or not path.exists() or not isinstance(engine, AlarmEngine):
            return
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable per-chair limits %s: %s", path, exc)
            return
        now = self.clock.now_ms()
        lines: list[str] = []
        for key, params in sorted(saved.items()) if isinstance(saved, dict) else []:
            site, _, chair = str(key).partition("/")
            for param, value in sorted(params.items()) if isinstance(params, dict) else []:
                now += 1  # one ms apart: audit points of one chair must not share a timestamp
                try:
                    record = engine.set_limit(site, chair, param, value, "gateway", "restored after restart", now)
                except (ProfileError, TypeError, ValueError) as exc:
                    log.error("cannot restore %s on %s: %s", param, key, exc)
                    continue
                lines.append(adapter.audit_line(record))
        if lines:
            log.warning("restored %d per-chair limit(s) from %s", len(lines), path)
            self._store_lines(lines, None)

    def _control_rejected(self, item: _Control, reason: str, detail: str) -> None:
        self.metrics.inc("control_rejected", reason=reason)
        self._publish_control_result(item, False, reason, detail)
        log.warning("%s on %s/%s rejected: %s (%s)", item.kind, item.site, item.chair, reason, detail)

    def _is_duplicate(self, reading: Reading) -> bool:
        seq, boot = reading.fields.get("seq"), reading.fields.get("boot")
        if not isinstance(seq, int) or not isinstance(boot, int):
            return False
        key = (reading.site, reading.chair, boot)
        entry = self._seen.get(key)
        if entry is None:
            entry = (deque(), set())
            self._seen[key] = entry
            while len(self._seen) > _SEEN_BOOTS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        order, seen = entry
        if seq in seen:
            return True
        order.append(seq)
        seen.add(seq)
        if len(order) > _SEEN_PER_BOOT:
            seen.discard(order.popleft())
        return False

    def _tick(self) -> None:
        self.timebase.flush()
        try:
            events = self.alarm_stage.tick(self.clock.now_ms())
        except Exception:
            self.metrics.inc("processing_errors", stage="alarm_tick")
            log.exception("alarm stage tick failed")
            return
        if events:
            self._store_lines(self._emit(events), None)

    def _emit(self, events: Sequence[AlarmEvent]) -> list[str]:
        """Publish events and the chairs' active sets; return their points."""
        lines: list[str] = []
        chairs: set[tuple[str, str]] = set()
        for event in events:
            self.metrics.inc("alarm_events", event=event.event, priority=event.priority)
            log.warning("alarm %s %s: %s", event.event, event.key, event.text)
            self._publish(
                contract.topic("alarms", event.site, event.chair),
                json.dumps(event.to_payload(), separators=(",", ":")),
                retain=False,
            )
            chairs.add((event.site, event.chair))
            try:
                lines.append(alarm_event_line(event))
            except ValueError as exc:
                log.error("cannot store alarm event %s: %s", event.id, exc)
        for site, chair in sorted(chairs):
            self._publish_active(site, chair)
        return lines

    def _publish_active(self, site: str, chair: str) -> None:
        """Retained set of a chair's active alarms, for late subscribers."""
        try:
            active = self.alarm_stage.active(site, chair)
        except Exception:
            self.metrics.inc("processing_errors", stage="alarm_active")
            log.exception("alarm stage active() failed for %s/%s", site, chair)
            return
        payload = {"v": 1, "t": self.clock.now_ms(), "active": active}
        self._publish(
            contract.topic("alarms_active", site, chair),
            json.dumps(payload, separators=(",", ":")),
            retain=True,
        )

    def _publish(self, topic: str, payload: str, *, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: QoS 1 messages are queued by paho and sent on reconnect
            self.metrics.inc("publish_errors")
            log.error("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def _note_reject(self, rej: Rejected) -> None:
        self.metrics.inc("rejected", reason=rej.reason)
        window = self._rejects.get(rej.reason)
        if window is None:
            window = _RejectWindow(0, rej.topic, rej.detail)
            self._rejects[rej.reason] = window
        window.n += 1
        window.topic, window.detail = rej.topic, rej.detail
        if window.n <= _REJECT_LOG_PER_WINDOW:
            log.warning("rejected %s on %s: %s", rej.reason, rej.topic, rej.detail)

    def _flush_rejects(self) -> None:
        if not self._rejects:
            return
        now = self.clock.now_ms()
        lines = []
        for reason, window in sorted(self._rejects.items()):
            if window.n > _REJECT_LOG_PER_WINDOW:
                log.warning(
                    "%d further %s rejects not logged", window.n - _REJECT_LOG_PER_WINDOW, reason
                )
            lines.append(reject_line(reason, window.n, window.topic, window.detail, now))
        self._rejects.clear()
        self._store_lines(lines, None)

    # ---- store buffer and writer --------------------------------------------

    def _store_lines(self, lines: Sequence[str], ack: _Ack | None) -> None:
        if not lines:
            self._ack(ack)
            return
        dropped: list[_Entry] = []
        with self._store_cond:
            for index, line in enumerate(lines):
                last = index == len(lines) - 1
                self._store.append(_Entry(line, ack if last else None))
            if ack is not None:
                self._acks_waiting += 1
            while len(self._store) > self.config.store_max_lines:
                entry = self._store.popleft()
                if entry.ack is not None:
                    self._acks_waiting -= 1
                dropped.append(entry)
            depth = len(self._store)
            if depth >= self.config.batch_max or self._acks_waiting >= self.config.ack_window:
                self._store_cond.notify_all()
        self.metrics.set("store_depth", depth)
        if dropped:
            self.metrics.inc("queue_dropped", len(dropped), queue="store")
            log.error("store buffer full: dropped %d oldest points", len(dropped))
            for entry in dropped:
                self._ack(entry.ack)

    def _writer_loop(self) -> None:
        backoff = self.config.retry_min_s
        retry_at = 0.0
        stop_left = -1
        while True:
            replay_due = not self.spool.empty and time.monotonic() >= retry_at
            with self._store_cond:
                if not self._stop_writer.is_set() and not replay_due:
                    self._store_cond.wait_for(
                        lambda: len(self._store) >= self.config.batch_max
                        or self._acks_waiting >= self.config.ack_window
                        or self._stop_writer.is_set(),
                        timeout=self.config.batch_interval_s,
                    )
                stopping = self._stop_writer.is_set()
                batch = list(itertools.islice(self._store, self.config.batch_max))
                self._writing = bool(batch) or not self.spool.empty
            try:
                influx_up = time.monotonic() >= retry_at
                if batch:
                    if self.spool.empty and influx_up:
                        if self._write_lines_safely([e.line for e in batch]):
                            self._release(batch)
                            backoff, retry_at = self.config.retry_min_s, 0.0
                        else:
                            retry_at, backoff = self._backoff(backoff)
                            self._spool_batch(batch)
                    else:
                        self._spool_batch(batch)
                if stopping:
                    pass  # the spool is replayed after the next start
                elif not self.spool.empty and time.monotonic() >= retry_at:
                    if self._replay_spool():
                        backoff, retry_at = self.config.retry_min_s, 0.0
                    else:
                        retry_at, backoff = self._backoff(backoff)
                elif not batch and self.spool.empty:
                    self._maybe_probe()
            except Exception:
                self.metrics.inc("processing_errors", stage="writer")
                log.exception("unexpected error in the writer")
                retry_at, backoff = self._backoff(backoff)
            finally:
                with self._store_cond:
                    self._writing = False
            if stopping:
                with self._store_cond:
                    left = len(self._store)
                if left == 0 or left == stop_left:
                    return  # done, or the spool cannot take it (disk error)
                stop_left = left
                # more to write or spool; stop() bounds this with its join deadline
                # (points still in memory are unacknowledged: the broker redelivers them)

    def _backoff(self, backoff: float) -> tuple[float, float]:
        """(retry_at, next backoff)."""
        return time.monotonic() + backoff, min(backoff * 2, self.config.retry_max_s)

    def _release(self, batch: list[_Entry]) -> None:
        """``batch`` (the head of the store) is durable: drop it from memory and ack."""
        with self._store_cond:
            for _ in batch:
                if self._store.popleft().ack is not None:
                    self._acks_waiting -= 1
            depth = len(self._store)
        self.metrics.set("store_depth", depth)
        for entry in batch:
            self._ack(entry.ack)

    def _spool_batch(self, batch: list[_Entry]) -> None:
        """Append ``batch`` to the disk spool, then ack; a full spool drops it (counted)."""
        lines = [entry.line for entry in batch]
        try:
            with self._spool_lock:
                stored = self.spool.append(lines)
        except SpoolError as exc:
            # keep the batch (unacknowledged) in memory and try again later
            self.metrics.inc("spool_errors")
            log.error("cannot spool %d points: %s", len(lines), exc)
            return
        if stored:
            self.metrics.inc("spooled", len(lines))
        else:
            self.metrics.inc("spool_dropped", len(lines))
            log.error(
                "spool full (%d bytes): dropped %d points (%d dropped in all)",
                self.spool.total_bytes, len(lines), self.spool.dropped_points,
            )
            if not self._spool_full:
                self._set_spool_full(True)
        self._update_spool_gauges()
        self._release(batch)

    def _set_spool_full(self, full: bool) -> None:
        """Raise (or, once the spool is half empty, clear) the technical alarm ``gateway_spool_full``."""
        self._spool_full = full
        now = self.clock.now_ms()
        text = (
            "gateway spool full: readings are being dropped"
            if full
            else "gateway spool has room again"
        )
        event = AlarmEvent(
            id=f"gw-spool-{'full' if full else 'ok'}-{now}",
            site=self.config.site,
            chair="gateway",
            alarm=SPOOL_FULL_ALARM,
            priority="high",
            kind="technical",
            event="raised" if full else "cleared",
            t=now,
            text=text,
            value=float(self.spool.total_bytes),
            limit=float(self.config.spool_max_bytes),
        )
        self.metrics.inc("alarm_events", event=event.event, priority=event.priority)
        log.error("technical alarm %s %s: %s", SPOOL_FULL_ALARM, event.event, text)
        self._publish(
            contract.topic("alarms", event.site, event.chair),
            json.dumps(event.to_payload(), separators=(",", ":")),
            retain=False,
        )
        try:
            line = alarm_event_line(event)
        except ValueError as exc:
            log.error("cannot store alarm event %s: %s", event.id, exc)
            return
        self._store_lines([line], None)

    def _replay_spool(self) -> bool:
        """Write the oldest spooled points; True when they are stored (or the spool is empty)."""
        try:
            with self._spool_lock:
                batch = self.spool.read(self.config.batch_max)
        except (SpoolError, OSError) as exc:
            self.metrics.inc("spool_errors")
            log.error("cannot read the spool: %s", exc)
            return False
        if batch is None:
            return True
        if not self._write_lines_safely(batch.lines):
            return False
        with self._spool_lock:
            self.spool.commit(batch)
        self.metrics.inc("points_replayed", len(batch.lines))
        self._update_spool_gauges()
        if self._spool_full and self.spool.total_bytes <= self.config.spool_max_bytes // 2:
            self._set_spool_full(False)  # hysteresis: no flapping near the bound
        if self.spool.empty:
            log.info("spool replayed: InfluxDB is up to date")
        return True

    def _update_spool_gauges(self) -> None:
        self.metrics.set("spool_depth", self.spool.pending_points)
        self.metrics.set("spool_bytes", self.spool.total_bytes)

    def _write_lines_safely(self, lines: list[str]) -> bool:
        """Write ``lines`` (bisecting malformed batches); False if InfluxDB is unavailable."""
        try:
            self._write_lines(lines, depth=0)
        except InfluxUnavailable as exc:
            self.metrics.inc("write_errors", kind="unavailable")
            self._set_influx(False)
            log.warning("InfluxDB unavailable (%d points go to the spool): %s", len(lines), exc)
            return False
        self._set_influx(True)
        self._last_write = time.monotonic()
        return True

    def _set_influx(self, ok: bool) -> None:
        self._influx_ok = ok
        self._last_contact = time.monotonic()
        self.metrics.set("influx_reachable", 1 if ok else 0)

    def _write_lines(self, lines: list[str], depth: int) -> None:
        """Write ``lines``; isolate malformed ones by bisection (depth ≤ log2 of the batch).

        Raises :class:`InfluxUnavailable` to have the whole batch spooled; a
        replay rewrites what was already stored, which is idempotent.
        """
        started = time.monotonic()
        try:
            if not self._db_ready:
                self.influx.ensure_database()
                self._db_ready = True
            self.influx.write(lines)
        except InfluxRejected as exc:
            if exc.status == 404 and depth == 0:
                self._db_ready = False
                self.metrics.inc("write_errors", kind="no_database")
                log.warning("database %s missing; creating it", self.config.database)
                try:
                    self.influx.ensure_database()
                    self._db_ready = True
                    self.influx.write(lines)
                except InfluxRejected as again:
                    if again.status not in MALFORMED_STATUSES:
                        raise InfluxUnavailable(f"after CREATE DATABASE: {again}") from again
                    exc = again
                else:
                    self._count_written(lines, started)
                    return
            if exc.status not in MALFORMED_STATUSES:
                # authorisation, missing database: not the lines' fault; keep them
                self.metrics.inc("write_errors", kind=f"http_{exc.status}")
                raise InfluxUnavailable(str(exc)) from exc
            self.metrics.inc("write_errors", kind="rejected")
            if len(lines) == 1:
                self._dead_letter(lines[0], str(exc))
                return
            half = len(lines) // 2
            self._write_lines(lines[:half], depth + 1)
            self._write_lines(lines[half:], depth + 1)
            return
        self._count_written(lines, started)

    def _count_written(self, lines: list[str], started: float) -> None:
        self.metrics.inc("points_written", len(lines))
        self.metrics.observe("write_seconds", time.monotonic() - started)

    def _dead_letter(self, line: str, reason: str) -> None:
        self.metrics.inc("deadletters")
        log.error("InfluxDB rejected a point (dead-lettered): %s: %.200s", reason, line)
        self.deadletters.add(line, reason, self.clock.now_ms())

    def _maybe_probe(self) -> None:
        """While idle, check InfluxDB now and then so /health stays truthful."""
        if time.monotonic() - self._last_contact < self.config.probe_interval_s:
            return
        try:
            self.influx.ensure_database()
        except InfluxUnavailable:
            self._set_influx(False)
            return
        except InfluxRejected as exc:
            log.warning("InfluxDB probe answered %s", exc)
            self._set_influx(False)
            return
        self._db_ready = True
        self._set_influx(True)

    # ---- health and metrics endpoint ---------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) as served on /health."""
        now = time.monotonic()
        mqtt_connected = self.metrics.get("mqtt_connected") == 1
        influx_reachable = self._influx_ok is not False
        with self._store_cond:
            waiting = len(self._store)
        waiting += self.spool.pending_points
        age = None if self._last_write is None else round(now - self._last_write, 3)
        since = self._last_write if self._last_write is not None else self._started
        stale = waiting > 0 and now - since > self.config.health_write_age_s
        publisher = self.metrics.get("mqtt_publisher_connected") == 1
        healthy = (mqtt_connected and publisher and influx_reachable and not self._spool_full
                   and not stale)
        details: dict[str, Any] = {
            "status": "ok" if healthy else "degraded",
            "mqtt_connected": mqtt_connected,
            "mqtt_subscribed": self._subscribed.is_set(),
            "mqtt_publisher_connected": publisher,
            "influx_reachable": influx_reachable,
            "spool_depth": self.spool.pending_points,
            "spool_bytes": self.spool.total_bytes,
            "spool_full": self._spool_full,
            "spool_dropped": self.spool.dropped_points,
            "store_depth": waiting - self.spool.pending_points,
            "last_write_age_s": age,
            "deadletters": self.deadletters.written,
        }
        return healthy, details

    def _start_metrics_server(self, port: int) -> None:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    status, ctype = 200, "text/plain; version=0.0.4"
                    body = gateway.metrics.render().encode()
                elif self.path == "/health":
                    healthy, details = gateway.health()
                    status, ctype = (200 if healthy else 503), "application/json"
                    body = json.dumps(details, sort_keys=True).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._http.serve_forever, name="gw-metrics", daemon=True).start()


# ---- command line -----------------------------------------------------------


def default_alarm_stage(profile_path: str | Path | None = None) -> AlarmStage:
    """The clinical alarm engine with the adult profile (or the given file)."""
    from chairside.alarms.engine import AlarmEngine
    from chairside.alarms.profile import load_profile

    return AlarmEngine(load_profile(Path(profile_path) if profile_path else None))


_CONTROL_TAILS = {"alarms/ack": "alarm_ack", "limits/set": "limits_set", "standby": "chair_standby",
                  "drill/end": "drill_end"}


def _control_of(topic: str, payload: bytes, rx_ms: int, ack: _Ack | None) -> _Control | None:
    """Recognise the staff topics .../{site}/{chair}/alarms/ack, limits/set,
    standby and drill/end (contract.json topics)."""
    parts = topic.split("/")
    if len(parts) not in (5, 6) or "/".join(parts[:2]) != contract.topic_root():
        return None
    kind = _CONTROL_TAILS.get("/".join(parts[4:]))
    if kind is None:
        return None
    return _Control(kind, parts[2], parts[3], payload, rx_ms, ack)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-host", default="127.0.0.1", help="broker host")
    parser.add_argument("--mqtt-port", type=int, default=1883, help="broker port")
    parser.add_argument("--client-id", default="chairside-gateway", help="stable MQTT client id")
    parser.add_argument("--influx-url", default="http://127.0.0.1:8086", help="InfluxDB 1.x URL")
    parser.add_argument("--database", default=contract.influx_database(), help="database")
    parser.add_argument(
        "--state-dir", type=Path, default=None,
        help="folder for frozen boot times, the disk spool and dead letters (must persist)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve /metrics and /health on 127.0.0.1:PORT"
    )
    parser.add_argument(
        "--spool-max-mb", type=float, default=256.0, help="bound of the disk spool, MiB"
    )
    parser.add_argument(
        "--site", default="gateway", help="site id for the gateway's own technical alarm events"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="alarm profile JSON (default: the adult profile)"
    )
    mqtt_auth.add_arguments(parser)
    # The top-level parser may already define --log-level; don't override its value.
    parser.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, ...")


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        client_id=args.client_id,
        influx_url=args.influx_url,
        database=args.database,
        state_dir=args.state_dir,
        metrics_port=args.metrics_port,
        spool_max_bytes=int(args.spool_max_mb * 1024 * 1024),
        site=args.site,
    )


def run(args: argparse.Namespace, alarm_stage: AlarmStage | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code."""
    level = str(getattr(args, "log_level", "INFO")).upper()
    logging.getLogger().setLevel(getattr(logging, level, logging.INFO))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    if alarm_stage is None:
        alarm_stage = default_alarm_stage(getattr(args, "profile", None))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            log.debug("cannot install handler for signal %d", sig)
    gateway = Gateway(config, alarm_stage)
    try:
        gateway.use_broker_login(getattr(args, "mqtt_credentials", None), getattr(args, "mqtt_ca", None))
    except mqtt_auth.CredentialsError as exc:
        log.error("%s", exc)
        return 2
    gateway.start()
    log.info(
        "gateway running: mqtt %s:%d → %s/%s",
        config.mqtt_host,
        config.mqtt_port,
        config.influx_url,
        config.database,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        gateway.stop()
    return 0
