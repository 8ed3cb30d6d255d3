"""``chairside-devices``: the chair boxes and the gateway.

Box online state, spool, drops, firmware, clock sync and the gateway's
rejection counters.
"""

from __future__ import annotations

from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.panels import (
    CHAIR_FILTER,
    DEVICE_WINDOW,
    NOT_FUTURE,
    OK_COLOUR,
    PRIORITY_COLOURS,
    STALE_COLOUR,
    Profile,
    grid,
    last_reduce,
    stale_mappings,
    value_map,
    variables,
)
from dashboards.sdk import common, common_builders, dash, dm, stat, statetimeline, table, timeseries


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
                f"WHERE {CHAIR_FILTER} AND $timeFilter AND {NOT_FUTURE}"
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
                f'"spool", "dropped" FROM "device" WHERE {CHAIR_FILTER} AND $timeFilter AND {NOT_FUTURE} '
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
