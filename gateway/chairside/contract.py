"""The gateway's view of ``contract.json``: topics, field specs, Influx schema.

The JSON file is the single source of truth shared with the firmware; this
module only loads it (once, through :mod:`importlib.resources`) and answers
questions about it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, Final, cast

from chairside.model import MessageKind

BOX_KINDS: Final[tuple[MessageKind, ...]] = ("vitals", "nibp", "status", "resp")


@cache
def load() -> Mapping[str, Any]:
    """The parsed contract (cached; treat as read-only)."""
    text = resources.files("chairside").joinpath("contract.json").read_text(encoding="utf-8")
    return cast(Mapping[str, Any], json.loads(text))


def schema_version() -> int:
    return int(load()["schema_version"])


def topic_root() -> str:
    return str(load()["topic_root"])


def max_payload_bytes() -> int:
    return int(load()["max_payload_bytes"])


@cache
def id_regex() -> re.Pattern[str]:
    return re.compile(str(load()["id_pattern"]))


def topic_pattern(kind: str) -> str:
    """The contract's pattern for ``kind``, e.g. ``chairside/v1/{site}/{chair}/vitals``."""
    return str(load()["topics"][kind]["pattern"])


def topic_qos(kind: str) -> int:
    return int(load()["topics"][kind]["qos"])


def topic_retain(kind: str) -> bool:
    return bool(load()["topics"][kind]["retain"])


def topic(kind: str, site: str, chair: str) -> str:
    """Build the topic for ``kind`` at one chair (``KeyError`` for an unknown kind)."""
    return topic_pattern(kind).format(site=site, chair=chair)


def subscription(kind: str) -> str:
    """MQTT filter matching ``kind`` for every site and chair."""
    return topic_pattern(kind).format(site="+", chair="+")


@cache
def _box_topic_regex() -> re.Pattern[str]:
    # Only per-chair box topics are parsed: root/site/chair/<kind>.
    root = re.escape(topic_root())
    kinds = "|".join(re.escape(k) for k in BOX_KINDS)
    return re.compile(rf"^{root}/([^/]+)/([^/]+)/({kinds})$")


def parse_topic(name: str) -> tuple[str, str, MessageKind] | None:
    """``(site, chair, kind)`` for a box topic with valid ids, else ``None``."""
    match = _box_topic_regex().match(name)
    if match is None:
        return None
    site, chair, kind = match.group(1), match.group(2), match.group(3)
    ids = id_regex()
    if not ids.fullmatch(site) or not ids.fullmatch(chair):
        return None
    return site, chair, cast(MessageKind, kind)


def common_fields() -> Mapping[str, Mapping[str, Any]]:
    return cast(Mapping[str, Mapping[str, Any]], load()["common_fields"])


def message_fields(kind: str) -> Mapping[str, Mapping[str, Any]]:
    return cast(Mapping[str, Mapping[str, Any]], load()["messages"][kind]["fields"])


def measurement(name: str) -> Mapping[str, Any]:
    """Influx measurement spec: ``{"tags": [...], "fields": [...]}``."""
    return cast(Mapping[str, Any], load()["influx"]["measurements"][name])


def influx_database() -> str:
    return str(load()["influx"]["database"])
