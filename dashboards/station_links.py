"""The overview's links to the nurses' station and its "which alarm" column.

* ``alarm_names(profile)``: a stat panel per chair row naming the chair's
  active alarms in the profile's words (e.g. "SpO2 critically low"), each on
  its priority's IEC 60601-1-8 colour; clicking it opens the chair on the
  station;
* ``station_variable()``: the hidden text variable ``$station`` holding the
  station's base URL (default :data:`STATION_URL`; a clinic with another name
  opens the dashboard with ``?var-station=https://…`` once and saves it, or
  changes :data:`STATION_URL` and rebuilds);
* ``station_link()``: the dashboard link to the station's board;
* ``record_link()`` and ``chair_station_link()``: the chair dashboard's links
  to the chair's session record PDF (``${station}/chair/${chair}/report``,
  the station's download of ``chairside report``; the station asks for a
  login first) and to the chair on the station.

The station links each tile back to ``chairside-chair`` (its own code).
"""

from __future__ import annotations

import json
from typing import Any

from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.panels import (
    ALARM_WINDOW,
    CHAIR_FILTER,
    NOT_FUTURE,
    OK_COLOUR,
    PRIORITY_COLOURS,
    PROFILE_PATH,
    Profile,
    grid,
    value_map,
)
from dashboards.sdk import cogbuilder, common, common_builders, dash, dm, stat

STATION_URL = "https://chairside-station:8443"
STATION_CHAIR = "${station}/chair/${chair}"
STATION_RECORD = "${station}/chair/${chair}/report"


def _conditions() -> dict[str, tuple[str, str]]:
    """Alarm name → (words, priority) from the alarm profile (empty when it is unreadable)."""
    try:
        raw: Any = json.loads(PROFILE_PATH.read_text())
    except (OSError, ValueError):
        return {}
    conditions = raw.get("conditions", {}) if isinstance(raw, dict) else {}
    return {
        name: (str(cond.get("text", name)), str(cond.get("priority", "low")))
        for name, cond in sorted(conditions.items())
        if isinstance(cond, dict)
    }


def station_variable() -> cogbuilder.Builder[dm.VariableModel]:
    return (
        dash.TextBoxVariable("station")
        .label("Station URL")
        .default_value(STATION_URL)
        .hide(dm.VariableHide.HIDE_VARIABLE)
    )


def station_link() -> dash.DashboardLink:
    return (
        dash.DashboardLink("Nurses' station")
        .type(dm.DashboardLinkType.LINK)
        .url("${station}/")
        .target_blank(True)
        .tooltip("acknowledge, standby and limits: the Chairside station")
    )


def record_link() -> dash.DashboardLink:
    return (
        dash.DashboardLink("Session record (PDF)")
        .type(dm.DashboardLinkType.LINK)
        .url(STATION_RECORD)
        .target_blank(True)
        .icon("doc")
        .tooltip("the chair's latest infusion session as a PDF for the chart (the station asks for a login)")
    )


def chair_station_link() -> dash.DashboardLink:
    return (
        dash.DashboardLink("Chair ${chair} on the station")
        .type(dm.DashboardLinkType.LINK)
        .url(STATION_CHAIR)
        .target_blank(True)
        .tooltip("acknowledge, standby, session and limits on the nurses' station")
    )


def alarm_names(profile: Profile) -> stat.Panel:
    """Which alarms are active on the row's chair, named in words, coloured by priority."""
    words = _conditions()
    return (
        stat.Panel()
        .title("Alarms")
        .description(
            f"The chair's active alarms (last event within {ALARM_WINDOW} leaves them active; "
            "acknowledged alarms stay until cleared), in the alarm profile's words and coloured by "
            "priority (IEC 60601-1-8: high red, medium yellow, low cyan). Click to act on the chair "
            f"in the nurses' station. Words from {profile.source}."
        )
        .datasource(datasource_ref())
        .with_target(
            InfluxQL(
                'SELECT "active", "alarm" FROM (SELECT last("active") AS "active" FROM "alarm_events" '
                f'WHERE {CHAIR_FILTER} AND $timeFilter AND {NOT_FUTURE} GROUP BY "alarm") '
                'WHERE "active" = true'
            ).result_format("table")
        )
        .time_from(ALARM_WINDOW)
        .reduce_options(common_builders.ReduceDataOptions().values(True).fields("/^alarm$/").calcs(["last"]))
        .mappings([value_map({name: (text, PRIORITY_COLOURS.get(prio, PRIORITY_COLOURS["low"]))
                              for name, (text, prio) in words.items()})])
        .no_value("none")
        .thresholds(
            dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=None, color=OK_COLOUR)])
        )
        .data_links([
            dash.DashboardLink("Open chair ${chair} on the nurses' station").url(STATION_CHAIR).target_blank(True)
        ])
        .links([dash.DashboardLink("Chair ${chair} on the station").url(STATION_CHAIR).target_blank(True)])
        .text_mode(common.BigValueTextMode.VALUE)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .grid_pos(grid(6, 5))
    )
