"""Alarm profiles: load and validate, plus a per-chair override layer.

A profile is JSON (``chairside/profiles/adult.json`` is the default).  Loading
validates the whole document and reports *every* problem with the path of the
field, e.g. ``conditions.spo2_low.limit: expected number``.

Per-chair overrides are set at run time (MQTT ``limits_set``) through
:meth:`ChairProfile.set_param`; each change returns an :class:`AuditRecord`
(who, when, old → new).  An override is applied by re-validating the whole
profile with the new value, so an override can never produce a profile the
loader would reject.  ``value=None`` removes the override (back to default).

Why this module is longer than ~500 lines: one file holds the profile's whole schema: the loader, its
validation (every field's type and range, with the reason for each
refusal) and the per-chair override layer that must validate with the same
rules; a second file would duplicate the rules or import them back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from chairside.model import AlarmKind, Priority

DEFAULT_PROFILE_PATH: Final[Path] = (
    Path(__file__).resolve().parent.parent / "profiles" / "adult.json"
)

OPS: Final[frozenset[str]] = frozenset({"<", "<=", ">", ">="})
CHECKS: Final[frozenset[str]] = frozenset(
    {"threshold", "afib", "probe", "module", "nibp_error", "offline", "stale", "unsynced"}
)
MODES: Final[frozenset[str]] = frozenset({"delay", "satseconds"})
PRIORITIES: Final[frozenset[str]] = frozenset({"high", "medium", "low"})
KINDS: Final[frozenset[str]] = frozenset({"physiological", "technical"})
MEASUREMENTS: Final[frozenset[str]] = frozenset({"vitals", "nibp"})
# numeric fields a threshold may watch, with the contract's value range
FIELD_RANGES: Final[Mapping[str, tuple[float, float]]] = {
    "spo2": (0, 100),
    "pr": (0, 300),
    "sys": (0, 300),
    "dia": (0, 300),
    "map": (0, 300),
}
MEASUREMENT_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "vitals": frozenset({"spo2", "pr"}),
    "nibp": frozenset({"sys", "dia", "map", "pr"}),
}
MAX_PHYSIOLOGICAL_DELAY_S: Final = 60.0

# parameters that limits_set may change (value is a number; booleans as 0/1).
# Priority, operator, check and text are deliberately not settable over MQTT.
SETTABLE_TOP: Final[frozenset[str]] = frozenset(
    {
        "renotify_after_ack_s",
        "stale_after_s",
        "cuff_interlock",
        "cuff_interlock_max_s",
        "flap_violations",
        "flap_window_s",
    }
)
SETTABLE_CONDITION: Final[frozenset[str]] = frozenset(
    {
        "limit",
        "alt_limit",
        "delay_s",
        "clear_hysteresis",
        "clear_hold_s",
        "latching",
        "cuff_hold",
        "satseconds_limit",
        "window_s",
        "irregularity",
        "min_valid_fraction",
    }
)
BOOL_PARAMS: Final[frozenset[str]] = frozenset({"cuff_interlock", "latching", "cuff_hold"})


class ProfileError(ValueError):
    """A profile (or an override) is invalid; ``errors`` name each bad field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Condition:
    """One alarm condition of a profile (see docs/alarms.md for each check)."""

    name: str
    check: str
    measurement: str | None
    field: str | None
    op: str | None
    limit: float | None
    priority: Priority
    kind: AlarmKind
    delay_s: float
    clear_hysteresis: float
    latching: bool
    text: str
    mode: str = "delay"
    satseconds_limit: float | None = None
    alt_field: str | None = None
    alt_op: str | None = None
    alt_limit: float | None = None
    inhibits: tuple[str, ...] = ()
    cuff_hold: bool = False
    window_s: float | None = None
    irregularity: float | None = None
    min_valid_fraction: float = 0.8
    clear_hold_s: float = 0.0
    """an announced alarm counts as recovered only after every reading for this
    long was recovered (an off-delay: a value flapping across the hysteresis
    band stays one alarm)"""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    version: int
    conditions: Mapping[str, Condition]
    renotify_after_ack_s: float
    stale_after_s: float
    cuff_interlock: bool
    cuff_interlock_max_s: float
    flap_violations: int
    flap_window_s: float
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One limit change: stored in the ``limit_audit`` measurement."""

    site: str
    chair: str
    param: str
    old: float | None
    new: float | None
    by: str
    reason: str
    t: int
    reset: bool = False


class _Checker:
    """Collects field-named errors while reading a JSON mapping."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        nullable: bool = False,
        lo: float | None = None,
        hi: float | None = None,
        default: float | None = None,
        required: bool = True,
    ) -> float | None:
        where = f"{path}{key}"
        if key not in obj:
            if required:
                self.fail(where, "missing")
            return default
        value = obj[key]
        if value is None:
            if not nullable:
                self.fail(where, "expected number, got null")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"expected number, got {type(value).__name__}")
            return default
        number = float(value)
        if lo is not None and number < lo:
            self.fail(where, f"must be >= {lo:g}, got {number:g}")
        if hi is not None and number > hi:
            self.fail(where, f"must be <= {hi:g}, got {number:g}")
        return number

    def boolean(
        self, obj: Mapping[str, Any], key: str, path: str, *, default: bool | None = None
    ) -> bool:
        where = f"{path}{key}"
        if key not in obj:
            if default is None:
                self.fail(where, "missing")
                return False
            return default
        value = obj[key]
        if not isinstance(value, bool):
            self.fail(where, f"expected true/false, got {type(value).__name__}")
            return False
        return value

    def string(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        choices: frozenset[str] | None = None,
        nullable: bool = False,
        default: str | None = None,
    ) -> str | None:
        where = f"{path}{key}"
        if key not in obj:
            if default is None and not nullable:
                self.fail(where, "missing")
            return default
        value = obj[key]
        if value is None:
            if not nullable:
                self.fail(where, "expected string, got null")
            return None
        if not isinstance(value, str):
            self.fail(where, f"expected string, got {type(value).__name__}")
            return default
        if choices is not None and value not in choices:
            self.fail(where, f"expected one of {', '.join(sorted(choices))}, got {value!r}")
        return value


