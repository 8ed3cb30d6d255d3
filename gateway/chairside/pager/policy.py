"""Escalation policy: who is paged, through which channels, and when.

The policy is a JSON file validated into frozen value objects.  Validation
collects every problem and names the field (``rota[1].levels[0]: unknown
person 'bob'``) so a clinic engineer can fix the file in one pass.

Rota resolution is a pure function of the policy, the level and an aware
``datetime`` (:func:`on_call`); nothing here reads the clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ChannelType = Literal["email", "sms", "webhook", "mqtt"]
CHANNEL_TYPES: tuple[str, ...] = ("email", "sms", "webhook", "mqtt")
PRIORITIES: tuple[str, ...] = ("high", "medium", "low")
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class PolicyError(ValueError):
    """The policy file is invalid; ``errors`` lists ``field: problem`` lines."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid pager policy:\n  " + "\n  ".join(self.errors))


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One way to reach a person.  ``to`` is the address for email/sms;
    ``url``/``routing_key`` are for the webhook; mqtt needs neither."""

    type: ChannelType
    to: str = ""
    url: str = ""
    routing_key: str = ""

    @property
    def target(self) -> str:
        if self.type in ("email", "sms"):
            return self.to
        if self.type == "webhook":
            return self.url
        return "pages-topic"


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    name: str
    channels: tuple[ChannelSpec, ...]


@dataclass(frozen=True, slots=True)
class Shift:
    """A rota entry: on ``days`` from ``start`` to ``end`` (minutes after
    local midnight) the ``levels`` are on call.  ``end <= start`` means the
    shift runs past midnight; its weekday is the day it starts."""

    days: frozenset[int]
    start: int
    end: int
    levels: tuple[str, ...]

    def covers(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        previous = (weekday - 1) % 7
        return (weekday in self.days and minute >= self.start) or (
            previous in self.days and minute < self.end
        )


@dataclass(frozen=True, slots=True)
class PriorityRule:
    """``page``: whether this priority pages at all; ``delay_s``: the alarm
    must still be active this long before the first page; ``ack_timeout_s``:
    time a level has to acknowledge before the next level is paged."""

    page: bool
    delay_s: float
    ack_timeout_s: float


@dataclass(frozen=True, slots=True)
class RetryRule:
    attempts: int = 2
    backoff_s: float = 1.0
    factor: float = 2.0
    max_backoff_s: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Wait before retry number ``attempt`` (1 = first retry)."""
        return float(min(self.max_backoff_s, self.backoff_s * self.factor ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class RateRule:
    max_pages: int = 10
    window_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int = 25
    sender: str = "chairside-pager@localhost"
    timeout_s: float = 10.0
    starttls: bool = False
    username: str = ""
    password_env: str = ""


@dataclass(frozen=True, slots=True)
class AckConfig:
    base_url: str = "http://127.0.0.1:8088"
    listen: str = "127.0.0.1"
    port: int = 8088
    token_ttl_s: float = 4 * 3600.0
    secret_env: str = "CHAIRSIDE_PAGER_SECRET"


@dataclass(frozen=True, slots=True)
class Policy:
    timezone: str
    people: Mapping[str, Person]
    rota: tuple[Shift, ...]
    fallback: tuple[str, ...]
    priorities: Mapping[str, PriorityRule]
    max_rounds: int = 3
    flap_window_s: float = 120.0
    retry: RetryRule = field(default_factory=RetryRule)
    rate_limit: RateRule = field(default_factory=RateRule)
    smtp: SmtpConfig | None = None
    webhook_timeout_s: float = 5.0
    ack: AckConfig = field(default_factory=AckConfig)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def rule(self, priority: str) -> PriorityRule:
        return self.priorities[priority]


# --------------------------------------------------------------------------- rota


def levels_at(policy: Policy, when: datetime) -> tuple[Person, ...]:
    """Everyone on call at ``when`` (aware datetime), level 1 first.

    The first rota shift covering the local time wins; when none does, the
    ``fallback`` levels are on call, so every alarm has an owner.
    """
    if when.tzinfo is None:
        raise ValueError("when must be timezone-aware")
    local = when.astimezone(policy.tz)
    minute = local.hour * 60 + local.minute
    ids = policy.fallback
    for shift in policy.rota:
        if shift.covers(local.weekday(), minute):
            ids = shift.levels
            break
    return tuple(policy.people[i] for i in ids)


def on_call(policy: Policy, level: int, when: datetime) -> Person:
    """The person at escalation ``level`` (1-based) at ``when``.  A level
    deeper than the shift's list goes to its last person."""
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    people = levels_at(policy, when)
    return people[min(level, len(people)) - 1]


# --------------------------------------------------------------------- validation


class _Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{path}: {msg}")

    def obj(self, value: Any, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.err(path, f"expected an object, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                self.err(f"{path}.{key}" if path else str(key), "unknown field")
        return value

    def num(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        default: float | None,
        lo: float,
        hi: float,
    ) -> float:
        where = f"{path}.{key}" if path else key
        if key not in data:
            if default is None:
                self.err(where, "required")
                return lo
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.err(where, f"expected a number, got {value!r}")
            return default if default is not None else lo
        if not lo <= value <= hi:
            self.err(where, f"must be between {lo:g} and {hi:g}, got {value!r}")
        return float(value)

    def text(self, data: Mapping[str, Any], key: str, path: str, default: str | None) -> str:
        where = f"{path}.{key}" if path else key
        if key not in data:
            if default is None:
                self.err(where, "required")
                return ""
            return default
        value = data[key]
        if not isinstance(value, str) or not value:
            self.err(where, f"expected a non-empty string, got {value!r}")
            return default or ""
        return value

    def flag(self, data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.err(f"{path}.{key}", f"expected true or false, got {value!r}")
            return default
        return value


def _hhmm(c: _Checker, value: Any, path: str) -> int:
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        c.err(path, f"expected HH:MM (00:00-23:59), got {value!r}")
        return 0
    return int(value[:2]) * 60 + int(value[3:])


def _channel(c: _Checker, raw: Any, path: str) -> ChannelSpec | None:
    data = c.obj(raw, path, ("type", "to", "url", "routing_key"))
    kind = data.get("type")
    if kind not in CHANNEL_TYPES:
        c.err(f"{path}.type", f"expected one of {', '.join(CHANNEL_TYPES)}, got {kind!r}")
        return None
    if kind in ("email", "sms"):
        to = c.text(data, "to", path, None)
        if to and not _EMAIL.fullmatch(to):
            c.err(f"{path}.to", f"expected an email address, got {to!r}")
        return ChannelSpec(type=kind, to=to)
    if kind == "webhook":
        url = c.text(data, "url", path, None)
        if url and not url.startswith(("http://", "https://")):
            c.err(f"{path}.url", f"expected an http(s) URL, got {url!r}")
        key = c.text(data, "routing_key", path, "chairside")
        return ChannelSpec(type="webhook", url=url, routing_key=key)
    return ChannelSpec(type="mqtt")


def _levels(c: _Checker, raw: Any, path: str, people: Mapping[str, Any]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        c.err(path, "expected a non-empty list of person ids")
        return ()
    out: list[str] = []
    for i, pid in enumerate(raw):
        if not isinstance(pid, str) or pid not in people:
            c.err(f"{path}[{i}]", f"unknown person {pid!r}")
        else:
            out.append(pid)
    return tuple(out)


def parse_policy(raw: Any) -> Policy:
    """Validate a decoded policy document; raise :class:`PolicyError` naming
    every bad field."""
    c = _Checker()
    top = c.obj(
        raw,
        "",
        (
            "v",
            "timezone",
            "people",
            "rota",
            "fallback",
            "priorities",
            "max_rounds",
            "flap_window_s",
            "retry",
            "rate_limit",
            "smtp",
            "webhook",
            "ack",
            "doc",
        ),
    )
    if top.get("v", 1) != 1:
        c.err("v", f"unsupported policy version {top.get('v')!r}")

    tzname = c.text(top, "timezone", "", "UTC")
    try:
        ZoneInfo(tzname)
    except (ZoneInfoNotFoundError, ValueError):
        c.err("timezone", f"unknown time zone {tzname!r}")
        tzname = "UTC"

    people: dict[str, Person] = {}
    raw_people = top.get("people")
    if not isinstance(raw_people, Mapping) or not raw_people:
        c.err("people", "expected a non-empty object of person id -> person")
        raw_people = {}
    for pid, praw in raw_people.items():
        path = f"people.{pid}"
        if not isinstance(pid, str) or not _ID.fullmatch(pid):
            c.err(path, "person id must match [a-z0-9][a-z0-9_.-]{0,31}")
        pdata = c.obj(praw, path, ("name", "channels"))
        name = c.text(pdata, "name", path, pid)
        chans_raw = pdata.get("channels")
        channels: list[ChannelSpec] = []
        if not isinstance(chans_raw, list) or not chans_raw:
            c.err(f"{path}.channels", "expected a non-empty list of channels")
        else:
            for i, ch in enumerate(chans_raw):
                spec = _channel(c, ch, f"{path}.channels[{i}]")
                if spec is not None:
                    channels.append(spec)
        people[pid] = Person(id=pid, name=name, channels=tuple(channels))

    rota: list[Shift] = []
    raw_rota = top.get("rota", [])
    if not isinstance(raw_rota, list):
        c.err("rota", "expected a list of shifts")
        raw_rota = []
    for i, sraw in enumerate(raw_rota):
        path = f"rota[{i}]"
        sdata = c.obj(sraw, path, ("days", "start", "end", "levels", "name"))
        days_raw = sdata.get("days")
        days: set[int] = set()
        if not isinstance(days_raw, list) or not days_raw:
            c.err(f"{path}.days", f"expected a non-empty list of {', '.join(DAYS)}")
        else:
            for j, d in enumerate(days_raw):
                if d not in DAYS:
                    c.err(f"{path}.days[{j}]", f"expected one of {', '.join(DAYS)}, got {d!r}")
                else:
                    days.add(DAYS.index(d))
        start = _hhmm(c, sdata.get("start"), f"{path}.start")
        end = _hhmm(c, sdata.get("end"), f"{path}.end")
        levels = _levels(c, sdata.get("levels"), f"{path}.levels", raw_people)
        rota.append(Shift(days=frozenset(days), start=start, end=end, levels=levels))

    fallback = _levels(c, top.get("fallback"), "fallback", raw_people)

    priorities: dict[str, PriorityRule] = {}
    prio_raw = c.obj(top.get("priorities"), "priorities", PRIORITIES)
    for prio in PRIORITIES:
        path = f"priorities.{prio}"
        if prio not in prio_raw:
            c.err(path, "required (every priority must say whether and when it pages)")
            continue
        pdata = c.obj(prio_raw[prio], path, ("page", "delay_s", "ack_timeout_s"))
        priorities[prio] = PriorityRule(
            page=c.flag(pdata, "page", path, True),
            delay_s=c.num(pdata, "delay_s", path, 0.0, 0, 86400),
            ack_timeout_s=c.num(pdata, "ack_timeout_s", path, None, 1, 86400),
        )

    max_rounds = int(c.num(top, "max_rounds", "", 3, 1, 1000))
    flap_window_s = c.num(top, "flap_window_s", "", 120.0, 0, 86400)

    rdata = c.obj(
        top.get("retry", {}), "retry", ("attempts", "backoff_s", "factor", "max_backoff_s")
    )
    retry = RetryRule(
        attempts=int(c.num(rdata, "attempts", "retry", 2, 1, 10)),
        backoff_s=c.num(rdata, "backoff_s", "retry", 1.0, 0, 300),
        factor=c.num(rdata, "factor", "retry", 2.0, 1, 10),
        max_backoff_s=c.num(rdata, "max_backoff_s", "retry", 10.0, 0, 600),
    )

    ldata = c.obj(top.get("rate_limit", {}), "rate_limit", ("max_pages", "window_s"))
    rate = RateRule(
        max_pages=int(c.num(ldata, "max_pages", "rate_limit", 10, 1, 10000)),
        window_s=c.num(ldata, "window_s", "rate_limit", 3600.0, 1, 7 * 86400),
    )

    smtp: SmtpConfig | None = None
    if "smtp" in top:
        sp = "smtp"
        sdata = c.obj(
            top["smtp"],
            sp,
            ("host", "port", "from", "timeout_s", "starttls", "username", "password_env"),
        )
        smtp = SmtpConfig(
            host=c.text(sdata, "host", sp, None),
            port=int(c.num(sdata, "port", sp, 25, 1, 65535)),
            sender=c.text(sdata, "from", sp, "chairside-pager@localhost"),
            timeout_s=c.num(sdata, "timeout_s", sp, 10.0, 0.1, 120),
            starttls=c.flag(sdata, "starttls", sp, False),
            username=c.text(sdata, "username", sp, ""),
            password_env=c.text(sdata, "password_env", sp, ""),
        )
    elif any(ch.type in ("email", "sms") for p in people.values() for ch in p.channels):
        c.err("smtp", "required because a person has an email or sms channel")

    wdata = c.obj(top.get("webhook", {}), "webhook", ("timeout_s",))
    webhook_timeout_s = c.num(wdata, "timeout_s", "webhook", 5.0, 0.1, 120)

    adata = c.obj(
        top.get("ack", {}), "ack", ("base_url", "listen", "port", "token_ttl_s", "secret_env")
    )
    ack = AckConfig(
        base_url=c.text(adata, "base_url", "ack", "http://127.0.0.1:8088").rstrip("/"),
        listen=c.text(adata, "listen", "ack", "127.0.0.1"),
        port=int(c.num(adata, "port", "ack", 8088, 0, 65535)),
        token_ttl_s=c.num(adata, "token_ttl_s", "ack", 4 * 3600.0, 60, 7 * 86400),
        secret_env=c.text(adata, "secret_env", "ack", "CHAIRSIDE_PAGER_SECRET"),
    )
    if not ack.base_url.startswith(("http://", "https://")):
        c.err("ack.base_url", f"expected an http(s) URL, got {ack.base_url!r}")

    if c.errors:
        raise PolicyError(c.errors)
    return Policy(
        timezone=tzname,
        people=people,
        rota=tuple(rota),
        fallback=fallback,
        priorities=priorities,
        max_rounds=max_rounds,
        flap_window_s=flap_window_s,
        retry=retry,
        rate_limit=rate,
        smtp=smtp,
        webhook_timeout_s=webhook_timeout_s,
        ack=ack,
    )


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError([f"(file): cannot read {path}: {exc.strerror}"]) from exc
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} col {exc.colno}"
        raise PolicyError([f"(file): not JSON at {where}: {exc.msg}"]) from exc
    return parse_policy(raw)

