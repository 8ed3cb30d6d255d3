"""Hypothesis against the gateway's validation: any topic, any payload —
never an exception, every rejection carries a reason from the fixed set."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chairside.ingest.validate import REASONS, Accepted, Rejected, validate

FUZZ = settings(max_examples=300, deadline=200, suppress_health_check=[HealthCheck.too_slow])
KINDS = ("vitals", "nibp", "status", "resp", "cmd", "alarms", "x")
ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True) | st.text(max_size=40)
topics = st.builds(lambda s, c, k: f"chairside/v1/{s}/{c}/{k}", ids, ids, st.sampled_from(KINDS)) | st.text(max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("v", "seq", "boot", "up", "t", "sync", "h", "spo2", "pr", "sig", "st", "cuff", "state", "sys", "dia")
objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=12)


def check(result: Accepted | Rejected) -> None:
    if isinstance(result, Rejected):
        assert result.reason in REASONS, result
        assert len(result.detail) <= 120


@FUZZ
@given(topics, st.binary(max_size=600))
def test_random_bytes_never_crash(topic: str, payload: bytes) -> None:
    check(validate(topic, payload))


@FUZZ
@given(topics, objects, st.booleans())
def test_random_objects_never_crash(topic: str, obj: dict[str, object], strict: bool) -> None:
    try:
        payload = json.dumps(obj, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return
    check(validate(topic, payload, strict=strict))


@FUZZ
@given(st.sampled_from(("vitals", "nibp", "status")), objects)
def test_valid_envelope_with_random_fields(kind: str, extra: dict[str, object]) -> None:
    msg: dict[str, object] = {"v": 1, "seq": 1, "boot": 1, "up": 1000, "t": 1_790_000_000_000, "sync": 1, "h": 0}
    msg.update(extra)
    check(validate(f"chairside/v1/s1/c1/{kind}", json.dumps(msg, allow_nan=True).encode()))
