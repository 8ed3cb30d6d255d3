"""Hypothesis against the firmware's codecs (run on CPython): random bytes
never raise anything but the codec's own narrow errors."""

from __future__ import annotations

import binascii
import contextlib
import json

import pytest
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
    """Random bytes: either None, or a record that re-encodes to exactly the
    bytes it came from (random bytes almost never carry a valid CRC; the
    framed test below reaches the decoder's other branches)."""
    rec = spool.decode_record(data, off)
    if rec is not None:
        assert_round_trip(rec, data[off:off + spool.record_len(data[off])])


def crc_framed(kind: int, flags: int, body: bytes) -> bytes:
    """A record-sized frame: head byte (kind << 4 | flags), random body, and
    the CRC the spool's format puts last (low 16 bits of CRC-32, big-endian)."""
    n = spool.VITALS_LEN if kind == spool.KIND_VITALS else spool.NIBP_LEN
    frame = bytes([(kind << 4) | flags]) + body[: n - 3].ljust(n - 3, b"\0")
    crc = binascii.crc32(frame) & 0xFFFF
    return frame + bytes([crc >> 8, crc & 0xFF])


def assert_round_trip(rec: tuple[object, ...], frame: bytes) -> None:
    pr_at = len(frame) - 4  # the pulse rate / up-time-high field, just before the CRC
    field = (frame[pr_at] << 8) | frame[pr_at + 1]
    if field == 0xFFFF:
        # the layout before issue 17 (no pulse rate): decoded as pr None, up < 2**32,
        # re-encoded in today's layout (0x03FF); everything else identical
        assert rec[-2 if rec[0] == spool.KIND_NIBP else 6] is None
        again = spool.encode_record(rec)
        assert again[:pr_at] == frame[:pr_at] and again[pr_at:pr_at + 2] == b"\x03\xff"
    elif field >> 10 >= spool.UP_HI_MAX:
        # up-time bits 32-37 = 63: a value the encoder never writes (and refuses)
        with pytest.raises(ValueError):
            spool.encode_record(rec)
    else:
        assert spool.encode_record(rec) == frame


@FUZZ
@given(st.sampled_from((spool.KIND_VITALS, spool.KIND_NIBP)), st.integers(0, 15), st.binary(min_size=19, max_size=19),
       st.binary(max_size=8))
def test_spool_decoded_record_re_encodes_to_the_same_bytes(kind: int, flags: int, body: bytes, before: bytes) -> None:
    frame = crc_framed(kind, flags, body)
    rec = spool.decode_record(before + frame, len(before))
    if rec is None:  # only an unknown vitals state (high nibble of byte 1) is refused
        assert kind == spool.KIND_VITALS and frame[1] >> 4 >= len(spool.STATES)
        return
    assert_round_trip(rec, frame)


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(("v", "cmd", "id", "t", "args", "x")),
    st.none() | st.integers() | st.text(max_size=10) | st.booleans(), max_size=6)))
def test_parse_command_refuses_with_a_reason(payload: bytes) -> None:
    try:
        fw.parse_command(payload)
    except fw.CommandError as exc:
        assert isinstance(exc.reason, str) and exc.reason
