"""The writer: lines in, durable out (InfluxDB, or the disk spool while it is away).

The ingest and timer threads hand line protocol to :meth:`Writer.submit`
together with an opaque *token* (the MQTT acknowledgement of the message the
lines came from, and what the gateway reports as stored).  The writer thread
takes the buffer in batches (``batch_max`` lines, or every
``batch_interval_s``, or as soon as ``ack_window`` tokens wait) and makes each
batch durable:

* written to InfluxDB; or
* while InfluxDB is unreachable (or the spool still holds older points),
  appended to the on-disk :class:`~chairside.store.spool.PointSpool`, which is
  replayed oldest first when InfluxDB is back (new batches queue behind it, so
  order is kept).

Only then is ``on_durable(token)`` called for the batch's tokens, so a crash
makes the broker redeliver instead of losing.  Writes are idempotent (same
series and timestamp ⇒ the same point), so a redelivery or a replay after a
partial write stores nothing twice.

One bad point can never block the rest: a batch that fails for any reason
other than InfluxDB being unavailable (InfluxDB answers 400, a line that
cannot be encoded, any unexpected exception) is bisected down to the failing
line, which goes to the dead-letter file with its reason; the rest is stored.

A write InfluxDB refuses with 401 or 403 (wrong or missing credentials, a
user without WRITE on the database) is not the lines' fault either: it is
treated like an outage (the batch goes to the spool, nothing is lost or
dead-lettered) and reported as such: an ERROR line naming the user and the
database, ``influx_write_refused`` on /health and /metrics, and
``write_errors{kind="unauthorized"}``.  It clears at the first accepted write
or probe.

While InfluxDB is down the writer probes it every ``probe_down_s`` (an empty
``POST /write``, which checks reachability, credentials, the WRITE grant and
the database), so writes resume within about that long after it returns.  Repeated identical errors
are logged once per ``log_interval_s`` with a count.

Why this module is longer than ~500 lines: one thread owns the buffer, the batches, the spool fallback, the
probe and the durability reports; they share its state (what is in flight,
what is spooled, whether InfluxDB is up) under one lock, so splitting them
would spread one state machine over several files.  The pure parts are
elsewhere (``spool.py``, ``influx.py``, ``deadletter.py``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from chairside.metrics import Metrics
from chairside.store.deadletter import DeadLetters
from chairside.store.influx import InfluxRejected, InfluxUnauthorized, InfluxUnavailable, InfluxWriter
from chairside.store.spool import PointSpool, SpoolError

if TYPE_CHECKING:
    from chairside.config import GatewayConfig

log = logging.getLogger("chairside.store.writer")

MALFORMED_STATUSES = frozenset({400, 413, 422})
"""InfluxDB answers that blame the lines themselves: bisect, dead-letter the bad ones"""

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class WriterConfig:
    database: str = "chairside"
    store_max_lines: int = 200_000
    batch_max: int = 500
    batch_interval_s: float = 0.05
    ack_window: int = 16
    retry_min_s: float = 0.5
    retry_max_s: float = 15.0
    probe_interval_s: float = 5.0
    """while idle, check InfluxDB this often (for /health)"""
    probe_down_s: float = 1.0
    """while InfluxDB is unavailable, check it this often (writes resume within about this)"""
    stall_s: float = 10.0
    """points waiting and no progress (written or spooled) for this long: unhealthy"""
    log_interval_s: float = 10.0
    spool_max_bytes: int = 256 * 1024 * 1024

    @classmethod
    def of_gateway(cls, config: GatewayConfig) -> WriterConfig:
        """The writer's settings from the gateway's."""
        return cls(
            database=config.database, store_max_lines=config.store_max_lines, batch_max=config.batch_max,
            batch_interval_s=config.batch_interval_s, ack_window=config.ack_window,
            retry_min_s=config.retry_min_s, retry_max_s=config.retry_max_s,
            probe_interval_s=config.probe_interval_s, probe_down_s=config.probe_down_s,
            stall_s=config.health_write_age_s, spool_max_bytes=config.spool_max_bytes,
        )


@dataclass(slots=True)
class _Entry(Generic[T]):
    line: str
    token: T | None
    """set on the last line of a message: reported durable once this is"""


class RateLimitedLog:
    """Log a repeated message once per interval, with the count of the ones not logged."""

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float]) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, level: int, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) > 1000:
            self._last.clear()
        more = f" ({last[1]} more like this since the last report)" if last is not None and last[1] else ""
        self._log.log(level, msg + more, *args)
        self._last[key] = (now, 0)


class Writer(Generic[T]):
    """The store buffer and the thread that makes it durable."""

    def __init__(
        self,
        config: WriterConfig,
        influx: InfluxWriter,
        spool: PointSpool,
        deadletters: DeadLetters,
        metrics: Metrics,
        *,
        on_durable: Callable[[T], None],
        now_ms: Callable[[], int],
        on_spool_full: Callable[[bool], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.influx = influx
        self.spool = spool
        self.deadletters = deadletters
        self.metrics = metrics
        self._on_durable = on_durable
        self._now_ms = now_ms
        self._on_spool_full = on_spool_full
        self._monotonic = monotonic
        self._store: deque[_Entry[T]] = deque()
        self._tokens_waiting = 0
        self._cond = threading.Condition()
        self._spool_lock = threading.Lock()
        self._writing = False
        self._db_ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.spool_full = False
        self.influx_ok: bool | None = None
        self.influx_refused: str | None = None
        """InfluxDB's answer to the last refused write or probe (401/403); None once one is accepted"""
        self.last_write: float | None = None
        self._last_contact = 0.0
        self._last_progress = monotonic()
        self._errors = RateLimitedLog(log, config.log_interval_s, monotonic)
        self.update_spool_gauges()

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._last_progress = self._monotonic()
        self._thread = threading.Thread(target=self._loop, name="gw-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> int:
        """Write or spool what is buffered within ``timeout``; returns the number
        of points left in memory (unacknowledged: the broker redelivers them)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            return len(self._store)

    # ---- the buffer -----------------------------------------------------------

    def submit(self, lines: Sequence[str], token: T | None) -> None:
        """Buffer ``lines``; ``token`` is reported durable once all of them are."""
        if not lines:
            if token is not None:
                self._on_durable(token)
            return
        dropped: list[_Entry[T]] = []
        config = self.config
        with self._cond:
            store = self._store
            last = len(lines) - 1
            for index, line in enumerate(lines):
                store.append(_Entry(line, token if index == last else None))
            if token is not None:
                self._tokens_waiting += 1
            while len(store) > config.store_max_lines:
                entry = store.popleft()
                if entry.token is not None:
                    self._tokens_waiting -= 1
                dropped.append(entry)
            depth = len(store)
            if depth >= config.batch_max or self._tokens_waiting >= config.ack_window:
                self._cond.notify_all()
        if depth & 0xFF == 0 or dropped:
            # every 256th line here; the writer thread sets it after each batch it takes
            self.metrics.set("store_depth", depth)
        if dropped:
            self.metrics.inc("queue_dropped", len(dropped), queue="store")
            log.error("store buffer full: dropped %d oldest points", len(dropped))
            for entry in dropped:
                if entry.token is not None:
                    self._on_durable(entry.token)

    def submit_marker(self, token: T) -> None:
        """Report ``token`` durable once everything submitted before it is (a
        message that adds no point, such as a duplicate, must not be reported
        stored before the copy it duplicates)."""
        self.submit(("",), token)

    def waiting(self) -> int:
        """Points in memory, not yet written or spooled."""
        with self._cond:
            return len(self._store)

    def idle(self, *, spool_too: bool) -> bool:
        with self._cond:
            store_idle = not self._store and not self._writing
        return store_idle and (not spool_too or self.spool.empty)

    # ---- the writer thread ------------------------------------------------------

    def _loop(self) -> None:
        config = self.config
        backoff = config.retry_min_s
        retry_at = 0.0
        stop_left = -1
        while True:
            replay_due = not self.spool.empty and self._monotonic() >= retry_at
            with self._cond:
                if not self._stop.is_set() and not replay_due:
                    self._cond.wait_for(
                        lambda: len(self._store) >= config.batch_max
                        or self._tokens_waiting >= config.ack_window
                        or self._stop.is_set(),
                        timeout=config.batch_interval_s,
                    )
                stopping = self._stop.is_set()
                batch = list(itertools.islice(self._store, config.batch_max))
                self._writing = bool(batch) or not self.spool.empty
            try:
                if retry_at and self._monotonic() < retry_at and not stopping:
                    retry_at = self._probe_while_down(retry_at)
                influx_up = self._monotonic() >= retry_at
                if batch:
                    if self.spool.empty and influx_up:
                        if self._write_safely([e.line for e in batch if e.line]):
                            self._release(batch)
                            backoff, retry_at = config.retry_min_s, 0.0
                        else:
                            retry_at, backoff = self._backoff(backoff)
                            self._spool_batch(batch)
                    else:
                        self._spool_batch(batch)
                if stopping:
                    pass  # the spool is replayed after the next start
                elif not self.spool.empty and self._monotonic() >= retry_at:
                    if self._replay_spool():
                        backoff, retry_at = config.retry_min_s, 0.0
                    else:
                        retry_at, backoff = self._backoff(backoff)
                elif not batch and self.spool.empty:
                    self._maybe_probe()
            except Exception as exc:
                self.metrics.inc("processing_errors", stage="writer")
                self._errors(logging.ERROR, f"writer:{type(exc).__name__}",
                             "unexpected error in the writer: %r", exc)
                retry_at, backoff = self._backoff(backoff)
            finally:
                with self._cond:
                    self._writing = False
            if stopping:
                with self._cond:
                    left = len(self._store)
                if left == 0 or left == stop_left:
                    return  # done, or the spool cannot take it (disk error)
                stop_left = left

    def _backoff(self, backoff: float) -> tuple[float, float]:
        """(retry_at, next backoff)."""
        return self._monotonic() + backoff, min(backoff * 2, self.config.retry_max_s)

    def _probe_while_down(self, retry_at: float) -> float:
        """While backing off, ask InfluxDB every ``probe_down_s``; once it answers,
        retry at once instead of waiting out the backoff."""
        if self._monotonic() - self._last_contact < self.config.probe_down_s:
            return retry_at
        if self._probe():
            log.info("InfluxDB answers again: writing")
            return 0.0
        return retry_at

    def _release(self, batch: list[_Entry[T]]) -> None:
        """``batch`` (the head of the store) is durable: drop it from memory and report it."""
        with self._cond:
            for _ in batch:
                if self._store.popleft().token is not None:
                    self._tokens_waiting -= 1
            depth = len(self._store)
        self._last_progress = self._monotonic()
        self.metrics.set("store_depth", depth)
        for entry in batch:
            if entry.token is not None:
                self._on_durable(entry.token)

    def _spool_batch(self, batch: list[_Entry[T]]) -> None:
        """Append ``batch`` to the disk spool, then release it; a full spool drops it (counted)."""
        lines = [entry.line for entry in batch if entry.line]
        try:
            with self._spool_lock:
                stored = self.spool.append(lines) if lines else True
        except (SpoolError, OSError, UnicodeError) as exc:
            # keep the batch (unacknowledged) in memory and try again later
            self.metrics.inc("spool_errors")
            self._errors(logging.ERROR, "spool_append", "cannot spool %d points: %s", len(lines), exc)
            return
        if stored:
            if lines:
                self.metrics.inc("spooled", len(lines))
        else:
            self.metrics.inc("spool_dropped", len(lines))
            self._errors(logging.ERROR, "spool_full", "spool full (%d bytes): dropped %d points (%d dropped in all)",
                         self.spool.total_bytes, len(lines), self.spool.dropped_points)
            if not self.spool_full:
                self.spool_full = True
                self._on_spool_full(True)
        self.update_spool_gauges()
        self._release(batch)

    def _replay_spool(self) -> bool:
        """Write the oldest spooled points; True when they are stored (or the spool is empty)."""
        try:
            with self._spool_lock:
                batch = self.spool.read(self.config.batch_max)
        except (SpoolError, OSError) as exc:
            self.metrics.inc("spool_errors")
            self._errors(logging.ERROR, "spool_read", "cannot read the spool: %s", exc)
            return False
        if batch is None:
            return True
        if not self._write_safely(batch.lines):
            return False
        with self._spool_lock:
            self.spool.commit(batch)
        self._last_progress = self._monotonic()
        self.metrics.inc("points_replayed", len(batch.lines))
        self.update_spool_gauges()
        if self.spool_full and self.spool.total_bytes <= self.config.spool_max_bytes // 2:
            self.spool_full = False  # hysteresis: no flapping near the bound
            self._on_spool_full(False)
        if self.spool.empty:
            log.info("spool replayed: InfluxDB is up to date")
        return True

    def update_spool_gauges(self) -> None:
        self.metrics.set("spool_depth", self.spool.pending_points)
        self.metrics.set("spool_bytes", self.spool.total_bytes)

    # ---- writing to InfluxDB ----------------------------------------------------

    def _write_safely(self, lines: list[str]) -> bool:
        """Write ``lines`` (isolating the ones that fail); False if InfluxDB is unavailable."""
        if not lines:
            return True
        try:
            self._write(lines)
        except InfluxUnauthorized as exc:
            self.metrics.inc("write_errors", kind="unauthorized")
            self._set_influx(True)  # it answered
            self._refused(exc, len(lines))
            return False
        except InfluxUnavailable as exc:
            self.metrics.inc("write_errors", kind="unavailable")
            self._set_influx(False)
            self._errors(logging.WARNING, "influx_unavailable",
                         "InfluxDB unavailable (%d points go to the spool): %s", len(lines), exc)
            return False
        self._set_influx(True)
        self._accepted()
        self.last_write = self._monotonic()
        return True

    def _refused(self, exc: InfluxUnauthorized, points: int) -> None:
        """InfluxDB refused the gateway's login or its write (401/403): say so plainly."""
        self.influx_refused = f"HTTP {exc.status}: {exc.body.strip()}"
        self.metrics.set("influx_write_refused", 1)
        user = self.influx.user
        who = f"user {user!r}" if user is not None else "no user: no InfluxDB credentials file given"
        why = ("wrong or missing credentials" if exc.status == 401
               else f"the user lacks WRITE on database {self.config.database!r}")
        kept = (f"{points} points go to the spool and are kept until it accepts them" if points
                else "readings will go to the spool until it accepts them")
        self._errors(logging.ERROR, "influx_refused",
                     "InfluxDB refused the gateway's writes (%s; %s): %s; %s. Check the gateway's "
                     "--influx-credentials file and the user's grant (docs/install-server.md)",
                     who, why, self.influx_refused, kept)

    def _accepted(self) -> None:
        if self.influx_refused is not None:
            log.info("InfluxDB accepts the gateway's writes again")
            self.influx_refused = None
            self.metrics.set("influx_write_refused", 0)

    def _set_influx(self, ok: bool) -> None:
        if ok and self.influx_ok is False:
            log.info("InfluxDB reachable again")
        self.influx_ok = ok
        self._last_contact = self._monotonic()
        self.metrics.set("influx_reachable", 1 if ok else 0)

    def _write(self, lines: list[str]) -> None:
        """Write ``lines``; isolate failing ones by bisection (depth ≤ log2 of the batch).

        Raises :class:`InfluxUnavailable` to have the whole batch spooled.
        """
        started = self._monotonic()
        try:
            self._write_once(lines)
        except (InfluxUnavailable, InfluxUnauthorized):
            raise
        except InfluxRejected as exc:
            if exc.status not in MALFORMED_STATUSES:
                # authorisation and the like: not the lines' fault; keep them
                self.metrics.inc("write_errors", kind=f"http_{exc.status}")
                raise InfluxUnavailable(str(exc)) from exc
            self.metrics.inc("write_errors", kind="rejected")
            self._isolate(lines, str(exc))
            return
        except Exception as exc:  # a line that cannot be encoded, or anything else about the lines
            self.metrics.inc("write_errors", kind=type(exc).__name__)
            self._isolate(lines, f"{type(exc).__name__}: {exc}")
            return
        self.metrics.inc("points_written", len(lines))
        self.metrics.observe("write_seconds", self._monotonic() - started)

    def _isolate(self, lines: list[str], reason: str) -> None:
        if len(lines) == 1:
            self._dead_letter(lines[0], reason)
            return
        half = len(lines) // 2
        self._write(lines[:half])
        self._write(lines[half:])

    def _write_once(self, lines: list[str]) -> None:
        if not self._db_ready:
            self.influx.ensure_database()  # False: a write-only user (the installer made the database)
            self._db_ready = True
        try:
            self.influx.write(lines)
        except InfluxRejected as exc:
            if exc.status != 404:
                raise
            self._db_ready = False
            self.metrics.inc("write_errors", kind="no_database")
            log.warning("database %s missing; creating it", self.config.database)
            try:
                created = self.influx.ensure_database()
            except InfluxRejected as again:
                raise InfluxUnavailable(f"cannot create the database: {again}") from again
            if not created:
                raise InfluxUnavailable(
                    f"database {self.config.database!r} does not exist and the gateway's InfluxDB user "
                    "may not create it: create it as the admin (`chairside install` does)") from exc
            self._db_ready = True
            try:
                self.influx.write(lines)
            except InfluxRejected as again:
                if again.status not in MALFORMED_STATUSES:
                    raise InfluxUnavailable(f"after CREATE DATABASE: {again}") from again
                raise

    def _dead_letter(self, line: str, reason: str) -> None:
        self.metrics.inc("deadletters")
        self._errors(logging.ERROR, "deadletter", "a point could not be stored (dead-lettered): %s: %.200r",
                     reason, line)
        try:
            self.deadletters.add(line.encode("utf-8", "backslashreplace").decode("utf-8"), reason, self._now_ms())
        except (OSError, ValueError) as exc:
            self.metrics.inc("deadletter_errors")
            self._errors(logging.ERROR, "deadletter_write", "cannot write the dead-letter file: %s", exc)
        self._last_progress = self._monotonic()

    def _probe(self) -> bool:
        """Is InfluxDB reachable, and does it take the gateway's writes?  Creates
        the database when the user may; then an empty write checks the login,
        the WRITE grant and the database."""
        try:
            if not self._db_ready:
                self.influx.ensure_database()
            try:
                self.influx.check_write()
            except InfluxRejected as exc:
                # the database was dropped since: create it again if this user may
                if exc.status != 404 or not self.influx.ensure_database():
                    raise
                self.influx.check_write()
        except InfluxUnavailable:
            self._set_influx(False)
            return False
        except InfluxUnauthorized as exc:
            self._set_influx(True)
            self._refused(exc, 0)
            return False
        except InfluxRejected as exc:
            self._errors(logging.WARNING, "probe", "InfluxDB probe answered %s", exc)
            self._set_influx(False)
            return False
        self._db_ready = True
        self._set_influx(True)
        self._accepted()
        return True

    def _maybe_probe(self) -> None:
        """While idle, check InfluxDB now and then so /health stays truthful."""
        if self._monotonic() - self._last_contact >= self.config.probe_interval_s:
            self._probe()
            self._last_progress = self._monotonic()

    # ---- health -------------------------------------------------------------------

    def stalled(self) -> bool:
        """Points wait and nothing was written, spooled or dead-lettered for ``stall_s``."""
        waiting = self.waiting() + self.spool.pending_points
        return waiting > 0 and self._monotonic() - self._last_progress > self.config.stall_s
