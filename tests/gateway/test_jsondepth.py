"""The nesting guard every decoder of untrusted payloads asks first."""

from __future__ import annotations

import json

import pytest

from chairside.ingest.validate import Rejected, validate
from chairside.jsondepth import MAX_DEPTH, too_deep
from chairside.pager.inbound import decode_payload


@pytest.mark.parametrize(("text", "deep"), [
    ('{"v":1,"seq":3,"st":"ok"}', False),
    ("[" * MAX_DEPTH + "]" * MAX_DEPTH, False),  # exactly the limit
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), True),
    ('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), True),
    ('{"note":"' + "[" * 100 + '"}', False),  # brackets inside a string do not nest
    ('{"note":"\\"' + "[" * 100 + '"}', False),  # nor after an escaped quote
    ("[[]]" * 100, False),  # many brackets, shallow
    ("[" * 5000, True),  # unterminated: still refused before decoding
])
def test_nesting_depth(text: str, deep: bool) -> None:
    assert too_deep(text.encode()) is deep
    assert too_deep(text) is deep


def test_deep_payloads_are_refused_with_a_reason_before_json_recurses() -> None:
    bomb = b"[" * 1_000  # fits the gateway's 1 KB limit, and json.loads would recurse 1,000 deep
    got = validate("chairside/v1/clinic1/3/vitals", bomb)
    assert isinstance(got, Rejected) and got.reason == "not_json" and "nested deeper" in got.detail
    assert decode_payload(bomb) == "JSON nested too deeply"
    assert json.loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)  # what passes the guard decodes
