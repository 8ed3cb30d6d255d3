"""The skeleton alarm stage: limits table, raise on crossing, clear on return."""

from __future__ import annotations

from typing import Any

import pytest

from chairside.model import Reading
from chairside.thresholds import ThresholdStage

T0 = 1_700_000_000_000


def r(kind: str, hist: bool = False, **fields: Any) -> Reading:
    base: dict[str, Any] = {"st": "ok"}
    return Reading("s", "c", kind, {**base, **fields}, T0, T0, historical=hist)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "fields", "raised"),
    [
        ("vitals", {"spo2": 90, "pr": 50}, []),
        ("vitals", {"spo2": 89, "pr": 72}, [("spo2_low", "medium")]),
        ("vitals", {"spo2": 97, "pr": 49}, [("pr_low", "medium")]),
        ("vitals", {"spo2": 97, "pr": 121}, [("pr_high", "medium")]),
        ("vitals", {"spo2": 97, "pr": 120}, []),
        ("vitals", {"spo2": 80, "pr": 72, "st": "probe_off"}, []),
        ("vitals", {"spo2": None, "pr": None}, []),
        ("nibp", {"sys": 179, "dia": 109}, []),
        ("nibp", {"sys": 180, "dia": 80}, [("sys_high", "medium")]),
        ("nibp", {"sys": 89, "dia": 60}, [("sys_low", "medium")]),
        ("nibp", {"sys": 150, "dia": 110}, [("dia_high", "medium")]),
        ("nibp", {"sys": 220, "dia": 80}, [("sys_high", "medium"), ("sys_crit", "high")]),
        ("nibp", {"sys": 150, "dia": 120}, [("dia_high", "medium"), ("dia_crit", "high")]),
        ("nibp", {"sys": None, "dia": None, "st": "error"}, []),
    ],
)
def test_limits(kind: str, fields: dict[str, Any], raised: list[tuple[str, str]]) -> None:
    events = ThresholdStage().on_reading(r(kind, **fields), T0)
    assert [(e.alarm, e.priority) for e in events] == raised
    assert all(e.event == "raised" and e.t == T0 for e in events)


def test_raise_once_then_clear_with_unique_ids() -> None:
    stage = ThresholdStage()
    first = stage.on_reading(r("vitals", spo2=84, pr=72), T0)
    again = stage.on_reading(r("vitals", spo2=83, pr=72), T0 + 1000)
    assert [e.event for e in first] == ["raised"] and again == []
    assert [a["alarm"] for a in stage.active("s", "c")] == ["spo2_low"]
    assert stage.active("s", "other") == []
    cleared = stage.on_reading(r("vitals", spo2=95, pr=72), T0 + 2000)
    assert [(e.alarm, e.event) for e in cleared] == [("spo2_low", "cleared")]
    assert stage.active("s", "c") == []
    assert first[0].id != cleared[0].id
    assert "SpO2 84 % < 90 %" in first[0].text


def test_historical_never_raises_or_clears() -> None:
    stage = ThresholdStage()
    assert stage.on_reading(r("vitals", hist=True, spo2=70, pr=72), T0) == []
    stage.on_reading(r("vitals", spo2=84, pr=72), T0)
    assert stage.on_reading(r("vitals", hist=True, spo2=97, pr=72), T0) == []
    assert len(stage.active("s", "c")) == 1
    assert stage.tick(T0 + 60_000) == []
