"""The figures of an infusion session, computed from what InfluxDB holds.

One pure function, :func:`compute`, from :class:`~chairside.record.data.SessionData`
to :class:`Figures`; no I/O, no clock.  The PDF, the PNG and the FHIR export
show these numbers and nothing else.  Every rule below is the one
docs/nurse.md ("The session record") describes.

* **Baseline blood pressure** is the pre-infusion measurement: the median
  (systolic, diastolic and MAP each on its own) of the valid NIBP readings
  taken in the 15 minutes before the session start.  Ketamine's pressor
  effect is reported in the literature as the change from the measurement
  taken before the infusion (Riva-Posse et al., "Blood pressure safety of
  subanesthetic ketamine for depression: a report on 684 infusions",
  J Affect Disord 2018;236:291-297: BP every 10 min against the pre-infusion
  value, largest mean rise at 30 min; Szarmach et al., Neuropsychiatr Dis
  Treat 2020;16:2539-2551: time point 0' before the infusion).  The median
  keeps one artefactual cuff reading (a moving arm) from setting the
  baseline.  When no reading was taken in those 15 minutes, the first valid
  reading in the first 5 minutes after the start is used instead and the
  record says so (``source`` "after start"); otherwise there is no baseline.
* **Peaks** are the highest valid systolic, diastolic and MAP of the session,
  each with its time after the start (the earliest when repeated) and its
  rise over the baseline.
* **SpO2**: the lowest valid reading and its time; the time below 90 % and
  below 85 %: each valid reading below counts the time to the next reading
  (or to the session end), at most 2 s, so a 1 Hz reading counts 1 s and a
  gap in the data is not counted as desaturation.
* **Pulse range**: lowest and highest valid oximeter pulse.
* **Alarms**: every episode (raised, acknowledged by whom, cleared) of the
  session, drills excluded; response time = acknowledged - raised.
* **Length**: the session's end (an open session: the time of the report),
  at most 24 h after the start; a longer one (a session nobody ended) is cut
  there and the record says so.
* **Gaps**: no reading for 10 s or more (``no_data``), the probe state other
  than ok (``probe_off``, ``no_finger``, ``searching``: from the first such
  reading to the next valid one) and the box offline (``offline``: from the
  status saying offline to the next saying online), each with its duration.

"Valid" is the contract's: sensor state ``ok`` (and for NIBP ``st`` ok with
systolic and diastolic present).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chairside.record.data import AlarmRow, DeviceRow, LimitChange, Nibp, Session, SessionData, Vital

BASELINE_BEFORE_MS = 15 * 60_000
"""valid NIBP readings this long before the start make the baseline"""
BASELINE_FALLBACK_MS = 5 * 60_000
"""else the first valid reading this long after the start"""
SAMPLE_MAX_MS = 2_000
"""the most one reading counts towards the time below a SpO2 threshold"""
NO_DATA_MS = 10_000
"""no reading for this long is a monitoring gap"""
SPO2_THRESHOLDS = (90, 85)
MAX_RECORD_MS = 24 * 3_600_000
"""a record covers at most this much after the start (a session nobody ended
must not make a report read weeks of data); the record says when it is cut"""


@dataclass(frozen=True, slots=True)
class Baseline:
    sys: float
    dia: float
    map: float | None
    readings: int
    source: str
    """"before start" or "after start\""""


@dataclass(frozen=True, slots=True)
class Peak:
    value: int
    t_ms: int
    after_start_ms: int
    rise: float | None
    """value - baseline; None without a baseline"""


@dataclass(frozen=True, slots=True)
class Lowest:
    value: int
    t_ms: int
    after_start_ms: int


@dataclass(slots=True)
class Episode:
    """One alarm from raise to clear (a part may fall outside the session: None)."""

    alarm: str
    priority: str
    kind: str
    raised_ms: int | None = None
    acked_ms: int | None = None
    acked_by: str | None = None
    cleared_ms: int | None = None
    value: float | None = None
    limit: float | None = None
    text: str = ""

    @property
    def response_ms(self) -> int | None:
        if self.raised_ms is None or self.acked_ms is None:
            return None
        return self.acked_ms - self.raised_ms


