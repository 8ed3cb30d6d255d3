"""``chairside-overview``: every chair at a glance, for the nurses.

One row per chair (repeated over ``$chair``): sensor state, SpO2, pulse, last
NIBP with its age, highest active alarm priority, the active alarms named in
words (linked to the chair on the nurses' station, ``station_links.py``).
Drill chairs (``drill-<chair>``, ``chairside drill``) are left out of ``$chair``.
"""

from __future__ import annotations

from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.panels import (
    ALARM_WINDOW,
    CHAIR_FILTER,
    NIBP_WINDOW,
    NOT_FUTURE,
    OK_COLOUR,
    PRIORITY_COLOURS,
    PRIORITY_RANK,
    STALE_COLOUR,
    Profile,
    grid,
    last_reduce,
    prop,
    stale_mappings,
    thresholds,
    value_map,
    variables,
)
from dashboards.sdk import common, dash, dm, stat
from dashboards.station_links import alarm_names, station_link, station_variable


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
            InfluxQL(f'SELECT last("st") FROM "vitals" WHERE {CHAIR_FILTER} AND $timeFilter AND {NOT_FUTURE}')
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
        .grid_pos(grid(3, 5))
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
                    f"WHERE {CHAIR_FILTER} AND \"st\" = 'ok' AND $timeFilter AND {NOT_FUTURE}"
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
            .grid_pos(grid(3, 5))
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
                f"WHERE {CHAIR_FILTER} AND \"st\" = 'ok' AND $timeFilter AND {NOT_FUTURE}"
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
        .grid_pos(grid(6, 5))
    )

    def active(priority: str) -> str:
        return (
            f'(SELECT count("active") * 0 + {PRIORITY_RANK[priority]} AS "rank" FROM '
            '(SELECT last("active") AS "active" FROM "alarm_events" '
            f"WHERE {CHAIR_FILTER} AND \"priority\" = '{priority}' AND $timeFilter AND {NOT_FUTURE} "
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
        .grid_pos(grid(3, 5))
    )

    row = (
        dash.Row("Chair $chair")
        .repeat("chair")
        .with_panel(sensor)
        .with_panel(vital("SpO2", "spo2", "percent"))
        .with_panel(vital("Pulse", "pr", "suffix: bpm"))
        .with_panel(nibp)
        .with_panel(alarm)
        .with_panel(alarm_names(profile))  # which alarm, linked to the station
    )
    return (
        dash.Dashboard("Chairside — clinic overview")
        .uid("chairside-overview")
        .description(f"Every chair at a glance. Limits from {profile.source}.")
        .tags(["chairside"])
        .time("now-15m", "now")
        .refresh("5s")
        .timezone("browser")
        .variables(variables(multi=True, exclude_drills=True))
        .with_variable(station_variable())
        .link(
            dash.DashboardLink("Chair detail")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["chairside"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .link(station_link())
        .with_row(row)
    )
