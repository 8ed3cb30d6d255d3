"""The gateway service: wires ingest → alarms → store, and staff controls.

Box messages arrive on the ingest session (:mod:`chairside.ingest.session`,
a persistent MQTT subscription) and are processed on its thread, one at a
time, start to finish:

1. validate (:mod:`chairside.ingest.validate`; refusals go to :mod:`.ingest.rejects`),
2. time-stamp (:mod:`chairside.ingest.timebase`),
3. drop duplicates (:mod:`chairside.ingest.dedup`),
4. evaluate alarms (:mod:`chairside.alarms`) and publish alarm events,
5. hand the points to the writer (:mod:`chairside.store.writer`), which
   acknowledges the MQTT message only once its points are durable (and a
   kept reading is then confirmed to its box, :mod:`chairside.store.confirm`).

Staff messages (acknowledge, standby, limits, drill end) take the same path
into :mod:`chairside.staff.controls`.  A timer thread ticks the alarm engine
(delays, staleness, renotify) and flushes the reject counts; it shares the
engine with the ingest thread under one lock.  While it processes, the ingest
thread does not read, so a burst waits in the broker (backpressure) and no
queue sits between receiving and alarming.  Alarms never wait for InfluxDB:
the writer spools to disk while it is away.

Everything the gateway publishes (alarm events, time, staff answers) goes
through a separate paho client, except the stored watermarks: those go out
on the ingest connection, batched with its PUBACKs (``store/confirm.py``).  ``/health`` and ``/metrics`` are served by
:mod:`chairside.health`.

Why this module is longer than ~500 lines: it is only the wiring of the stages and their threads and
lifecycle; each stage lives in its own package (``ingest``, ``alarms``,
``store``, ``staff``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chairside import contract, mqtt_auth
from chairside.alarms import state_file
from chairside.alarms.engine import AlarmEngine
from chairside.config import Clock, GatewayConfig, SystemClock
from chairside.health import HealthServer, describe_gateway_metrics, gateway_health
from chairside.ingest.clockwatch import CLOCK_WRONG_ALARM, ClockWatch
from chairside.ingest.dedup import Duplicates, SkewLog
from chairside.ingest.rejects import RejectLog
from chairside.ingest.session import IngestSession, SessionConfig
from chairside.ingest.timebase import Stamp, Timebase
from chairside.ingest.validate import Accepted, Rejected, validate
from chairside.metrics import Metrics
from chairside.model import AlarmEvent, AlarmStage, Reading
from chairside.outbound import Outbound
from chairside.staff import controls
from chairside.staff.controls import StaffControls
from chairside.store.confirm import WATERMARKS_FILE, Ack, Confirmations, Receipt, kept_of
from chairside.store.deadletter import DeadLetters
from chairside.store.influx import InfluxWriter
from chairside.store.influx import read_credentials as read_influx_credentials
from chairside.store.points import reading_line
from chairside.store.spool import PointSpool
from chairside.store.watermark import Watermarks
from chairside.store.writer import Writer, WriterConfig

log = logging.getLogger("chairside.service")

SUBSCRIBED_KINDS = ("vitals", "nibp", "status", "resp")
TIME_SYNC_INTERVAL_MS = 60_000
SPOOL_FULL_ALARM = "gateway_spool_full"
ALARM_STATE_SAVE_S = 5.0
"""how often the alarm state is saved when readings changed it without an event
(pending delays, SatSeconds; a pending delay resumes after a restart only if it was
observed at most 10 s before, docs/alarms.md); events and latches save it at the next tick"""


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
        describe_gateway_metrics(self.metrics)
        self.timebase = Timebase(config.state_dir, skew_limit_ms=config.skew_limit_ms)
        self.influx = InfluxWriter(
            config.influx_url, config.database, config.influx_timeout_s,
            credentials=(read_influx_credentials(config.influx_credentials)
                         if config.influx_credentials is not None else None))
        self._lock = threading.Lock()  # the alarm stage and per-chair state: ingest vs timer
        self._processing = 0  # messages inside _on_message (for wait_idle)
        self._time_sent: dict[tuple[str, str], int] = {}
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
        self.writer: Writer[Receipt] = Writer(
            WriterConfig.of_gateway(config), self.influx, self.spool, self.deadletters, self.metrics,
            on_durable=self._durable, now_ms=self.clock.now_ms, on_spool_full=self._spool_full_alarm,
        )
        self.watermarks = Watermarks(min_interval_ms=config.watermark_interval_ms)
        self._started = time.monotonic()
        self._stop_timer = threading.Event()
        self._subscribed = threading.Event()
        self.duplicates = Duplicates()
        self._skew = SkewLog()
        self._rejects = RejectLog(self.metrics)
        self._clocks = ClockWatch()
        self._sessions_lost_counted = 0
        self._timer: threading.Thread | None = None
        self._http: HealthServer | None = None
        # publishing only (alarm events, time, staff answers)
        self.outbound = Outbound(f"{config.client_id}-pub", self.metrics, alarm_stage.active,
                                 self.clock.now_ms)
        self.client = self.outbound.client
        self.confirmations = Confirmations(
            self.watermarks, self._send_watermark, self.metrics,
            storage_dir / WATERMARKS_FILE if config.state_dir is not None else None)
        self.engine = alarm_stage if isinstance(alarm_stage, AlarmEngine) else None
        self._alarm_state_path = (config.state_dir / state_file.FILE_NAME
                                  if config.state_dir is not None else None)
        self._engine_dirty = False
        self._save_now = False  # an event or a latch: save at the next tick
        self._engine_saved_at = 0.0
        self._state_writer = state_file.StateWriter(self._alarm_state_path, self.metrics)
        self.controls = (
            StaffControls(self.engine, self.metrics, publish=self.outbound.publish,
                          emit=self.outbound.events, publish_active=self.outbound.active_set,
                          state_dir=config.state_dir)
            if self.engine is not None else None
        )
        self.ingest = IngestSession(
            SessionConfig(
                config.mqtt_host, config.mqtt_port, config.client_id,
                tuple(contract.subscription(kind) for kind in SUBSCRIBED_KINDS + controls.KINDS),
                keepalive_s=config.keepalive_s, auto_ack=not config.manual_ack,
            ),
            self._on_message, self._on_ingest_state,
        )

    # ---- lifecycle ---------------------------------------------------------

    def use_broker_login(self, credentials: Path | None, ca_file: Path | None) -> None:
        """Log in with a provisioned credentials file and/or verify the broker
        against the clinic CA (TLS), on both connections; before ``start()``.

        One account per connection (the shipped broker makes the user name the
        client id): the ingest session logs in with the file's main account
        (``chairside-gateway``, also its client id), the publisher with its
        ``publisher`` login (``chairside-gateway-pub``)."""
        mqtt_auth.apply(self.client, credentials, ca_file, login="publisher")
        user, password = (mqtt_auth.read_credentials(credentials) if credentials is not None
                          else (None, None))
        self.ingest.config = dataclasses.replace(
            self.ingest.config, user=user, password=password,
            client_id=user if user is not None else self.ingest.config.client_id,
            tls=mqtt_auth.tls_context(ca_file) if ca_file is not None else None)

    def start(self) -> None:
        """Start the worker threads and connect (the broker may be down: both retry)."""
        if self._timer is not None:
            return
        self._started = time.monotonic()
        if self.controls is not None:  # before the first reading is evaluated
            self.writer.submit(self.controls.restore_overrides(self.clock.now_ms()), None)
        self._restore_alarm_state()
        self.confirmations.restore(self.clock.now_ms())
        self._stop_timer.clear()
        self._timer = threading.Thread(target=self._timer_loop, name="gw-timer", daemon=True)
        self._timer.start()
        self.writer.start()
        if self.config.metrics_port is not None:
            self._http = HealthServer(self.config.metrics_port, self.health, self.metrics.render)
        self.outbound.start(self.config.mqtt_host, self.config.mqtt_port, self.config.keepalive_s)
        self.ingest.start()

    def stop(self) -> None:
        """Stop reading, flush what InfluxDB accepts within the deadline, send
        the acknowledgements that became due, disconnect."""
        deadline = time.monotonic() + self.config.stop_timeout_s
        self.ingest.pause_reading(max(0.0, deadline - time.monotonic()))
        self._stop_timer.set()
        if self._timer is not None:
            self._timer.join(max(0.0, deadline - time.monotonic()))
        self.timebase.flush()
        with self._lock:
            self._save_alarm_state()
        left = self.writer.stop(max(0.0, deadline - time.monotonic()) + 1.0)
        self.confirmations.publish_due(self.clock.now_ms())
        self.confirmations.save()
        if left:
            self.metrics.inc("queue_dropped", left, queue="store_at_stop")
            log.warning("%d points neither written nor spooled at stop (unacked: redelivered)", left)
        self.ingest.stop()
        self.outbound.stop()
        self.influx.close()
        if self._http is not None:
            self._http.close()
            self._http = None
        self._timer = None
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
            if self._processing == 0 and self.writer.idle(spool_too=spool_too):
                return True
            time.sleep(0.02)
        return False

    def _send_watermark(self, topic: str, payload: bytes) -> bool:
        """Stored watermarks go out on the ingest connection (its account may
        write under the site; provisioning), batched with its PUBACKs."""
        return self.ingest.send_qos0(topic, payload, retain=True)

    # ---- the ingest session's callbacks (its thread: never raise) ------------

    def _on_ingest_state(self, state: str) -> None:
        self.metrics.set("mqtt_connected", 1 if state in ("subscribing", "receiving") else 0)
        lost = self.ingest.sessions_lost - self._sessions_lost_counted
        if lost > 0:
            self._sessions_lost_counted += lost
            self.metrics.inc("mqtt_sessions_lost", lost)
        if state == "receiving":
            self._subscribed.set()
        else:
            self._subscribed.clear()

    def _on_message(self, topic: str, payload: bytes, qos: int, pid: int, generation: int) -> None:
        """One message, start to finish, on the ingest session's thread."""
        ack: Ack | None = None
        self._processing += 1
        try:
            rx_ms = self.clock.now_ms()
            self.metrics.inc("messages_in")
            if self.config.manual_ack and qos > 0:
                ack = Ack(pid, generation)
            control = controls.control_of(topic, payload, Receipt(ack) if ack is not None else None)
            if control is not None:
                with self._lock:
                    self._process_control(control)
                return
            result = validate(topic, payload, strict=self.config.strict_fields)
            with self._lock:
                self._process(result, rx_ms, ack)
        except Exception:
            self.metrics.inc("processing_errors", stage="process")
            log.exception("unexpected error processing a message on %.200r", topic)
            self._ack(ack)
        finally:
            self._processing -= 1

    def _ack(self, ack: Ack | None) -> None:
        """PUBACK (a message from an earlier connection is skipped: the broker
        redelivers it on the current one)."""
        if ack is not None:
            self.ingest.ack(ack.generation, ack.pid)

    def _durable(self, receipt: Receipt) -> None:
        """The writer's report: the message's points are in InfluxDB or the disk spool."""
        if receipt.kept is not None:
            self.confirmations.durable(receipt.kept, self.clock.now_ms())
        self._ack(receipt.ack)

    # ---- processing (under self._lock) -----------------------------------------

    def _timer_loop(self) -> None:
        next_rejects = time.monotonic() + self.config.reject_interval_s
        while not self._stop_timer.wait(self.config.tick_interval_s):
            try:
                with self._lock:
                    snapshot = self._tick()
                    if time.monotonic() >= next_rejects:
                        next_rejects = time.monotonic() + self.config.reject_interval_s
                        self.writer.submit(self._rejects.flush(self.clock.now_ms()), None)
                # outside the ingest lock: none of these holds up the next message
                self.timebase.flush()  # the timebase has a lock of its own
                self.confirmations.publish_due(self.clock.now_ms())
                if snapshot is not None:
                    self._state_writer.write(snapshot)
            except Exception:
                self.metrics.inc("processing_errors", stage="timer")
                log.exception("unexpected error in the timer")
        with self._lock:
            self.writer.submit(self._rejects.flush(self.clock.now_ms()), None)

    def _process(self, result: Accepted | Rejected, rx_ms: int, ack: Ack | None) -> None:
        if isinstance(result, Rejected):
            self._rejects.note(result)
            self._ack(ack)
            return
        if result.ignored:
            self.metrics.inc("unknown_fields_ignored")
            log.info("ignored unknown fields %r on %r", result.ignored, result.topic)
        receipt = Receipt(ack, kept_of(result.site, result.chair, result.fields))
        if self.duplicates.seen_before(result.site, result.chair, result.fields.get("boot"),
                                       result.fields.get("seq")):
            # the first copy was evaluated and is stored, or will be before this
            # marker is reported durable (a kept reading's box is then confirmed)
            self.metrics.inc("duplicates")
            self.writer.submit_marker(receipt)
            return
        stamp = self.timebase.stamp(
            result.site, result.chair, result.fields, rx_ms, historical=result.historical
        )
        if stamp.skew_ms is not None:
            self.metrics.inc("clock_skew")
            self._skew.note(result.site, result.chair, stamp.skew_ms, rx_ms)
        if stamp.time_estimated:
            self.metrics.inc("time_estimated")
        lines: list[str] = self._watch_clock(result.site, result.chair, stamp, result.historical)
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
        line = reading_line(reading)
        if line is not None:
            lines.append(line)
        if result.kind == "resp":
            log.info("box %s/%s answered %s", result.site, result.chair, dict(result.fields))
        elif result.last_will:
            log.warning("box %s/%s went offline (last will)", result.site, result.chair)
        if not reading.historical and reading.kind in ("vitals", "status"):
            self._maybe_send_time(reading, stamp)
        try:
            events = self.alarm_stage.on_reading(self._for_alarms(reading), self.clock.now_ms())
        except Exception:
            self.metrics.inc("processing_errors", stage="alarm_stage")
            log.exception("alarm stage failed on %s", result.topic)
            events = []
        self._engine_dirty = True
        lines.extend(self._announce(events))
        self.writer.submit(lines, receipt)

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

    def _watch_clock(self, site: str, chair: str, stamp: Stamp, historical: bool) -> list[str]:
        """Raise or clear the chair's ``clock_wrong`` technical alarm; its points."""
        change = self._clocks.note(site, chair, stamp, historical)
        if change is None:
            return []
        raised = change == "raised"
        text = (f"box clock off by {stamp.skew_ms} ms: readings stored at the gateway's estimate"
                if raised else "box clock believed again")
        return self.outbound.technical_alarm(
            site=site, chair=chair, alarm=CLOCK_WRONG_ALARM, raised=raised, priority="low", text=text,
            value=float(stamp.skew_ms or 0), limit=float(self.config.skew_limit_ms))

    def _maybe_send_time(self, reading: Reading, stamp: Stamp) -> None:
        """Send the box the wall time when its clock is not synchronised (no NTP
        on the clinic network) or is not believed (``clock_wrong``: in the future,
        or jumped during the boot); at most once a minute per chair.

        The command echoes the ``boot`` and ``up`` of the message it answers:
        the box applies it only within seconds of that uptime, so a command the
        broker delivers late (queued during an outage) can never set an old time."""
        if reading.fields.get("sync") != 0 and not stamp.clock_wrong:
            return
        key = (reading.site, reading.chair)
        now = self.clock.now_ms()
        last = self._time_sent.get(key)
        if last is not None and now - last < TIME_SYNC_INTERVAL_MS:
            return
        self._time_sent[key] = now
        self.metrics.inc("time_commands")
        command = {"v": 1, "cmd": "time", "id": f"time-{now}", "t": now,
                   "boot": reading.fields.get("boot"), "up": reading.fields.get("up")}
        self.outbound.publish_json(contract.topic("cmd", reading.site, reading.chair), command)

    def _process_control(self, item: controls.Control[Receipt]) -> None:
        """Apply a staff message and answer it on the chair's staff/result topic."""
        if self.controls is None:
            self.metrics.inc("control_rejected", reason="no_engine")
            self._ack(item.token.ack if item.token is not None else None)
            return
        lines = self.controls.handle(item, self.clock.now_ms())
        self._engine_dirty = True
        lines.extend(self._announce([]))
        self.writer.submit(lines, item.token)

    def _tick(self) -> dict[str, Any] | None:
        """Tick the alarm stage; the alarm state to save, when a periodic save is due."""
        try:
            events = self.alarm_stage.tick(self.clock.now_ms())
        except Exception:
            self.metrics.inc("processing_errors", stage="alarm_tick")
            log.exception("alarm stage tick failed")
            return None
        lines = self._announce(events)
        if lines:
            self.writer.submit(lines, None)
        if self.engine is None or not self._engine_dirty or (
                not self._save_now and time.monotonic() - self._engine_saved_at < ALARM_STATE_SAVE_S):
            return None
        self._save_now = False
        self._engine_saved_at = time.monotonic()
        self._engine_dirty = False
        return self._state_writer.take(self.engine)

    def _announce(self, events: Sequence[AlarmEvent]) -> list[str]:
        """Publish the events and the active sets of chairs whose set changed
        without one (a latch); the events' points.  The alarm state is saved
        by the next tick (within ``tick_interval_s``), outside the ingest lock:
        a crash before that redelivers the unacknowledged reading, which
        raises the same event id again (the pager drops the repeat)."""
        changed = self.engine.changed_chairs() if self.engine is not None else set()
        if not events and not changed:
            return []  # the common case: nothing to announce
        self._engine_dirty = True
        self._save_now = True
        lines = self.outbound.events(events)
        evented = {(e.site, e.chair) for e in events}
        for site, chair in sorted(changed - evented):
            self.outbound.active_set(site, chair)
        return lines

    def _save_alarm_state(self) -> None:
        self._engine_saved_at = time.monotonic()
        self._engine_dirty = False
        if self.engine is not None:
            self._state_writer.write(self._state_writer.take(self.engine))

    def _restore_alarm_state(self) -> None:
        """Active, latched and acknowledged alarms, pending delays and standby
        as they were before a restart (docs/alarms.md, "Restarts")."""
        if self.engine is None or self._alarm_state_path is None:
            return
        with self._lock:
            events = state_file.load(self.engine, self._alarm_state_path, self.clock.now_ms())
            skipped = self.engine.restore_skipped
            if skipped:
                self.metrics.inc("alarm_state_skipped", skipped)
            # every restored chair is among the engine's changed chairs: its
            # retained active set is republished as restored
            lines = self._announce(events)
        self.writer.submit(lines, None)

    def _spool_full_alarm(self, full: bool) -> None:
        """Raise (or, once the spool is half empty, clear) the technical alarm ``gateway_spool_full``."""
        text = "gateway spool full: readings are being dropped" if full else "gateway spool has room again"
        self.writer.submit(self.outbound.technical_alarm(
            site=self.config.site, alarm=SPOOL_FULL_ALARM, raised=full, text=text,
            value=float(self.spool.total_bytes), limit=float(self.config.spool_max_bytes)), None)

    # ---- health -------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) as served on /health."""
        return gateway_health(self.writer, self.spool, self.deadletters, self.metrics,
                              subscribed=self._subscribed.is_set(), publisher=self.outbound.connected)


# ---- command line -----------------------------------------------------------


def default_alarm_stage(profile_path: str | Path | None = None) -> AlarmStage:
    """The clinical alarm engine with the adult profile (or the given file)."""
    from chairside.alarms.profile import load_profile

    return AlarmEngine(load_profile(Path(profile_path) if profile_path else None))
