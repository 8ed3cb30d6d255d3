"""Staff messages that Python's JSON decoder or float() cannot take, and text
that cannot be stored: refused with a reason by the adapter, never raised
(issue 15, points 1 and 4)."""

from __future__ import annotations

import pytest

from chairside.alarms.adapter import (
    AckCommand,
    LimitsCommand,
    Rejected,
    parse_ack,
    parse_limits_set,
    parse_who,
)
from chairside.alarms.profile import load_profile


def limit(value: str = "88", by: str = '"RN Lee"', extra: str = "") -> bytes:
    return f'{{"v":1,"param":"spo2_low.limit","value":{value},"by":{by}{extra}}}'.encode()


REFUSED = [
    ("deep_1100", b"[" * 1100, "too_large", "1100 bytes"),
    ("deep_under_1k", b'{"v":1,"by":' + b"[" * 1000 + b"}", "bad_json", "nested too deeply"),
    ("deep_objects", limit(by='{"a":' * 150 + "1" + "}" * 150), "bad_json", "nested too deeply"),
    ("float_1e400", limit("1e400"), "bad_field", "value: not a finite number"),
    ("float_minus_1e400", limit("-1e400"), "bad_field", "value: not a finite number"),
    ("int_400_digits", limit("1" + "0" * 400), "bad_field", "value: not a finite number"),
    ("nan", limit("NaN"), "bad_json", "NaN"),
    ("infinity", limit("Infinity"), "bad_json", "Infinity"),
    ("by_lone_surrogate", limit(by='"\\ud800"'), "bad_field", "by: lone surrogate U+D800"),
    ("by_control", limit(by='"RN\\nLee"'), "bad_field", "by: control character U+000A"),
    ("reason_surrogate", limit(extra=',"reason":"COPD \\udfff"'), "bad_field", "reason: lone surrogate"),
    ("reason_escape", limit(extra=',"reason":"\\u001b[31m"'), "bad_field", "reason: control character"),
    ("reason_not_text", limit(extra=',"reason":5'), "bad_field", "reason"),
    ("param_control", b'{"v":1,"param":"spo2_low.limit\\u0000","value":88,"by":"x"}', "bad_field",
     "param: control character U+0000"),
    ("param_long", b'{"v":1,"param":"' + b"p" * 65 + b'","value":88,"by":"x"}', "bad_field", "param"),
    ("id_surrogate", limit(extra=',"id":"\\ud83d"'), "bad_field", "id: lone surrogate"),
    ("id_long", limit(extra=',"id":"' + "i" * 37 + '"'), "bad_field", "id: longer than 36"),
    ("id_not_text", limit(extra=',"id":7'), "bad_field", "id"),
    # a surrogate encoded as bytes (not UTF-8; json.loads(bytes) alone would take it)
    ("not_utf8", limit().replace(b"RN Lee", b"\xed\xa0\x80"), "bad_json", "utf-8"),
]


@pytest.mark.parametrize(("name", "payload", "reason", "detail"), REFUSED, ids=[r[0] for r in REFUSED])
def test_limits_set_refused_with_reason(name: str, payload: bytes, reason: str, detail: str) -> None:
    got = parse_limits_set(payload)
    assert isinstance(got, Rejected), got
    assert got.reason == reason and detail in got.detail, got


def test_ack_and_who_refuse_bad_text() -> None:
    conditions = load_profile().conditions
    got = parse_ack(b'{"v":1,"alarm":"spo2_low","by":"\\ud800"}', conditions)
    assert isinstance(got, Rejected) and got.reason == "bad_field" and "by" in got.detail
    got = parse_ack(b'{"v":1,"alarm":"spo2_low\\u0007","by":"kim"}', conditions)
    assert isinstance(got, Rejected) and got.reason == "bad_field" and "alarm" in got.detail
    assert isinstance(parse_who(b'{"v":1,"by":"\\u0085kim"}'), Rejected)
    assert isinstance(parse_who('{"v":1,"by":"\ud800"}'), Rejected)  # a str that has no UTF-8 form
    assert isinstance(parse_who(b'{"v":1,"by":' + b"[" * 900 + b"]" * 900 + b"}"), Rejected)


def test_good_messages_still_parse() -> None:
    assert parse_limits_set(limit(extra=',"reason":"COPD – Dr. Ng ✓","id":"abc"')) == LimitsCommand(
        "spo2_low.limit", 88.0, "RN Lee", "COPD – Dr. Ng ✓")
    assert parse_limits_set(limit("null", extra=',"reason":null')) == LimitsCommand(
        "spo2_low.limit", None, "RN Lee", "")
    assert parse_limits_set(limit("1e300")) == LimitsCommand("spo2_low.limit", 1e300, "RN Lee", "")
    assert parse_ack(b'{"v":1,"alarm":"spo2_low","by":" Schw. M\\u00fcller "}',
                     load_profile().conditions) == AckCommand("spo2_low", "Schw. Müller")
    assert parse_who(b'{"v":1,"by":"RN Lee","id":"r1"}') == "RN Lee"
