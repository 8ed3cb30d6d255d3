"""The station's board: what each chair's tile shows, from the MQTT messages it heard.

Pure and clock-free: :meth:`Board.apply` takes a validated message and the
station's receive time, :meth:`Board.view` the time to show the tile at.

The staleness rule is the dashboards' (docs/dashboards.md): SpO2 and pulse are
shown only from a live reading with ``st = ok`` received within the profile's
``stale_after_s`` (30 s), otherwise STALE; the sensor state is OFFLINE when
no vitals message at all came in that window (or the box's last will said
offline); the last NIBP is shown for an hour with its age, then NO BP.  A
replayed reading (``h = 1``) never counts as live.  The station measures age
from its own receive time (the dashboards from the stored time: for a live
box, within a second of each other).

Alarms come from the gateway's retained ``alarms/active`` set (the alarm
engine decides; the station only shows), named in the profile's words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from chairside.alarms.profile import Profile

DRILL_PREFIX: Final = "drill-"
NIBP_WINDOW_MS: Final = 3600_000  # the dashboards' NIBP_WINDOW (1 h)
MAX_CHAIRS: Final = 2000  # a site's chairs; messages of further chair ids are dropped and counted
PRIORITY_RANK: Final[dict[str, int]] = {"high": 3, "medium": 2, "low": 1}
SENSOR_WORDS: Final[dict[str, str]] = {
    "ok": "SENSOR OK",
    "searching": "SEARCHING",
    "no_finger": "NO FINGER",
    "probe_off": "PROBE OFF",
    "no_data": "NO SIGNAL",
}


@dataclass(slots=True)
class ChairState:
    """Everything heard about one chair (receive times in the station's ms)."""

    site: str
    chair: str
    vitals_rx: int | None = None  # last live vitals message, any sensor state
    sensor: str | None = None
    ok_rx: int | None = None  # last live vitals with st = ok
    spo2: int | None = None
    pr: int | None = None
    seq: int | None = None
    nibp_rx: int | None = None  # last successful NIBP, when received
    nibp_taken: int | None = None  # its measured time (box clock when synchronised, else receipt)
    sys: int | None = None
    dia: int | None = None
    box: str | None = None  # "online" / "offline" from status
    active: list[dict[str, Any]] = field(default_factory=list)
    acked_by: dict[str, str] = field(default_factory=dict)


def _age_words(ms: int) -> str:
    minutes = max(0, ms) // 60_000
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    return f"{minutes // 60} h {minutes % 60} min ago"


class Board:
    """The chairs of one site and how to show each one."""

    def __init__(self, site: str, profile: Profile, grafana_url: str | None = None) -> None:
        self.site = site
        self.profile = profile
        self.stale_ms = int(profile.stale_after_s * 1000)
        self.grafana_url = grafana_url.rstrip("/") if grafana_url else None
        self.chairs: dict[str, ChairState] = {}
        self.chairs_dropped = 0

    def words(self, alarm: str) -> str:
        cond = self.profile.conditions.get(alarm)
        return cond.text if cond is not None else alarm.replace("_", " ")

    def _chair(self, chair: str) -> ChairState:
        state = self.chairs.get(chair)
        if state is None:
            state = self.chairs[chair] = ChairState(self.site, chair)
        return state

    # ---- input ---------------------------------------------------------------------

    def apply(self, chair: str, kind: str, fields: Mapping[str, Any], rx_ms: int, *, last_will: bool = False) -> bool:
        """Take one validated message of this site; True when the chair's tile may change."""
        if chair not in self.chairs and len(self.chairs) >= MAX_CHAIRS:
            self.chairs_dropped += 1
            return False
        state = self._chair(chair)
        if kind == "vitals":
            if fields.get("h") == 1:
                return False  # a replay is history, never live
            state.vitals_rx = rx_ms
            state.sensor = str(fields.get("st"))
            state.seq = fields.get("seq")
            spo2, pr = fields.get("spo2"), fields.get("pr")
            if fields.get("st") == "ok" and (spo2 is not None or pr is not None):
                state.ok_rx, state.spo2, state.pr = rx_ms, spo2, pr
            return True
        if kind == "nibp":
            if fields.get("st") != "ok" or fields.get("sys") is None:
                return False
            taken = int(fields["t"]) if fields.get("sync") == 1 else rx_ms
            if state.nibp_taken is not None and taken < state.nibp_taken:
                return False  # an older measurement (a replay) does not replace the last one
            state.nibp_rx, state.nibp_taken = rx_ms, min(taken, rx_ms)
            state.sys, state.dia = fields.get("sys"), fields.get("dia")
            return True
        if kind == "status":
            state.box = "offline" if last_will else str(fields.get("state"))
            if state.box == "offline":
                state.vitals_rx = state.ok_rx = None  # the box said it is gone: nothing is live
            return True
        if kind == "alarms_active":
            active = fields.get("active")
            state.active = [a for a in active if isinstance(a, dict)] if isinstance(active, list) else []
            live = {str(a.get("alarm")) for a in state.active}
            state.acked_by = {k: v for k, v in state.acked_by.items() if k in live}
            return True
        if kind == "alarm_event":
            alarm, by = fields.get("alarm"), fields.get("by")
            if fields.get("event") == "acknowledged" and isinstance(alarm, str) and isinstance(by, str):
                state.acked_by[alarm] = by
                return True
            return False
        return False

    # ---- output --------------------------------------------------------------------

    def view(self, chair: str, now_ms: int) -> dict[str, Any]:
        """The tile of ``chair`` at ``now_ms`` (JSON-ready; the page renders it as text)."""
        s = self._chair(chair)
        heard = s.vitals_rx is not None and now_ms - s.vitals_rx <= self.stale_ms
        live = heard and s.ok_rx is not None and now_ms - s.ok_rx <= self.stale_ms
        if not heard:
            sensor, sensor_level = "OFFLINE", "stale"
        else:
            sensor = SENSOR_WORDS.get(s.sensor or "", (s.sensor or "").upper())
            sensor_level = "ok" if s.sensor == "ok" else "warn"
        bp = None
        bp_age = None
        if s.nibp_taken is not None and now_ms - s.nibp_taken <= NIBP_WINDOW_MS:
            bp = f"{s.sys}/{s.dia}" if s.dia is not None else f"{s.sys}/-"
            bp_age = _age_words(now_ms - s.nibp_taken)
        alarms = []
        for a in sorted(s.active, key=lambda a: -PRIORITY_RANK.get(str(a.get("priority")), 0)):
            name = str(a.get("alarm"))
            alarms.append({
                "alarm": name,
                "words": self.words(name),
                "priority": str(a.get("priority")) if a.get("priority") in PRIORITY_RANK else "low",
                "kind": str(a.get("kind", "")),
                "acked": bool(a.get("acked")),
                "latched": bool(a.get("latched")),
                "by": s.acked_by.get(name),
            })
        sounding = [str(a["priority"]) for a in alarms if not a["acked"]]
        tone = max(sounding, key=lambda p: PRIORITY_RANK[p]) if sounding else None
        grafana = None
        if self.grafana_url:
            grafana = f"{self.grafana_url}/d/chairside-chair?var-site={self.site}&var-chair={chair}"
        return {
            "site": self.site,
            "chair": chair,
            "drill": chair.startswith(DRILL_PREFIX),
            "stale": not live,
            "sensor": sensor,
            "sensor_level": sensor_level,
            "spo2": s.spo2 if live else None,
            "pr": s.pr if live else None,
            "bp": bp,
            "bp_age": bp_age,
            "box": s.box or "no status",
            "alarms": alarms,
            "tone": tone,
            "seq": s.seq if heard else None,
            "grafana": grafana,
        }

    def views(self, now_ms: int) -> list[dict[str, Any]]:
        return [self.view(chair, now_ms) for chair in sorted(self.chairs, key=_chair_order)]


def _chair_order(chair: str) -> tuple[int, int, str]:
    """Drill chairs last; numbers in numeric order."""
    drill = 1 if chair.startswith(DRILL_PREFIX) else 0
    bare = chair[len(DRILL_PREFIX):] if drill else chair
    return (drill, int(bare) if bare.isdigit() else 1 << 30, bare)
