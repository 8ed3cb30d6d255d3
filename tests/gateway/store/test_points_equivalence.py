"""chairside.store.points builds line protocol itself (no per-point influxdb_client
Point); its output must stay byte-identical to Point's on every value the
contract allows, including the awkward ones."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from chairside import contract
from chairside.model import AlarmEvent, Reading
from chairside.store import points

T0 = 1_700_000_000_000

TRICKY_STRINGS = [
    "plain",
    "with space",
    "comma,here",
    "equals=sign",
    'double "quotes"',
    "back\\slash",
    "ends with backslash\\",
    "new\nline",
    "tab\tand\rcr",
    "unicode µ ✓ 😀",
    "#hash",
    "",
    " ",
    "\\",
    "a=b,c d\\",
]


def point_line(measurement: str, tags: dict[str, Any], fields: dict[str, Any], t_ms: int) -> str:
    """The reference: what influxdb_client's Point writes for the same inputs."""
    spec = contract.measurement(measurement)
    point = Point(measurement)
    for name in spec["tags"]:
        value = tags.get(name)
        if value:
            point.tag(name, value)
    for name, value in fields.items():
        if value is None or name not in set(spec["fields"]):
            continue
        point.field(name, value)
    point.time(t_ms, WritePrecision.MS)
    return str(point.to_line_protocol())


@pytest.mark.parametrize("text", TRICKY_STRINGS)
def test_tricky_tag_and_string_values(text: str) -> None:
    tags = {"site": "s" + text, "chair": text, "alarm": text + "x", "priority": "high", "event": text}
    fields = {"id": text, "kind": text, "text": text, "by": text or None, "active": True}
    assert points._line("alarm_events", tags, fields, T0) == point_line("alarm_events", tags, fields, T0)


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**62, 0.0, -0.0, 1.0, 90.0, 84.5, 1e16, 1e-7, 123456789.123, math.inf, -math.inf, math.nan,
     True, False],
)
def test_numeric_and_bool_values(value: Any) -> None:
    fields = {"value": value, "limit": 90.0, "active": False}
    tags = {"site": "clinic1", "chair": "chair3", "alarm": "a", "priority": "low", "event": "raised"}
    assert points._line("alarm_events", tags, fields, T0) == point_line("alarm_events", tags, fields, T0)


def test_only_non_finite_fields_give_empty_line_like_point() -> None:
    tags = {"site": "clinic1", "chair": "c"}
    fields = {"value": math.nan}
    assert points._line("alarm_events", tags, fields, T0) == point_line("alarm_events", tags, fields, T0) == ""


def test_unknown_fields_dropped_and_no_fields_rejected() -> None:
    tags = {"site": "clinic1", "chair": "c", "bogus_tag": "x"}
    fields = {"spo2": 97, "bogus": 1}
    assert points._line("vitals", tags, fields, T0) == point_line("vitals", tags, fields, T0)
    with pytest.raises(ValueError, match="no fields"):
        points._line("vitals", tags, {"bogus": 1}, T0)


def test_unsupported_type_raises_like_point() -> None:
    with pytest.raises(ValueError):
        point_line("device", {"site": "s"}, {"state": ["a"]}, T0)
    with pytest.raises(ValueError):
        points._line("device", {"site": "s"}, {"state": ["a"]}, T0)


