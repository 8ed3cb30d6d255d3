"""A raw InfluxQL query target for grafana-foundation-sdk panels and annotations.

The SDK has no InfluxDB query builder, so this module supplies the smallest one
Grafana's InfluxDB data source (InfluxQL mode) accepts: ``refId``,
``rawQuery: true``, ``query``, ``resultFormat`` and the data source by uid.
Every Chairside panel points at the provisioned data source uid
``chairside-influx`` (see ``dashboards/provisioning/datasources/chairside.yaml``).
"""

from __future__ import annotations

from typing import Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common

DATASOURCE_UID = "chairside-influx"
DATASOURCE_TYPE = "influxdb"

ResultFormat = Literal["time_series", "table", "logs"]


def datasource_ref() -> common.DataSourceRef:
    """The data source reference every panel, variable and annotation uses."""
    return common.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


class InfluxQLQuery(cogvariants.Dataquery):
    """One raw InfluxQL target, serialised the way Grafana stores it."""

    def __init__(
        self,
        query: str,
        ref_id: str = "A",
        result_format: ResultFormat = "time_series",
        alias: str | None = None,
        hide: bool = False,
    ) -> None:
        self.query = query
        self.ref_id = ref_id
        self.result_format: ResultFormat = result_format
        self.alias = alias
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "datasource": {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID},
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.result_format,
        }
        if self.alias:
            payload["alias"] = self.alias
        if self.hide:
            payload["hide"] = True
        return payload


class InfluxQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder for :class:`InfluxQLQuery`, usable wherever the SDK takes a target."""

    def __init__(self, query: str) -> None:
        self._internal = InfluxQLQuery(query)

    def build(self) -> InfluxQLQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def result_format(self, result_format: ResultFormat) -> Self:
        self._internal.result_format = result_format
        return self

    def alias(self, alias: str) -> Self:
        """Series name pattern, e.g. ``$tag_chair``."""
        self._internal.alias = alias
        return self

    def hide(self, hide: bool = True) -> Self:
        self._internal.hide = hide
        return self