@dataclass(frozen=True, slots=True)
class Gap:
    kind: str
    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass(slots=True)
class Figures:
    session: Session
    end_ms: int
    """the session's end, or the time the report was made for an open session
    (at most MAX_RECORD_MS after the start: ``truncated`` then)"""
    baseline: Baseline | None
    peak_sys: Peak | None
    peak_dia: Peak | None
    peak_map: Peak | None
    spo2_min: Lowest | None
    below_ms: dict[int, int]
    """SpO2 threshold (90, 85) -> ms below it"""
    pulse_min: Lowest | None
    pulse_max: Lowest | None
    vitals_valid: int
    nibp_valid: int
    episodes: list[Episode] = field(default_factory=list)
    limit_changes: list[LimitChange] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    truncated: bool = False

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.session.start_ms


def record_end(session: Session, now_ms: int | None) -> tuple[int, bool]:
    """Where the record of ``session`` ends, and whether it was cut at MAX_RECORD_MS."""
    end = session.end_ms if session.end_ms is not None else now_ms
    if end is None:
        raise ValueError(f"session {session.id} is open: give now_ms")
    cut = session.start_ms + MAX_RECORD_MS
    return (cut, True) if end > cut else (end, False)


def compute(data: SessionData, now_ms: int | None = None) -> Figures:
    """The figures of ``data``; an open session ends at ``now_ms`` (required then)."""
    session = data.session
    end, truncated = record_end(session, now_ms)
    start = session.start_ms
    vitals = [v for v in data.vitals if start <= v.t_ms <= end]
    nibp_in = [n for n in data.nibp if start <= n.t_ms <= end and n.valid]
    baseline = _baseline(data.nibp, start)
    valid_vitals = [v for v in vitals if v.valid]
    return Figures(
        session=session,
        end_ms=end,
        baseline=baseline,
        peak_sys=_peak(nibp_in, lambda n: n.sys, start, None if baseline is None else baseline.sys),
        peak_dia=_peak(nibp_in, lambda n: n.dia, start, None if baseline is None else baseline.dia),
        peak_map=_peak(nibp_in, lambda n: n.map, start, None if baseline is None else baseline.map),
        spo2_min=_lowest(valid_vitals, lambda v: v.spo2, start, highest=False),
        below_ms={limit: _time_below(vitals, limit, end) for limit in SPO2_THRESHOLDS},
        pulse_min=_lowest(valid_vitals, lambda v: v.pr, start, highest=False),
        pulse_max=_lowest(valid_vitals, lambda v: v.pr, start, highest=True),
        vitals_valid=len(valid_vitals),
        nibp_valid=len(nibp_in),
        episodes=episodes(data.alarms, start, end),
        limit_changes=[c for c in data.limits if start <= c.t_ms <= end],
        gaps=gaps(vitals, data.device, start, end),
        truncated=truncated,
    )


def _baseline(nibp: Sequence[Nibp], start: int) -> Baseline | None:
    before = [n for n in nibp if start - BASELINE_BEFORE_MS <= n.t_ms < start and n.valid]
    source = "before start"
    if not before:
        after = [n for n in nibp if start <= n.t_ms <= start + BASELINE_FALLBACK_MS and n.valid]
        before = after[:1]
        source = "after start"
    if not before:
        return None
    maps = [n.map for n in before if n.map is not None]
    return Baseline(
        sys=float(statistics.median(n.sys for n in before if n.sys is not None)),
        dia=float(statistics.median(n.dia for n in before if n.dia is not None)),
        map=float(statistics.median(maps)) if maps else None,
        readings=len(before),
        source=source,
    )