def _condition(name: str, obj: Any, ck: _Checker, names: frozenset[str]) -> Condition | None:
    path = f"conditions.{name}."
    if not isinstance(obj, Mapping):
        ck.fail(f"conditions.{name}", "expected object")
        return None
    check = ck.string(obj, "check", path, choices=CHECKS) or "threshold"
    priority = ck.string(obj, "priority", path, choices=PRIORITIES) or "medium"
    kind = ck.string(obj, "kind", path, choices=KINDS) or "technical"
    text = ck.string(obj, "text", path) or name
    if len(text) > 120:
        ck.fail(f"{path}text", "longer than 120 characters")
    hi_delay = MAX_PHYSIOLOGICAL_DELAY_S if kind == "physiological" else 3600.0
    delay_s = ck.number(obj, "delay_s", path, lo=0, hi=hi_delay, default=0.0) or 0.0
    hysteresis = ck.number(obj, "clear_hysteresis", path, lo=0, hi=50, default=0.0) or 0.0
    clear_hold = ck.number(obj, "clear_hold_s", path, lo=0, hi=120, default=0.0, required=False) or 0.0
    latching = ck.boolean(obj, "latching", path)
    cuff_hold = ck.boolean(obj, "cuff_hold", path, default=False)
    measurement = ck.string(obj, "measurement", path, nullable=True)
    field = ck.string(obj, "field", path, nullable=True)
    op = ck.string(obj, "op", path, nullable=True)
    limit = ck.number(obj, "limit", path, nullable=True)
    mode = ck.string(obj, "mode", path, choices=MODES, default="delay") or "delay"
    satseconds_limit = ck.number(
        obj, "satseconds_limit", path, nullable=True, lo=1, hi=1000, required=False
    )
    alt_field = ck.string(obj, "alt_field", path, nullable=True)
    alt_op = ck.string(obj, "alt_op", path, nullable=True)
    alt_limit = ck.number(obj, "alt_limit", path, nullable=True, required=False)
    window_s = ck.number(obj, "window_s", path, nullable=True, lo=5, hi=600, required=False)
    irregularity = ck.number(
        obj, "irregularity", path, nullable=True, lo=0.01, hi=1, required=False
    )
    min_valid = ck.number(
        obj, "min_valid_fraction", path, lo=0.1, hi=1, default=0.8, required=False
    )
    inhibits_raw = obj.get("inhibits", [])
    inhibits: tuple[str, ...] = ()
    if not isinstance(inhibits_raw, list) or not all(isinstance(x, str) for x in inhibits_raw):
        ck.fail(f"{path}inhibits", "expected list of condition names")
    else:
        inhibits = tuple(inhibits_raw)
        for other in inhibits:
            if other not in names or other == name:
                ck.fail(f"{path}inhibits", f"unknown condition {other!r}")

    if check in ("threshold", "afib"):
        if measurement not in MEASUREMENTS:
            ck.fail(f"{path}measurement", "expected vitals or nibp")
        elif field not in MEASUREMENT_FIELDS[measurement]:
            allowed = ", ".join(sorted(MEASUREMENT_FIELDS[measurement]))
            ck.fail(f"{path}field", f"expected one of {allowed}")
        if op not in OPS:
            ck.fail(f"{path}op", "expected one of <, <=, >, >=")
        if limit is None:
            ck.fail(f"{path}limit", "expected number")
        elif field is not None and field in FIELD_RANGES:
            lo, hi = FIELD_RANGES[field]
            if not lo <= limit <= hi:
                ck.fail(f"{path}limit", f"must be within {lo:g}..{hi:g}, got {limit:g}")
        if alt_field is not None or alt_op is not None or alt_limit is not None:
            allowed_alt = MEASUREMENT_FIELDS.get(measurement or "", frozenset())
            if alt_field not in allowed_alt:
                ck.fail(f"{path}alt_field", "expected a field of the same measurement")
            if alt_op not in OPS:
                ck.fail(f"{path}alt_op", "expected one of <, <=, >, >=")
            if alt_limit is None:
                ck.fail(f"{path}alt_limit", "expected number")
            elif alt_field is not None and alt_field in FIELD_RANGES:
                lo, hi = FIELD_RANGES[alt_field]
                if not lo <= alt_limit <= hi:
                    ck.fail(f"{path}alt_limit", f"must be within {lo:g}..{hi:g}")
        if mode == "satseconds":
            if op not in ("<", "<="):
                ck.fail(f"{path}mode", "satseconds needs a low limit (op < or <=)")
            if satseconds_limit is None:
                ck.fail(f"{path}satseconds_limit", "expected number for mode satseconds")
    if check == "afib":
        if window_s is None:
            ck.fail(f"{path}window_s", "expected number")
        if irregularity is None:
            ck.fail(f"{path}irregularity", "expected number")
    return Condition(
        name=name,
        check=check,
        measurement=measurement,
        field=field,
        op=op,
        limit=limit,
        priority=cast(Priority, priority),
        kind=cast(AlarmKind, kind),
        delay_s=delay_s,
        clear_hysteresis=hysteresis,
        latching=latching,
        text=text,
        mode=mode,
        satseconds_limit=satseconds_limit,
        alt_field=alt_field,
        alt_op=alt_op,
        alt_limit=alt_limit,
        inhibits=inhibits,
        cuff_hold=cuff_hold,
        window_s=window_s,
        irregularity=irregularity,
        min_valid_fraction=min_valid if min_valid is not None else 0.8,
        clear_hold_s=clear_hold,
    )


