"""Line protocol for each measurement, compared byte for byte."""

from __future__ import annotations

from chairside.model import AlarmEvent, Reading
from chairside.store.points import alarm_event_line, reading_line, reject_line

T0 = 1_700_000_000_000


def reading(kind: str, fields: dict[str, object], **kw: object) -> Reading:
    base = {"v": 1, "seq": 12, "boot": 3, "up": 61_000, "t": T0, "sync": 1}
    return Reading(
        site="clinic1",
        chair="chair3",
        kind=kind,  # type: ignore[arg-type]
        fields={**base, **fields},
        measured_ms=T0,
        received_ms=T0 + 250,
        **kw,  # type: ignore[arg-type]
    )


def test_vitals_line() -> None:
    line = reading_line(reading("vitals", {"spo2": 97, "pr": 72, "sig": 6, "st": "ok"}))
    assert line == (
        "vitals,chair=chair3,site=clinic1 boot=3i,dev_t=1700000000000i,hist=false,pr=72i,"
        'rx_ms=1700000000250i,seq=12i,sig=6i,spo2=97i,st="ok",sync=1i,up=61000i 1700000000000'
    )


def test_vitals_nulls_omitted_and_hist_true() -> None:
    line = reading_line(
        reading(
            "vitals",
            {"spo2": None, "pr": None, "sig": 0, "st": "no_finger", "cuff": 1, "h": 1},
            historical=True,
        )
    )
    assert line == (
        "vitals,chair=chair3,site=clinic1 boot=3i,cuff=1i,dev_t=1700000000000i,hist=true,"
        'rx_ms=1700000000250i,seq=12i,sig=0i,st="no_finger",sync=1i,up=61000i 1700000000000'
    )


def test_nibp_line() -> None:
    line = reading_line(
        reading("nibp", {"st": "ok", "sys": 128, "dia": 82, "map": 97, "pr": None})
    )
    assert line == (
        "nibp,chair=chair3,site=clinic1 boot=3i,dev_t=1700000000000i,dia=82i,hist=false,"
        'map=97i,rx_ms=1700000000250i,seq=12i,st="ok",sync=1i,sys=128i,up=61000i 1700000000000'
    )


def test_status_line_and_last_will() -> None:
    online = reading_line(reading("status", {"state": "online", "fw": "0.3 beta", "rssi": -61}))
    assert online == (
        'device,chair=chair3,site=clinic1 boot=3i,fw="0.3 beta",online=1i,rssi=-61i,'
        'rx_ms=1700000000250i,seq=12i,state="online",sync=1i,up=61000i 1700000000000'
    )
    will = Reading("clinic1", "chair3", "status", {"v": 1, "state": "offline"}, T0, T0)
    assert reading_line(will) == (
        'device,chair=chair3,site=clinic1 online=0i,rx_ms=1700000000000i,state="offline" '
        "1700000000000"
    )


def test_resp_not_stored() -> None:
    assert reading_line(reading("resp", {"id": "a", "cmd": "time", "ok": 1})) is None


def test_alarm_event_line() -> None:
    event = AlarmEvent(
        id="e1",
        site="clinic1",
        chair="chair3",
        alarm="spo2_low",
        priority="medium",
        kind="physiological",
        event="raised",
        t=T0,
        text='SpO2 84 % < 90 % "chair 3"',
        value=84,
        limit=90,
    )
    # floats without a fraction print as "90" (no i suffix: still a float field)
    assert alarm_event_line(event) == (
        "alarm_events,alarm=spo2_low,chair=chair3,event=raised,priority=medium,site=clinic1 "
        'active=true,drill=false,id="e1",kind="physiological",limit=90,'
        'text="SpO2 84 % < 90 % \\"chair 3\\"",value=84 1700000000000'
    )


def test_reject_line_escapes() -> None:
    assert reject_line("bad_enum", 3, "chairside/v1/a/b/vitals", "st='x y'", T0) == (
        'rejects,reason=bad_enum detail="st=\'x y\'",n=3i,topic="chairside/v1/a/b/vitals" '
        "1700000000000"
    )
