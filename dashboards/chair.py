"""``chairside-chair``: one chair's detail.

SpO2/pulse trends, NIBP points with the limits drawn, alarm annotations, an
alarm state timeline and the alarm log; links to the chair's session record
PDF and to the chair on the nurses' station (``$station``, as the overview's:
``station_links.py``).
"""

from __future__ import annotations

from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.panels import (
    CHAIR_FILTER,
    NOT_FUTURE,
    OK_COLOUR,
    PRIORITY_COLOURS,
    Profile,
    grid,
    prop,
    special,
    thresholds,
    variables,
)
from dashboards.sdk import common, common_builders, dash, dm, statetimeline, table, timeseries
from dashboards.station_links import chair_station_link, record_link, station_variable


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
                f"WHERE {CHAIR_FILTER} AND \"st\" = 'ok' AND $timeFilter AND {NOT_FUTURE}"
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
        .with_variable(station_variable())
        .link(record_link())
        .link(chair_station_link())
        .annotation(annotation("Alarms", "raised|escalated|renotify", PRIORITY_COLOURS["high"]))
        .annotation(annotation("Acknowledged / cleared", "acknowledged|cleared", "blue"))
        .with_panel(trend(profile, "SpO2", 'min("spo2")', "spo2", "percent"))
        .with_panel(trend(profile, "Pulse", 'mean("pr")', "pr", "suffix: bpm"))
        .with_panel(nibp)
        .with_panel(states)
        .with_panel(log)
    )
