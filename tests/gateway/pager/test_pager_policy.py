"""Policy validation (field-named errors) and rota resolution (pure)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from chairside.pager.policy import PolicyError, levels_at, load_policy, on_call, parse_policy

EXAMPLE = Path(__file__).resolve().parents[3] / "gateway/chairside/pager/example-policy.json"
LONDON = ZoneInfo("Europe/London")


def base() -> dict[str, Any]:
    return {
        "timezone": "Europe/London",
        "people": {
            "day1": {"channels": [{"type": "mqtt"}]},
            "day2": {"channels": [{"type": "mqtt"}]},
            "night": {"channels": [{"type": "mqtt"}]},
            "boss": {"channels": [{"type": "webhook", "url": "http://127.0.0.1:9/x"}]},
        },
        "rota": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00",
             "levels": ["day1", "day2", "boss"]},
            {"days": ["fri"], "start": "22:00", "end": "06:00", "levels": ["night", "boss"]},
        ],
        "fallback": ["boss"],
        "priorities": {
            "high": {"delay_s": 0, "ack_timeout_s": 60},
            "medium": {"delay_s": 30, "ack_timeout_s": 120},
            "low": {"page": False, "ack_timeout_s": 600},
        },
    }  # fmt: skip


def local(y: int, mo: int, d: int, h: int, mi: int) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=LONDON)


# 2024-06-03 is a Monday; 2024-06-07 a Friday; 2024-06-08 a Saturday.
ROTA_CASES = [
    ("monday morning level 1", local(2024, 6, 3, 9, 0), 1, "day1"),
    ("monday morning level 2", local(2024, 6, 3, 9, 0), 2, "day2"),
    ("monday morning level 3", local(2024, 6, 3, 9, 0), 3, "boss"),
    ("level deeper than the shift goes to its last person", local(2024, 6, 3, 9, 0), 7, "boss"),
    ("start minute is inclusive", local(2024, 6, 3, 8, 0), 1, "day1"),
    ("end minute is exclusive -> fallback", local(2024, 6, 3, 18, 0), 1, "boss"),
    ("saturday daytime -> fallback", local(2024, 6, 8, 12, 0), 1, "boss"),
    ("friday overnight, before midnight", local(2024, 6, 7, 23, 30), 1, "night"),
    ("friday overnight, after midnight (saturday)", local(2024, 6, 8, 5, 59), 1, "night"),
    ("friday overnight ends 06:00", local(2024, 6, 8, 6, 0), 1, "boss"),
    ("thursday night is not covered by the friday shift", local(2024, 6, 7, 1, 0), 1, "boss"),
    ("UTC input converted to London summer time", datetime(2024, 6, 3, 7, 30, tzinfo=UTC), 1,
     "day1"),
    ("UTC input in winter (no offset)", datetime(2024, 1, 8, 7, 30, tzinfo=UTC), 1, "boss"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "when", "level", "expected"), ROTA_CASES, ids=[c[0] for c in ROTA_CASES])
def test_on_call_table(name: str, when: datetime, level: int, expected: str) -> None:
    policy = parse_policy(base())
    assert on_call(policy, level, when).id == expected, name


def test_levels_at_and_bad_inputs() -> None:
    policy = parse_policy(base())
    assert [p.id for p in levels_at(policy, local(2024, 6, 7, 23, 0))] == ["night", "boss"]
    with pytest.raises(ValueError, match="aware"):
        on_call(policy, 1, datetime(2024, 6, 3, 9, 0))
    with pytest.raises(ValueError, match="level"):
        on_call(policy, 0, local(2024, 6, 3, 9, 0))


def _mutate(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base())
    node: Any = doc
    parts = path.split("/")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


ERROR_CASES = [
    ("rota/0/levels/1", "bob", "rota[0].levels[1]: unknown person 'bob'"),
    ("rota/0/start", "25:00", "rota[0].start: expected HH:MM"),
    ("rota/1/days", ["friday"], "rota[1].days[0]: expected one of"),
    ("timezone", "Mars/Olympus", "timezone: unknown time zone"),
    ("fallback", [], "fallback: expected a non-empty list"),
    ("priorities/medium", KeyError, "priorities.medium: required"),
    ("priorities/high/ack_timeout_s", 0, "priorities.high.ack_timeout_s: must be between"),
    ("priorities/high/ack_timeout_s", KeyError, "priorities.high.ack_timeout_s: required"),
    ("priorities/low/page", "no", "priorities.low.page: expected true or false"),
    ("people/day1/channels", [{"type": "pigeon"}], "people.day1.channels[0].type: expected one of"),
    ("people/day1/channels", [{"type": "email", "to": "x@y.z"}], "smtp: required"),
    ("people/day1/channels", [{"type": "sms", "to": "nope"}], "people.day1.channels[0].to:"),
    ("people/boss/channels", [{"type": "webhook", "url": "ftp://x"}],
     "people.boss.channels[0].url: expected an http(s) URL"),
    ("people/Bad Id", {"channels": [{"type": "mqtt"}]}, "people.Bad Id: person id must match"),
    ("rate_limit", {"max_pages": 0}, "rate_limit.max_pages: must be between"),
    ("retry", {"attempts": 99}, "retry.attempts: must be between"),
    ("max_rounds", 0, "max_rounds: must be between"),
    ("escalate_after", 5, "escalate_after: unknown field"),
    ("ack", {"base_url": "chairside.lan"}, "ack.base_url: expected an http(s) URL"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_validation_names_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(_mutate(path, value))
    assert any(message in e for e in info.value.errors), info.value.errors


def test_all_errors_reported_at_once() -> None:
    doc = _mutate("rota/0/start", "8am")
    doc["fallback"] = ["ghost"]
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    fields = {e.split(":")[0] for e in info.value.errors}
    assert {"rota[0].start", "fallback[0]"} <= fields


def test_example_policy_is_valid(tmp_path: Path) -> None:
    policy = load_policy(EXAMPLE)
    assert on_call(policy, 1, local(2024, 6, 3, 10, 0)).id == "nurse-lead"
    assert on_call(policy, 1, local(2024, 6, 4, 2, 0)).id == "on-call-night"
    assert policy.rule("low").page is False
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match="not JSON"):
        load_policy(bad)