field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
tag_values = st.one_of(st.just(""), st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(
    measurement=st.sampled_from(sorted(contract.load()["influx"]["measurements"])),
    tag_data=st.dictionaries(st.sampled_from(["site", "chair", "alarm", "priority", "event", "reason", "x"]),
                             tag_values),
    field_data=st.dictionaries(st.text(min_size=1, max_size=6), field_values, max_size=4),
    contract_fields=st.data(),
    t_ms=st.integers(min_value=0, max_value=4102444800000),
)
def test_matches_point_on_generated_points(
    measurement: str,
    tag_data: dict[str, str],
    field_data: dict[str, Any],
    contract_fields: st.DataObject,
    t_ms: int,
) -> None:
    names = contract.measurement(measurement)["fields"]
    chosen = contract_fields.draw(st.dictionaries(st.sampled_from(names), field_values, max_size=len(names)))
    fields = {**field_data, **chosen}
    try:
        expected: str | None = point_line(measurement, tag_data, fields, t_ms)
    except ValueError:
        expected = None
    written = [n for n, v in fields.items() if v is not None and n in set(names)]
    if expected is not None and not written:
        expected = None  # chairside refuses a point without fields (Point would write "m  t")
    if expected is None:
        with pytest.raises(ValueError):
            points._line(measurement, tag_data, fields, t_ms)
    else:
        assert points._line(measurement, tag_data, fields, t_ms) == expected


def test_public_builders_match_point() -> None:
    reading = Reading("clinic 1", "chair,3", "vitals",
                      {"v": 1, "seq": 1, "boot": 2, "up": 3, "t": T0, "sync": 1, "spo2": 97, "pr": None,
                       "sig": 6, "st": 'o"k'}, T0, T0 + 5)
    fields = {k: v for k, v in reading.fields.items() if k not in ("v", "t", "h")}
    fields.update(rx_ms=T0 + 5, hist=False, dev_t=T0)
    assert points.reading_line(reading) == point_line("vitals", {"site": "clinic 1", "chair": "chair,3"},
                                                      fields, T0)
    event = AlarmEvent(id="e=1", site="s", chair="c\\", alarm="spo2_low", priority="medium",
                       kind="physiological", event="raised", t=T0, text='x "y"\n', value=84, limit=90)
    ev_fields = {"id": "e=1", "kind": "physiological", "text": 'x "y"\n', "value": 84.0, "limit": 90.0,
                 "active": True, "level": None, "by": None, "drill": False}
    ev_tags = {"site": "s", "chair": "c\\", "alarm": "spo2_low", "priority": "medium", "event": "raised"}
    assert points.alarm_event_line(event) == point_line("alarm_events", ev_tags, ev_fields, T0)
    assert points.reject_line("bad_enum", 3, "a b", "d=e", T0) == point_line(
        "rejects", {"reason": "bad_enum"}, {"n": 3, "topic": "a b", "detail": "d=e"}, T0
    )


def reading_line_by_dict(reading: Reading) -> str | None:
    """``reading_line`` as first written: build the stored fields as a dict, then ``_line``."""
    measurement = points.MEASUREMENT_FOR_KIND.get(reading.kind)
    if measurement is None:
        return None
    fields: dict[str, Any] = {k: v for k, v in reading.fields.items() if k not in ("v", "t", "h")}
    fields["rx_ms"] = reading.received_ms
    if measurement == "device":
        fields["online"] = 1 if reading.fields.get("state") == "online" else 0
    else:
        fields["hist"] = reading.historical
        fields["dev_t"] = reading.fields.get("t")
    return points._line(measurement, {"site": reading.site, "chair": reading.chair}, fields, reading.measured_ms)


reading_field_names = st.sampled_from(
    sorted({n for m in ("vitals", "nibp", "device") for n in contract.measurement(m)["fields"]}
           | {"v", "t", "h", "x", "state"})
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["vitals", "nibp", "status", "resp"]),
    site=st.sampled_from(["clinic1", "clinic 1", "a,b", "s\\", ""]),
    chair=st.sampled_from(["chair1", "chair=2", "c\\", "", "drill-1"]),
    fields=st.dictionaries(reading_field_names, st.one_of(field_values, st.just("online"), st.just(["x"]))),
    historical=st.booleans(),
    rx=st.integers(min_value=0, max_value=4102444800000),
)
def test_reading_line_matches_the_dict_build(
    kind: str, site: str, chair: str, fields: dict[str, Any], historical: bool, rx: int
) -> None:
    """The plan-based ``reading_line`` (cached heads, no intermediate dict) writes
    what building the dict and calling ``_line`` writes, raising where it raises."""
    reading = Reading(site, chair, kind, fields, T0, rx, historical)  # type: ignore[arg-type]
    try:
        expected: str | None = reading_line_by_dict(reading)
    except ValueError:
        with pytest.raises(ValueError):
            points.reading_line(reading)
        return
    assert points.reading_line(reading) == expected
    assert points.reading_line(reading) == expected  # the second time from the cached head