def parse_profile(raw: Any) -> Profile:
    """Validate a decoded profile document; raise :class:`ProfileError` naming every bad field."""
    ck = _Checker()
    if not isinstance(raw, Mapping):
        raise ProfileError(["(profile): expected object"])
    name = ck.string(raw, "name", "") or "?"
    version = ck.number(raw, "version", "", lo=1) or 1
    renotify = ck.number(raw, "renotify_after_ack_s", "", lo=10, hi=3600) or 120.0
    stale = ck.number(raw, "stale_after_s", "", lo=5, hi=300) or 30.0
    cuff = ck.boolean(raw, "cuff_interlock", "")
    cuff_max = ck.number(raw, "cuff_interlock_max_s", "", lo=10, hi=300, default=60.0)
    flap_n = ck.number(raw, "flap_violations", "", lo=2, hi=20, default=3.0)
    flap_w = ck.number(raw, "flap_window_s", "", lo=10, hi=600, default=60.0)
    conditions: dict[str, Condition] = {}
    raw_conditions = raw.get("conditions")
    if not isinstance(raw_conditions, Mapping) or not raw_conditions:
        ck.fail("conditions", "expected a non-empty object")
    else:
        names = frozenset(str(k) for k in raw_conditions)
        for cname, cobj in raw_conditions.items():
            cond = _condition(str(cname), cobj, ck, names)
            if cond is not None:
                conditions[cond.name] = cond
    if ck.errors:
        raise ProfileError(ck.errors)
    return Profile(
        name=name,
        version=int(version),
        conditions=conditions,
        renotify_after_ack_s=renotify,
        stale_after_s=stale,
        cuff_interlock=cuff,
        cuff_interlock_max_s=cuff_max if cuff_max is not None else 60.0,
        flap_violations=int(flap_n if flap_n is not None else 3),
        flap_window_s=flap_w if flap_w is not None else 60.0,
        raw=copy.deepcopy(dict(raw)),
    )


