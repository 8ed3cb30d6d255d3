"""The Chairside alarm engine (issue #4): profiles, conditions, state machines.

Adjunct monitoring software, not a validated medical device: see docs/alarms.md.
"""

from .engine import AlarmEngine, AlarmState
from .profile import (
    DEFAULT_PROFILE_PATH,
    AuditRecord,
    ChairProfile,
    Condition,
    Profile,
    ProfileError,
    load_profile,
    parse_profile,
)

__all__ = [
    "DEFAULT_PROFILE_PATH",
    "AlarmEngine",
    "AlarmState",
    "AuditRecord",
    "ChairProfile",
    "Condition",
    "Profile",
    "ProfileError",
    "load_profile",
    "parse_profile",
]
