"""The real alarm engine with the adult profile, except that ``spo2_low`` has
no delay, so a pipeline test sees its alarm on the first low reading."""

from __future__ import annotations

import json

from chairside.alarms.engine import AlarmEngine
from chairside.alarms.profile import DEFAULT_PROFILE_PATH, parse_profile


def instant_engine() -> AlarmEngine:
    raw = json.loads(DEFAULT_PROFILE_PATH.read_text())
    raw["conditions"]["spo2_low"]["delay_s"] = 0
    return AlarmEngine(parse_profile(raw))