def load_profile(path: Path | str | None = None) -> Profile:
    """Load and validate a profile file (default: the adult profile)."""
    source = Path(path) if path is not None else DEFAULT_PROFILE_PATH
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        message = f"{source.name}: invalid JSON at line {exc.lineno}: {exc.msg}"
        raise ProfileError([message]) from exc
    return parse_profile(raw)


def normalise_param(param: str) -> tuple[str | None, str]:
    """``"spo2_low.limit"`` → ``("spo2_low", "limit")``; ``"stale_after_s"`` → ``(None, ...)``."""
    text = param.strip()
    if text.startswith("conditions."):
        text = text[len("conditions.") :]
    if "." in text:
        cond, _, key = text.partition(".")
        return cond, key
    return None, text


def param_value(profile: Profile, param: str) -> float | None:
    """The current value of a settable parameter (booleans as 0.0/1.0)."""
    cond, key = normalise_param(param)
    holder: Any = profile.raw if cond is None else profile.raw["conditions"].get(cond, {})
    value = holder.get(key)
    if value is None:
        return None
    return float(value)


def check_param(profile: Profile, param: str) -> str:
    """Return the canonical name of a settable parameter or raise ProfileError."""
    cond, key = normalise_param(param)
    if cond is None:
        if key not in SETTABLE_TOP:
            raise ProfileError([f"{param}: not a settable parameter"])
        return key
    if cond not in profile.conditions:
        raise ProfileError([f"{param}: unknown condition {cond!r}"])
    if key not in SETTABLE_CONDITION:
        raise ProfileError([f"{param}: not a settable parameter"])
    return f"{cond}.{key}"


def apply_overrides(base: Profile, overrides: Mapping[str, float]) -> Profile:
    """A new profile: ``base`` with ``overrides`` (canonical param → value), re-validated."""
    raw: dict[str, Any] = copy.deepcopy(dict(base.raw))
    for param, value in overrides.items():
        cond, key = normalise_param(param)
        new: Any = bool(value) if key in BOOL_PARAMS else value
        if key in BOOL_PARAMS and value not in (0, 1):
            raise ProfileError([f"{param}: expected 0 or 1, got {value:g}"])
        if cond is None:
            raw[key] = new
        else:
            raw["conditions"][cond][key] = new
    return parse_profile(raw)


