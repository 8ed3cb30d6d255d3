"""What the three Chairside dashboards share: limits from the alarm profile,
IEC 60601-1-8 colours, stale-value mappings, the ``$site``/``$chair``
variables and the query pieces every "current value" panel uses.

Alarm limits and colours come from the alarm profile
``gateway/chairside/profiles/adult.json``; colours for priorities follow
IEC 60601-1-8 (high red, medium yellow, low cyan).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboards.influxql import datasource_ref
from dashboards.sdk import cogbuilder, common_builders, dash, dm

REPO = Path(__file__).resolve().parents[1]
PROFILE_PATH = REPO / "gateway" / "chairside" / "profiles" / "adult.json"

# IEC 60601-1-8 alarm-priority colours (high red, medium yellow, low cyan).
PRIORITY_COLOURS: dict[str, str] = {"high": "red", "medium": "yellow", "low": "#00FFFF"}
PRIORITY_RANK: dict[str, int] = {"high": 3, "medium": 2, "low": 1}
OK_COLOUR = "green"
STALE_COLOUR = "red"

# FALLBACK ONLY — used when gateway/chairside/profiles/adult.json is missing or
# unreadable.  The profile file is the single source of the limits; this copy
# of the adult defaults exists so the generator still runs in a partial
# checkout, and every dashboard built from it says so in its description.
FALLBACK_ADULT_PROFILE: dict[str, Any] = {
    "stale_after_s": 30,
    "conditions": {
        "spo2_critical": {"check": "threshold", "measurement": "vitals", "field": "spo2",
                          "op": "<", "limit": 85, "priority": "high"},
        "spo2_low": {"check": "threshold", "measurement": "vitals", "field": "spo2",
                     "op": "<", "limit": 90, "priority": "medium"},
        "pulse_high": {"check": "threshold", "measurement": "vitals", "field": "pr",
                       "op": ">", "limit": 120, "priority": "medium"},
        "pulse_low": {"check": "threshold", "measurement": "vitals", "field": "pr",
                      "op": "<", "limit": 50, "priority": "medium"},
        "bp_intervention": {"check": "threshold", "measurement": "nibp", "field": "sys",
                            "op": ">=", "limit": 220, "alt_field": "dia", "alt_op": ">=",
                            "alt_limit": 120, "priority": "high"},
        "sys_high": {"check": "threshold", "measurement": "nibp", "field": "sys",
                     "op": ">=", "limit": 180, "priority": "medium"},
        "sys_low": {"check": "threshold", "measurement": "nibp", "field": "sys",
                    "op": "<", "limit": 90, "priority": "medium"},
        "dia_high": {"check": "threshold", "measurement": "nibp", "field": "dia",
                     "op": ">=", "limit": 110, "priority": "medium"},
        "map_low": {"check": "threshold", "measurement": "nibp", "field": "map",
                    "op": "<", "limit": 60, "priority": "medium"},
    },
}

CHAIR_FILTER = '"site" =~ /^$site$/ AND "chair" =~ /^$chair$/'
NIBP_WINDOW = "1h"  # the NIBP interval can be up to 60 min
ALARM_WINDOW = "12h"  # an alarm raised earlier in the session is still shown
DEVICE_WINDOW = "3m"  # boxes publish status every 60 s
# Every "current value" query (last reading, last BP, last status, active
# alarms, raw points) bounds time from above too: a reading stored with a time
# in the future (a box clock far ahead) must never mask the live value, nor
# hide that a chair went offline.  Grafana's $timeFilter for a range ending
# "now" has no upper bound; GROUP BY time(...) queries end at now() anyway.
NOT_FUTURE = "time <= now()"


# ---------------------------------------------------------------- profile


@dataclass(frozen=True)
class Limit:
    """One numeric alarm limit on a stored field."""

    alarm: str
    measurement: str
    field: str
    op: str
    limit: float
    priority: str

    def violated_by(self, value: float) -> bool:
        return {
            "<": value < self.limit,
            "<=": value <= self.limit,
            ">": value > self.limit,
            ">=": value >= self.limit,
        }[self.op]

    def boundary(self) -> float:
        """The Grafana step (a value >= step gets the step's colour).

        Fields are integers (contract.json), so ``> L`` starts at ``L + 1``.
        """
        return self.limit + 1 if self.op in (">", "<=") else self.limit


@dataclass(frozen=True)
class Profile:
    source: str  # "profiles/adult.json" or "FALLBACK"
    stale_after_s: int
    limits: tuple[Limit, ...]

    def for_field(self, measurement: str, field: str) -> list[Limit]:
        return [x for x in self.limits if x.measurement == measurement and x.field == field]


def _limits_from(conditions: Mapping[str, Any]) -> list[Limit]:
    out: list[Limit] = []
    for alarm, cond in sorted(conditions.items()):
        if not isinstance(cond, Mapping) or cond.get("check", "threshold") != "threshold":
            continue
        priority = str(cond.get("priority", ""))
        measurement = cond.get("measurement")
        if priority not in PRIORITY_RANK or not isinstance(measurement, str):
            continue
        for prefix in ("", "alt_"):
            field, op, limit = (cond.get(prefix + k) for k in ("field", "op", "limit"))
            if isinstance(field, str) and op in ("<", "<=", ">", ">=") and isinstance(
                limit, int | float
            ):
                out.append(Limit(alarm, measurement, field, str(op), float(limit), priority))
    return out


def load_profile(path: Path = PROFILE_PATH) -> Profile:
    """Read the alarm profile; fall back to the marked local copy if absent."""
    try:
        data = json.loads(path.read_text())
        source = f"gateway/chairside/profiles/{path.name}"
    except (OSError, ValueError):
        data = FALLBACK_ADULT_PROFILE
        source = "FALLBACK copy of adult defaults in dashboards/panels.py (profile file missing)"
    conditions = data.get("conditions", {})
    limits = _limits_from(conditions if isinstance(conditions, Mapping) else {})
    stale = int(data.get("stale_after_s", FALLBACK_ADULT_PROFILE["stale_after_s"]))
    return Profile(source=source, stale_after_s=stale, limits=tuple(limits))


def threshold_steps(limits: Sequence[Limit]) -> list[dm.Threshold]:
    """Grafana threshold steps colouring each value range by the worst alarm it trips."""
    bounds = sorted({x.boundary() for x in limits})
    if not bounds:
        return [dm.Threshold(value=None, color=OK_COLOUR)]

    def colour(value: float) -> str:
        tripped = [x.priority for x in limits if x.violated_by(value)]
        if not tripped:
            return OK_COLOUR
        return PRIORITY_COLOURS[max(tripped, key=PRIORITY_RANK.__getitem__)]

    steps = [dm.Threshold(value=None, color=colour(bounds[0] - 1))]
    for bound in bounds:
        c = colour(bound)
        if c != steps[-1].color:
            steps.append(dm.Threshold(value=bound, color=c))
    return steps


def thresholds(limits: Sequence[Limit]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(threshold_steps(limits))
    )


# ---------------------------------------------------------------- helpers


def special(match: dm.SpecialValueMatch, text: str, colour: str) -> dm.SpecialValueMap:
    return dm.SpecialValueMap(
        options=dm.DashboardSpecialValueMapOptions(
            match=match, result=dm.ValueMappingResult(text=text, color=colour)
        )
    )


def value_map(options: Mapping[str, tuple[str, str]]) -> dm.ValueMap:
    return dm.ValueMap(
        options={
            key: dm.ValueMappingResult(text=text, color=colour, index=i)
            for i, (key, (text, colour)) in enumerate(options.items())
        }
    )


def stale_mappings(text: str) -> list[dm.ValueMapping]:
    """null/NaN/empty → red text: a box that stopped sending never shows a number."""
    return [
        special(dm.SpecialValueMatch.NULL_AND_NAN, text, STALE_COLOUR),
        special(dm.SpecialValueMatch.EMPTY, text, STALE_COLOUR),
    ]


def last_reduce(fields: str | None = None) -> common_builders.ReduceDataOptions:
    """``last`` (not ``lastNotNull``): a trailing null must show as stale."""
    reduce = common_builders.ReduceDataOptions().calcs(["last"]).values(False)
    if fields is not None:
        reduce = reduce.fields(fields)
    return reduce


def prop(name: str, value: object) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val=name, value=value)


# chairside.alarms.slots.DRILL_PREFIX: a drill's simulated box is chair "drill-<chair>"
DRILL_CHAIR_RE = "/^drill-/"


def variables(*, multi: bool, exclude_drills: bool = False) -> list[cogbuilder.Builder[dm.VariableModel]]:
    """$site and $chair; ``exclude_drills`` leaves drill chairs out of $chair
    (the nurses' overview must never show "Chair drill-3", later OFFLINE)."""
    drills = f' AND "chair" !~ {DRILL_CHAIR_RE}' if exclude_drills else ""
    site = (
        dash.QueryVariable("site")
        .label("Site")
        .datasource(datasource_ref())
        .query('SHOW TAG VALUES FROM "vitals" WITH KEY = "site"')
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.NATURAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    chair = (
        dash.QueryVariable("chair")
        .label("Chair")
        .datasource(datasource_ref())
        .query(f'SHOW TAG VALUES FROM "vitals" WITH KEY = "chair" WHERE "site" =~ /^$site$/{drills}')
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.NATURAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    return [site, chair]


def grid(w: int, h: int) -> dm.GridPos:
    return dm.GridPos(w=w, h=h)
