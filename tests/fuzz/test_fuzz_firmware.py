"""Hypothesis against the firmware's codecs (run on CPython): random bytes
never raise anything but the codec's own narrow errors."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csfw import bci, mqtt, spool, suntech
from csfw import contract as fw

FUZZ = settings(max_examples=300, deadline=200, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400))
def test_bci_parser_takes_any_bytes(data: bytes) -> None:
    parser = bci.BciParser()
    for b in data:
        parser.feed(b)


@FUZZ
@given(st.binary(max_size=400))
def test_suntech_response_parser_takes_any_bytes(data: bytes) -> None:
    parser = suntech.ResponseParser()
    for i, b in enumerate(data):
        parser.feed(b, i * 10)


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=300))
def test_mqtt_decoders_raise_only_narrow_errors(first: int, body: bytes) -> None:
    for decode in (
        lambda: mqtt.decode_publish(first, body),
        lambda: mqtt.decode_connack(body),
        lambda: mqtt.decode_pid(body),
        lambda: mqtt.decode_suback(body),
        lambda: mqtt.parse_header(bytes((first,)) + body),
        lambda: mqtt.decode_remaining_length(bytes((first,)) + body),
    ):
        with contextlib.suppress(mqtt.MQTTError):  # a bad topic is MQTTError too (spec 1.5.3)
            decode()


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 70))
def test_spool_decode_record_returns_none_on_garbage(data: bytes, off: int) -> None:
    rec = spool.decode_record(data, off)
    assert rec is None or isinstance(rec, tuple)


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(("v", "cmd", "id", "t", "args", "x")),
    st.none() | st.integers() | st.text(max_size=10) | st.booleans(), max_size=6)))
def test_parse_command_refuses_with_a_reason(payload: bytes) -> None:
    try:
        fw.parse_command(payload)
    except fw.CommandError as exc:
        assert isinstance(exc.reason, str) and exc.reason
