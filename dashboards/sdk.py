"""The grafana-foundation-sdk modules the dashboards use, imported once.

The SDK's classic (v1) dashboard model warns at import that v2 exists;
Grafana's file provisioner and ``/api/dashboards/db`` take the v1 JSON, so the
warning is silenced here and every dashboard module imports the SDK from here.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as dm

__all__ = [
    "JSONEncoder",
    "cogbuilder",
    "common",
    "common_builders",
    "dash",
    "dm",
    "stat",
    "statetimeline",
    "table",
    "timeseries",
]
