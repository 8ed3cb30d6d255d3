"""validate(): one row per contract rule, payloads built with the firmware encoders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chairside.ingest.validate import REASONS, Accepted, Rejected, validate
from csfw import contract as fw

T = fw.Topics("clinic1", "chair3")
T0 = 1_700_000_000_000


def env(seq: int = 7, hist: bool = False) -> dict[str, Any]:
    return dict(fw.envelope(seq, 2, 61_000, T0, True, hist))


def vitals(**over: Any) -> bytes:
    msg = json.loads(fw.vitals_payload(env(), 97, 72, 6, fw.ST_OK))
    msg.update(over)
    return json.dumps(msg).encode()


def without(payload: str, name: str) -> bytes:
    msg = json.loads(payload)
    del msg[name]
    return json.dumps(msg).encode()


GOOD: list[tuple[str, str, bytes]] = [
    ("vitals", T.vitals, vitals()),
    ("vitals_null_spo2", T.vitals, vitals(spo2=None, pr=None, st=fw.ST_NO_FINGER)),
    ("vitals_hist", T.vitals, fw.vitals_payload(env(hist=True), 95, 80, 5, "ok").encode()),
    ("vitals_src", T.vitals, fw.vitals_payload(env(), 95, 80, 5, "ok", 1, "max30102").encode()),
    ("nibp", T.nibp, fw.nibp_payload(env(), True, 128, 82, 97, 70).encode()),
    ("nibp_error", T.nibp, fw.nibp_payload(env(), False, None, None, None, None, 3).encode()),
    (
        "status",
        T.status,
        fw.status_payload(env(), {"fw": "0.3.1", "boot_t": T0 - 61_000, "rssi": -60}).encode(),
    ),
    ("status_lwt", T.status, fw.OFFLINE_PAYLOAD),
    ("resp", T.resp, fw.resp_payload(env(), "abc-1", "nibp_start", True).encode()),
    ("resp_err", T.resp, fw.resp_payload(env(), "abc-2", "time", False, "bad_arg:t").encode()),
]


@pytest.mark.parametrize(("name", "topic", "payload"), GOOD, ids=[g[0] for g in GOOD])
def test_good_messages_are_accepted(name: str, topic: str, payload: bytes) -> None:
    result = validate(topic, payload)
    assert isinstance(result, Accepted), result
    assert (result.site, result.chair) == ("clinic1", "chair3")
    assert result.kind == topic.rsplit("/", 1)[1]


def test_last_will_is_marked() -> None:
    result = validate(T.status, fw.OFFLINE_PAYLOAD)
    assert isinstance(result, Accepted)
    assert result.last_will
    assert result.fields == {"v": 1, "state": "offline"}


def test_historical_flag() -> None:
    result = validate(T.vitals, fw.vitals_payload(env(hist=True), 95, 80, 5, "ok").encode())
    assert isinstance(result, Accepted) and result.historical


BAD: list[tuple[str, str, bytes, str, str]] = [
    ("oversized", T.vitals, vitals(pad="x" * 1100), "too_large", ""),
    ("not_utf8", T.vitals, b'{"v":1,"x":"\xff"}', "not_utf8", ""),
    ("not_json", T.vitals, b"spo2=97", "not_json", ""),
    ("nan", T.vitals, vitals().replace(b'"spo2": 97', b'"spo2": NaN'), "not_json", ""),
    ("array", T.vitals, b"[1, 2]", "not_object", ""),
    ("bad_topic_root", "other/v1/clinic1/chair3/vitals", vitals(), "bad_topic", ""),
    ("bad_topic_id", "chairside/v1/Clinic 1/chair3/vitals", vitals(), "bad_topic", ""),
    ("bad_topic_depth", "chairside/v1/clinic1/vitals", vitals(), "bad_topic", ""),
    ("unknown_kind", "chairside/v1/clinic1/chair3/ecg", vitals(), "unknown_kind", "ecg"),
    ("schema_v2", T.vitals, vitals(v=2), "schema_version", "v=2"),
    ("schema_true", T.vitals, vitals(v=True), "schema_version", "v=True"),
    ("no_v", T.vitals, without(fw.vitals_payload(env(), 97, 72, 6, "ok"), "v"),
     "missing_field", "v"),
    ("spo2_130", T.vitals, vitals(spo2=130), "out_of_range", "spo2=130"),
    ("pulse_minus5", T.vitals, vitals(pr=-5), "out_of_range", "pr=-5"),
    ("no_spo2", T.vitals, without(fw.vitals_payload(env(), 97, 72, 6, "ok"), "spo2"),
     "missing_field", "spo2"),
    ("no_seq", T.vitals, without(fw.vitals_payload(env(), 97, 72, 6, "ok"), "seq"),
     "missing_field", "seq"),
    ("bool_as_int", T.vitals, vitals(spo2=True), "bad_type", "spo2=True"),
    ("sync_bool", T.vitals, vitals(sync=True), "bad_type", "sync=True"),
    ("float_as_int", T.vitals, vitals(spo2=97.5), "bad_type", "spo2=97.5"),
    ("string_as_int", T.vitals, vitals(pr="72"), "bad_type", "pr='72'"),
    ("null_not_nullable", T.vitals, vitals(sig=None), "bad_type", "sig=null"),
    ("bad_enum", T.vitals, vitals(st="great"), "bad_enum", "st='great'"),
    ("enum_not_str", T.vitals, vitals(st=1), "bad_type", "st=1"),
    ("nibp_sys_400", T.nibp, fw.nibp_payload(env(), True, 400, 82, 97, 70).encode(),
     "out_of_range", "sys=400"),
    ("status_bad_state", T.status, fw.status_payload(env(), {"state": "asleep"}).encode(),
     "bad_enum", "state"),
    ("status_fw_long", T.status, fw.status_payload(env(), {"fw": "x" * 33}).encode(),
     "out_of_range", "fw"),
    ("lwt_bad_state", T.status, b'{"v":1,"state":"gone"}', "missing_field", "seq"),
    ("resp_no_id", T.resp, without(fw.resp_payload(env(), "a", "time", True), "id"),
     "missing_field", "id"),
    # text that cannot be stored or shown: a lone surrogate has no UTF-8 form
    ("fw_lone_surrogate", T.status, fw.status_payload(env(), {"fw": "X"}).replace(
        '"X"', '"\\ud800"').encode(), "bad_string", "fw: lone surrogate U+D800 at 0"),
    ("fw_low_surrogate", T.status, fw.status_payload(env(), {"fw": "X"}).replace(
        '"X"', '"1.\\udc00"').encode(), "bad_string", "lone surrogate U+DC00 at 2"),
    ("fw_nul", T.status, fw.status_payload(env(), {"fw": "1\x00"}).encode(), "bad_string",
     "fw: control character U+0000 at 1"),
    ("cfg_newline", T.status, fw.status_payload(env(), {"cfg": "ab\ncd"}).encode(), "bad_string",
     "cfg: control character U+000A"),
    ("reset_del", T.status, fw.status_payload(env(), {"reset": "x\x7f"}).encode(), "bad_string",
     "U+007F"),
    ("resp_err_c1", T.resp, fw.resp_payload(env(), "a", "time", False, "no\x85").encode(),
     "bad_string", "err: control character U+0085"),
    ("resp_id_escape", T.resp, fw.resp_payload(env(), "a\x1b[2J", "time", True).encode(),
     "bad_string", "id: control character U+001B"),
]


@pytest.mark.parametrize(
    ("name", "topic", "payload", "reason", "detail"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_messages_are_rejected_with_reason(
    name: str, topic: str, payload: bytes, reason: str, detail: str
) -> None:
    result = validate(topic, payload)
    assert isinstance(result, Rejected), result
    assert result.reason == reason
    assert result.reason in REASONS
    assert detail in result.detail


def test_unknown_field_ignored_or_rejected_when_strict() -> None:
    payload = vitals(extra=1)
    lenient = validate(T.vitals, payload)
    assert isinstance(lenient, Accepted)
    assert lenient.ignored == ("extra",) and "extra" not in lenient.fields
    strict = validate(T.vitals, payload, strict=True)
    assert isinstance(strict, Rejected) and strict.reason == "unknown_field"


def test_never_raises_on_garbage() -> None:
    for payload in (b"", b"\x00" * 10, b"{" * 5000, b"null", b'"x"', b"1e999", b"{}"):
        assert isinstance(validate(T.vitals, payload), Rejected)


def test_printable_unicode_text_is_accepted() -> None:
    payload = fw.status_payload(env(), {"fw": "1.0-ß✓😀", "reset": "soft"}).encode()
    result = validate(T.status, payload)
    assert isinstance(result, Accepted) and result.fields["fw"] == "1.0-ß✓😀"