def _peak(nibp: Sequence[Nibp], value: Callable[[Nibp], int | None], start: int,
          baseline: float | None) -> Peak | None:
    best: Nibp | None = None
    best_value = 0
    for n in nibp:
        v = value(n)
        if v is not None and (best is None or v > best_value):
            best, best_value = n, v
    if best is None:
        return None
    rise = None if baseline is None else best_value - baseline
    return Peak(best_value, best.t_ms, best.t_ms - start, rise)


def _lowest(vitals: Sequence[Vital], value: Callable[[Vital], int | None], start: int, *,
            highest: bool) -> Lowest | None:
    best: Vital | None = None
    best_value = 0
    for v in vitals:
        x = value(v)
        if x is None:
            continue
        if best is None or (x > best_value if highest else x < best_value):
            best, best_value = v, x
    return None if best is None else Lowest(best_value, best.t_ms, best.t_ms - start)


def _time_below(vitals: Sequence[Vital], limit: int, end: int) -> int:
    total = 0
    for i, v in enumerate(vitals):
        if not v.valid or v.spo2 is None or v.spo2 >= limit:
            continue
        following = vitals[i + 1].t_ms if i + 1 < len(vitals) else end
        total += max(0, min(following - v.t_ms, SAMPLE_MAX_MS))
    return total


def episodes(alarms: Sequence[AlarmRow], start: int, end: int) -> list[Episode]:
    """The session's alarm episodes in order of their first event (drills excluded).

    A ``raised`` (or an ``escalated`` with none open) opens an episode of its
    alarm; the first ``acknowledged`` sets who and when; ``cleared`` closes it.
    An acknowledgement or clear of an alarm raised before the start makes an
    episode without a raise time."""
    found: list[Episode] = []
    open_: dict[str, Episode] = {}
    for row in sorted(alarms, key=lambda r: r.t_ms):
        if row.drill or not start <= row.t_ms <= end:
            continue
        current = open_.get(row.alarm)
        if row.event in ("raised", "escalated") and current is None:
            current = Episode(row.alarm, row.priority, row.kind, raised_ms=row.t_ms, value=row.value,
                              limit=row.limit, text=row.text)
            open_[row.alarm] = current
            found.append(current)
            continue
        if row.event not in ("acknowledged", "cleared"):
            continue  # renotify, or a second escalated of an open episode
        if current is None:
            current = Episode(row.alarm, row.priority, row.kind, text=row.text)
            open_[row.alarm] = current
            found.append(current)
        if row.event == "acknowledged" and current.acked_ms is None:
            current.acked_ms, current.acked_by = row.t_ms, row.by
        elif row.event == "cleared":
            current.cleared_ms = row.t_ms
            del open_[row.alarm]
    return found


def gaps(vitals: Sequence[Vital], device: Sequence[DeviceRow], start: int, end: int) -> list[Gap]:
    """Monitoring gaps, ordered by start: no data, probe states other than ok, box offline."""
    found: list[Gap] = []
    times = [start] + [v.t_ms for v in vitals] + [end]
    for a, b in itertools.pairwise(times):
        if b - a >= NO_DATA_MS:
            found.append(Gap("no_data", a, b))
    run: Vital | None = None
    for v in vitals:
        if not v.valid and run is None:
            run = v
        elif v.valid and run is not None:
            found.append(Gap(run.st, run.t_ms, v.t_ms))
            run = None
    if run is not None:
        found.append(Gap(run.st, run.t_ms, end))
    offline_since: int | None = None
    for row in sorted(device, key=lambda r: r.t_ms):
        if row.t_ms > end:
            break
        if row.online == 0 and offline_since is None:
            offline_since = max(row.t_ms, start)
        elif row.online == 1 and offline_since is not None:
            if row.t_ms > start:
                found.append(Gap("offline", offline_since, row.t_ms))
            offline_since = None
    if offline_since is not None:
        found.append(Gap("offline", offline_since, end))
    found.sort(key=lambda g: (g.start_ms, g.kind))
    return found