# Runtime (per-chair, over MQTT) overrides are bounded so that no single
# command can switch an alarm off: a limit can be moved only within a
# clinically plausible band, delays stay short, high-priority alarms keep
# latching.  Anything not listed here is changed in the profile file, not at
# run time.  Bands: adult monitor adjustment ranges seen in manuals, narrowed
# around this clinic's defaults (docs/alarms.md, "Per-chair limits").
RUNTIME_RANGES: Final[dict[str, tuple[float, float]]] = {
    "spo2_critical.limit": (75, 90),
    "spo2_low.limit": (80, 96),
    "spo2_low.satseconds_limit": (1, 100),
    "pulse_high.limit": (90, 180),
    "pulse_low.limit": (30, 70),
    "afib_rvr_suspected.limit": (90, 150),
    "sys_high.limit": (140, 220),
    "sys_low.limit": (70, 110),
    "dia_high.limit": (80, 120),
    "map_low.limit": (45, 80),
    "bp_intervention.limit": (180, 240),
    "bp_intervention.alt_limit": (100, 140),
    "renotify_after_ack_s": (30, 600),
    "stale_after_s": (10, 60),
    "cuff_interlock": (0, 1),
    "cuff_interlock_max_s": (10, 120),
    "flap_violations": (2, 10),
    "flap_window_s": (10, 300),
}
WHOLE_NUMBER_PARAMS: Final = frozenset({"flap_violations"})
RUNTIME_ANY_CONDITION: Final[dict[str, tuple[float, float]]] = {
    "delay_s": (0, 30),
    "clear_hysteresis": (0, 10),
    "clear_hold_s": (0, 30),
    "cuff_hold": (0, 1),
    "latching": (0, 1),
}


def check_runtime_value(base: Profile, name: str, value: float) -> None:
    """Refuse a per-chair override outside its safe band (ProfileError names it)."""
    cond, _, key = name.rpartition(".")
    band = RUNTIME_RANGES.get(name) or (RUNTIME_ANY_CONDITION.get(key) if cond else None)
    if band is None:
        raise ProfileError([f"{name}: not adjustable per chair; change the profile file"])
    lo, hi = band
    if not lo <= value <= hi:
        raise ProfileError([f"{name}: {value:g} outside the per-chair range {lo:g}..{hi:g}"])
    if name in WHOLE_NUMBER_PARAMS and value != int(value):
        raise ProfileError([f"{name}: expected a whole number, got {value:g}"])
    if key == "latching" and value == 0 and base.conditions[cond].priority == "high":
        raise ProfileError([f"{name}: high-priority alarms always latch"])


class ChairProfile:
    """The effective profile of one chair: a base profile plus audited overrides."""

    def __init__(self, base: Profile, site: str, chair: str) -> None:
        self.base = base
        self.site = site
        self.chair = chair
        self.overrides: dict[str, float] = {}
        self.effective = base
        self.history: list[AuditRecord] = []

    def set_param(
        self, param: str, value: float | None, by: str, reason: str, now_ms: int
    ) -> AuditRecord:
        """Override ``param`` (``None``: back to the default); returns the audit record.

        Raises :class:`ProfileError` (field-named) and changes nothing when the
        parameter is unknown, not settable, or the value fails validation.
        """
        if not isinstance(by, str) or not by.strip():
            raise ProfileError(["by: expected a non-empty name"])
        name = check_param(self.base, param)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ProfileError([f"{name}: expected number or null"])
        if value is not None:
            check_runtime_value(self.base, name, float(value))
        old = param_value(self.effective, name)
        overrides = dict(self.overrides)
        if value is None:
            overrides.pop(name, None)
        else:
            overrides[name] = float(value)
        effective = apply_overrides(self.base, overrides)
        self.overrides = overrides
        self.effective = effective
        reset = value is None
        why = reason.strip() if isinstance(reason, str) else ""
        if reset:
            why = "reset to default" + (f"; {why}" if why else "")
        record = AuditRecord(
            site=self.site,
            chair=self.chair,
            param=name,
            old=old,
            new=param_value(effective, name),
            by=by.strip(),
            reason=why,
            t=now_ms,
            reset=reset,
        )
        self.history.append(record)
        return record
