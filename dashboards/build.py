"""Generate Chairside's Grafana dashboards with grafana-foundation-sdk.

    python dashboards/build.py           # (re)write dashboards/json/*.json
    python dashboards/build.py --check   # exit 1 if the committed JSON is stale

Three dashboards, all reading the InfluxDB data source with uid
``chairside-influx`` through raw InfluxQL (``dashboards/influxql.py``):

* ``chairside-overview`` — one row per chair (repeated over ``$chair``): sensor
  state, SpO2, pulse, last NIBP with its age, highest active alarm priority;
* ``chairside-chair`` — one chair's SpO2/pulse trends, NIBP points with the
  limits drawn, alarm annotations and an alarm state timeline;
* ``chairside-devices`` — box online state, spool, drops, firmware, clock
  sync and the gateway's rejection counters.

Alarm limits and colours come from the alarm profile
``gateway/chairside/profiles/adult.json``; colours for priorities follow
IEC 60601-1-8 (high red, medium yellow, low cyan).  Output is deterministic:
sorted keys, panel ids numbered in layout order.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

with warnings.catch_warnings():
    # The SDK's classic (v1) dashboard model warns at import that v2 exists;
    # Grafana's file provisioner and /api/dashboards/db take the v1 JSON.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import InfluxQL, datasource_ref  # noqa: E402

JSON_DIR = REPO / "dashboards" / "json"
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
        source = "FALLBACK copy of adult defaults in dashboards/build.py (profile file missing)"
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


def variables(*, multi: bool) -> list[cogbuilder.Builder[dm.VariableModel]]:
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
        .query('SHOW TAG VALUES FROM "vitals" WITH KEY = "chair" WHERE "site" =~ /^$site$/')
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.NATURAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    return [site, chair]


def grid(w: int, h: int) -> dm.GridPos:
    return dm.GridPos(w=w, h=h)


# ---------------------------------------------------------------- overview


def overview(profile: Profile) -> dash.Dashboard:
    stale = f"{profile.stale_after_s}s"
    sensor = (
        stat.Panel()
        .title("Sensor")
        .description(
            f"Oximeter state from the last vitals message in the last {stale}. "
            "OFFLINE: no message at all from the chair box."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(f'SELECT last("st") FROM "vitals" WHERE {CHAIR_FILTER} AND $timeFilter')
        )
        .time_from(stale)
        .reduce_options(last_reduce("/.*/"))
        .mappings(
            [
                value_map(
                    {
                        "ok": ("SENSOR OK", OK_COLOUR),
                        "searching": ("SEARCHING", PRIORITY_COLOURS["medium"]),
                        "no_finger": ("NO FINGER", PRIORITY_COLOURS["medium"]),
                        "probe_off": ("PROBE OFF", PRIORITY_COLOURS["medium"]),
                        "no_data": ("NO SIGNAL", PRIORITY_COLOURS["medium"]),
                    }
                ),
                *stale_mappings("OFFLINE"),
            ]
        )
        .no_value("OFFLINE")
        .thresholds(
            dash.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=None, color=STALE_COLOUR)])
        )
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .grid_pos(grid(4, 5))
    )

    def vital(title: str, field: str, unit: str) -> stat.Panel:
        return (
            stat.Panel()
            .title(title)
            .description(
                f"Latest valid {title} reading in the last {stale}; STALE in red when "
                "there is none (box offline, probe off or no signal). "
                f"Colours: alarm limits from {profile.source}."
            )
            .datasource(datasource_ref())
            .with_target(
                InfluxQL(
                    f'SELECT last("{field}") AS "{field}" FROM "vitals" '
                    f"WHERE {CHAIR_FILTER} AND \"st\" = 'ok' AND $timeFilter"
                )
            )
            .time_from(stale)
            .reduce_options(last_reduce())
            .unit(unit)
            .decimals(0)
            .thresholds(thresholds(profile.for_field("vitals", field)))
            .mappings(stale_mappings("STALE"))
            .no_value("STALE")
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .graph_mode(common.BigValueGraphMode.NONE)
            .grid_pos(grid(4, 5))
        )

    nibp = (
        stat.Panel()
        .title("Last NIBP")
        .description(
            f"Last successful blood-pressure measurement within {NIBP_WINDOW} and how long "
            "ago it was taken. NO BP: none in that window."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT last("sys") AS "sys", "dia" AS "dia" FROM "nibp" '
                f"WHERE {CHAIR_FILTER} AND \"st\" = 'ok' AND $timeFilter"
            )
        )
        .time_from(NIBP_WINDOW)
        .reduce_options(last_reduce("/^(sys|dia|Time)$/"))
        .unit("suffix: mmHg")
        .decimals(0)
        .no_value("NO BP")
        .mappings(stale_mappings("NO BP"))
        .override_by_name(
            "sys",
            [prop("displayName", "SYS"), prop("thresholds", thresholds(
                profile.for_field("nibp", "sys")).build())],
        )
        .override_by_name(
            "dia",
            [prop("displayName", "DIA"), prop("thresholds", thresholds(
                profile.for_field("nibp", "dia")).build())],
        )
        .override_by_name(
            "Time",
            [
                prop("displayName", "taken"),
                prop("unit", "dateTimeFromNow"),
                prop("color", {"mode": "fixed", "fixedColor": "text"}),
            ],
        )
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .grid_pos(grid(7, 5))
    )

    def active(priority: str) -> str:
        return (
            f'(SELECT count("active") * 0 + {PRIORITY_RANK[priority]} AS "rank" FROM '
            '(SELECT last("active") AS "active" FROM "alarm_events" '
            f"WHERE {CHAIR_FILTER} AND \"priority\" = '{priority}' AND $timeFilter "
            'GROUP BY "alarm") WHERE "active" = true)'
        )

    alarm = (
        stat.Panel()
        .title("Active alarm")
        .description(
            "Highest priority among this chair's alarms whose last event (within "
            f"{ALARM_WINDOW}) leaves them active; acknowledged alarms stay active until "
            "cleared. Colours per IEC 60601-1-8: high red, medium yellow, low cyan."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT max("rank") AS "priority" FROM '
                + ", ".join(active(p) for p in ("high", "medium", "low"))
            )
        )
        .time_from(ALARM_WINDOW)
        .reduce_options(last_reduce())
        .mappings(
            [
                value_map(
                    {
                        str(PRIORITY_RANK[p]): (p.upper(), PRIORITY_COLOURS[p])
                        for p in ("high", "medium", "low")
                    }
                )
            ]
        )
        .no_value("none")
        .thresholds(
            dash.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    dm.Threshold(value=None, color=OK_COLOUR),
                    *(
                        dm.Threshold(value=PRIORITY_RANK[p], color=PRIORITY_COLOURS[p])
                        for p in ("low", "medium", "high")
                    ),
                ]
            )
        )
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .grid_pos(grid(5, 5))
    )

    row = (
        dash.Row("Chair $chair")
        .repeat("chair")
        .with_panel(sensor)
        .with_panel(vital("SpO2", "spo2", "percent"))
        .with_panel(vital("Pulse", "pr", "suffix: bpm"))
        .with_panel(nibp)
        .with_panel(alarm)
    )
    return (
        dash.Dashboard("Chairside — clinic overview")
        .uid("chairside-overview")
        .description(f"Every chair at a glance. Limits from {profile.source}.")
        .tags(["chairside"])
        .time("now-15m", "now")
        .refresh("5s")
        .timezone("browser")
        .variables(variables(multi=True))
        .link(
            dash.DashboardLink("Chair detail")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["chairside"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_row(row)
    )


# ---------------------------------------------------------------- chair detail


def trend(profile: Profile, title: str, select: str, field: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(
            "Gaps mean no valid reading in that interval (fill(null)); dashed lines are the "
            f"alarm limits from {profile.source}."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                f'SELECT {select} AS "{title}" FROM "vitals" WHERE {CHAIR_FILTER} '
                "AND \"st\" = 'ok' AND $timeFilter GROUP BY time($__interval) fill(null)"
            )
        )
        .unit(unit)
        .thresholds(thresholds(profile.for_field("vitals", field)))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
        .span_nulls(False)
        .show_points(common.VisibilityMode.NEVER)
        .grid_pos(grid(12, 8))
    )


def chair_detail(profile: Profile) -> dash.Dashboard:
    nibp_fields = ("sys", "dia", "map")
    nibp = (
        timeseries.Panel()
        .title("NIBP")
        .description(
            "Each point is one successful cuff measurement; dashed lines are the alarm limits "
            f"(from {profile.source}) in the colour of their priority."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT "sys", "dia", "map" FROM "nibp" '
                f"WHERE {CHAIR_FILTER} AND \"st\" = 'ok' AND $timeFilter"
            )
        )
        .unit("suffix: mmHg")
        .draw_style(common.GraphDrawStyle.POINTS)
        .point_size(9)
        .show_points(common.VisibilityMode.ALWAYS)
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
        .grid_pos(grid(24, 8))
    )
    for name in nibp_fields:
        nibp = nibp.override_by_name(
            f"nibp.{name}",
            [prop("thresholds", thresholds(profile.for_field("nibp", name)).build())],
        ).override_by_name(
            name, [prop("thresholds", thresholds(profile.for_field("nibp", name)).build())]
        )

    states = (
        statetimeline.Panel()
        .title("Alarm states")
        .description(
            "One lane per alarm condition: coloured while active (IEC 60601-1-8 priority "
            "colours), green once cleared."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT last("active") FROM "alarm_events" '
                f"WHERE {CHAIR_FILTER} AND $timeFilter "
                'GROUP BY time($__interval), "alarm", "priority" fill(previous)'
            ).alias("$tag_alarm ($tag_priority)")
        )
        .mappings(
            [
                special(dm.SpecialValueMatch.TRUE, "ACTIVE", PRIORITY_COLOURS["high"]),
                special(dm.SpecialValueMatch.FALSE, "clear", OK_COLOUR),
            ]
        )
        .grid_pos(grid(24, 7))
    )
    for priority in ("high", "medium", "low"):
        states = states.override_by_regexp(
            rf"/\({priority}\)$/",
            [
                prop(
                    "mappings",
                    [
                        special(dm.SpecialValueMatch.TRUE, "ACTIVE", PRIORITY_COLOURS[priority]),
                        special(dm.SpecialValueMatch.FALSE, "clear", OK_COLOUR),
                    ],
                )
            ],
        )

    log = (
        table.Panel()
        .title("Alarm log")
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT "event", "alarm", "priority", "text", "value", "limit", "by" '
                f'FROM "alarm_events" WHERE {CHAIR_FILTER} AND $timeFilter'
            ).result_format("table")
        )
        .grid_pos(grid(24, 8))
    )

    def annotation(name: str, events: str, colour: str) -> dash.AnnotationQuery:
        query = (
            'SELECT "text", "alarm", "priority", "event", "by" FROM "alarm_events" '
            f'WHERE {CHAIR_FILTER} AND "event" =~ /^({events})$/ AND $timeFilter'
        )
        return (
            dash.AnnotationQuery()
            .name(name)
            .datasource(datasource_ref())
            .enable(True)
            .icon_color(colour)
            .target(InfluxQL(query).ref_id("Anno").result_format("table"))
            .mappings(
                {
                    "text": dash.AnnotationEventFieldMapping()
                    .source(dm.AnnotationEventFieldSource.FIELD)
                    .value("text"),
                    "tags": dash.AnnotationEventFieldMapping()
                    .source(dm.AnnotationEventFieldSource.FIELD)
                    .value("alarm"),
                }
            )
        )

    return (
        dash.Dashboard("Chairside — chair detail")
        .uid("chairside-chair")
        .description(f"One chair's trends, NIBP and alarms. Limits from {profile.source}.")
        .tags(["chairside"])
        .time("now-2h", "now")
        .refresh("10s")
        .timezone("browser")
        .variables(variables(multi=False))
        .annotation(annotation("Alarms", "raised|escalated|renotify", PRIORITY_COLOURS["high"]))
        .annotation(annotation("Acknowledged / cleared", "acknowledged|cleared", "blue"))
        .with_panel(trend(profile, "SpO2", 'min("spo2")', "spo2", "percent"))
        .with_panel(trend(profile, "Pulse", 'mean("pr")', "pr", "suffix: bpm"))
        .with_panel(nibp)
        .with_panel(states)
        .with_panel(log)
    )


# ---------------------------------------------------------------- device health


def per_chair_series(title: str, select: str, measurement: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                f'SELECT {select} FROM "{measurement}" WHERE {CHAIR_FILTER} AND $timeFilter '
                'GROUP BY time($__interval), "chair" fill(null)'
            ).alias("$tag_chair")
        )
        .unit(unit)
        .span_nulls(False)
        .grid_pos(grid(12, 7))
    )


def device_health(profile: Profile) -> dash.Dashboard:
    online = (
        stat.Panel()
        .title("Box $chair")
        .description(
            f"Last status within {DEVICE_WINDOW} (boxes report every 60 s; the broker's last "
            "will marks a lost box OFFLINE at once). NO STATUS: nothing heard."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT last("online") AS "online" FROM "device" '
                f"WHERE {CHAIR_FILTER} AND $timeFilter"
            )
        )
        .time_from(DEVICE_WINDOW)
        .reduce_options(last_reduce())
        .mappings(
            [
                value_map({"1": ("ONLINE", OK_COLOUR), "0": ("OFFLINE", STALE_COLOUR)}),
                *stale_mappings("NO STATUS"),
            ]
        )
        .no_value("NO STATUS")
        .thresholds(
            dash.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=None, color=STALE_COLOUR), dm.Threshold(1, OK_COLOUR)])
        )
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .repeat("chair")
        .repeat_direction("h")
        .max_per_row(6)
        .grid_pos(grid(4, 4))
    )
    inventory = (
        table.Panel()
        .title("Firmware and modules (last status per box, 24 h)")
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT last("fw") AS "fw", "cfg", "reset", "oxi", "nibp", "link", "rssi", '
                f'"spool", "dropped" FROM "device" WHERE {CHAIR_FILTER} AND $timeFilter '
                'GROUP BY "chair"'
            ).result_format("table")
        )
        .time_from("24h")
        .grid_pos(grid(24, 7))
    )
    sync = (
        statetimeline.Panel()
        .title("Box clock synchronised")
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                f'SELECT min("sync") FROM "vitals" WHERE {CHAIR_FILTER} AND $timeFilter '
                'GROUP BY time($__interval), "chair" fill(null)'
            ).alias("$tag_chair")
        )
        .mappings(
            [
                value_map(
                    {"1": ("synced", OK_COLOUR), "0": ("NOT SYNCED", PRIORITY_COLOURS["low"])}
                )
            ]
        )
        .grid_pos(grid(12, 7))
    )
    offset = (
        timeseries.Panel()
        .title("Receive delay: gateway clock − box clock (synced boxes)")
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT mean("delay") FROM (SELECT "rx_ms" - "dev_t" AS "delay" FROM "vitals" '
                f'WHERE {CHAIR_FILTER} AND "sync" = 1 AND $timeFilter GROUP BY "chair") '
                'WHERE $timeFilter GROUP BY time($__interval), "chair" fill(null)'
            ).alias("$tag_chair")
        )
        .unit("ms")
        .grid_pos(grid(12, 7))
    )
    rejects = (
        timeseries.Panel()
        .title("Gateway rejections by reason")
        .description("Messages the gateway refused (all sites: rejects carry no site tag).")
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT sum("n") FROM "rejects" WHERE $timeFilter '
                'GROUP BY time($__interval), "reason" fill(null)'
            ).alias("$tag_reason")
        )
        .draw_style(common.GraphDrawStyle.BARS)
        .grid_pos(grid(12, 7))
    )
    reject_totals = (
        stat.Panel()
        .title("Rejections in range")
        .datasource(datasource_ref())
        .with_target(
            InfluxQL('SELECT sum("n") FROM "rejects" WHERE $timeFilter GROUP BY "reason"').alias(
                "$tag_reason"
            )
        )
        .reduce_options(common_builders.ReduceDataOptions().calcs(["sum"]).values(False))
        .no_value("0")
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .grid_pos(grid(12, 7))
    )
    return (
        dash.Dashboard("Chairside — device health")
        .uid("chairside-devices")
        .description("Chair boxes and the gateway: links, buffers, firmware, clocks, rejects.")
        .tags(["chairside"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .variables(variables(multi=True))
        .with_row(dash.Row("Boxes").with_panel(online))
        .with_row(
            dash.Row("Buffers")
            .with_panel(per_chair_series("Spool depth", 'last("spool")', "device", "short"))
            .with_panel(per_chair_series("Dropped readings", 'last("dropped")', "device", "short"))
        )
        .with_row(dash.Row("Inventory").with_panel(inventory))
        .with_row(
            dash.Row("Clocks and radio")
            .with_panel(sync)
            .with_panel(offset)
            .with_panel(per_chair_series("Wi-Fi RSSI", 'mean("rssi")', "device", "dBm"))
        )
        .with_row(dash.Row("Gateway").with_panel(rejects).with_panel(reject_totals))
    )


# ---------------------------------------------------------------- output


def _all_panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def finish(board: dash.Dashboard) -> dict[str, Any]:
    """Plain JSON with stable panel ids and classic annotation fields added."""
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    data.pop("id", None)
    # Rows stay expanded (a nurse must not have to open them): Grafana keeps
    # an expanded row's panels at top level, right after the row.
    flat: list[dict[str, Any]] = []
    for panel in data.get("panels", []):
        inner = panel.get("panels", []) if panel.get("type") == "row" else []
        if panel.get("type") == "row":
            panel["collapsed"] = False
            panel["panels"] = []
        flat.append(panel)
        flat.extend(inner)
    data["panels"] = flat
    for number, panel in enumerate(_all_panels(data.get("panels", [])), start=1):
        panel["id"] = number
    for anno in data.get("annotations", {}).get("list", []):
        target = anno.get("target")
        if isinstance(target, dict) and "query" in target:
            # The classic InfluxDB annotation editor reads these top-level keys.
            anno["query"] = target["query"]
            anno["textColumn"] = "text"
            anno["tagsColumn"] = "alarm,priority,event"
    return data


def build_all(profile: Profile | None = None) -> dict[str, dict[str, Any]]:
    """File name → dashboard JSON for every Chairside dashboard."""
    profile = profile or load_profile()
    boards = [overview(profile), chair_detail(profile), device_health(profile)]
    out: dict[str, dict[str, Any]] = {}
    for board in boards:
        data = finish(board)
        out[f"{data['uid']}.json"] = data
    return out


def render(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    parser.add_argument("--out", type=Path, default=JSON_DIR, help="output folder")
    args = parser.parse_args(argv)
    boards = {name: render(data) for name, data in build_all().items()}
    out: Path = args.out
    if args.check:
        stale = [
            name
            for name, text in boards.items()
            if not (out / name).exists() or (out / name).read_text() != text
        ]
        extra = sorted(p.name for p in out.glob("*.json") if p.name not in boards)
        if stale or extra:
            for name in stale:
                print(f"out of date: {out / name}", file=sys.stderr)
            for name in extra:
                print(f"not generated by build.py: {out / name}", file=sys.stderr)
            print("run: python dashboards/build.py", file=sys.stderr)
            return 1
        print(f"{len(boards)} dashboards up to date in {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in boards.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
