"""The board model: the dashboards' staleness rule, alarm words, drill chairs (pure, injected time)."""

from __future__ import annotations

from typing import Any

from chairside.alarms.profile import load_profile
from chairside.station.board import Board

T0 = 1_800_000_000_000


def vitals(spo2: int | None = 97, pr: int | None = 72, st: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"v": 1, "boot": 1, "seq": 5, "up": 1000, "t": T0, "sync": 1, "spo2": spo2, "pr": pr, "sig": 5,
            "st": st, **extra}


def board() -> Board:
    return Board("clinic1", load_profile(), "https://grafana.example/")


def test_values_are_live_for_stale_after_s_then_stale_and_offline() -> None:
    b = board()
    b.apply("3", "vitals", vitals(), T0)
    tile = b.view("3", T0 + 30_000)
    assert (tile["spo2"], tile["pr"], tile["sensor"], tile["stale"]) == (97, 72, "SENSOR OK", False)
    tile = b.view("3", T0 + 30_001)
    assert (tile["spo2"], tile["pr"], tile["sensor"], tile["stale"]) == (None, None, "OFFLINE", True)


def test_probe_off_keeps_the_box_heard_but_the_numbers_stale() -> None:
    b = board()
    b.apply("3", "vitals", vitals(), T0)
    b.apply("3", "vitals", vitals(None, None, "probe_off"), T0 + 31_000)
    tile = b.view("3", T0 + 31_500)
    assert tile["sensor"] == "PROBE OFF" and tile["sensor_level"] == "warn"
    assert tile["spo2"] is None and tile["stale"]


def test_a_replayed_reading_is_never_shown_as_live() -> None:
    b = board()
    b.apply("3", "vitals", vitals(h=1), T0)
    assert b.view("3", T0)["spo2"] is None and b.view("3", T0)["sensor"] == "OFFLINE"


def test_last_will_makes_the_tile_offline_at_once() -> None:
    b = board()
    b.apply("3", "vitals", vitals(), T0)
    b.apply("3", "status", {"v": 1, "state": "offline"}, T0 + 1000, last_will=True)
    tile = b.view("3", T0 + 1000)
    assert tile["box"] == "offline" and tile["sensor"] == "OFFLINE" and tile["spo2"] is None


def test_nibp_shows_its_age_for_an_hour_then_no_bp() -> None:
    b = board()
    b.apply("3", "nibp", {"v": 1, "boot": 1, "seq": 9, "up": 1, "t": T0 - 240_000, "sync": 1, "sys": 128,
                          "dia": 81, "map": 97, "pr": 70, "st": "ok"}, T0)
    tile = b.view("3", T0)
    assert tile["bp"] == "128/81" and tile["bp_age"] == "4 min ago"
    assert b.view("3", T0 - 240_000 + 3600_001)["bp"] is None


def test_alarms_are_named_in_words_ordered_by_priority_and_the_tone_is_the_highest_unacked() -> None:
    b = board()
    b.apply("3", "alarms_active", {"v": 1, "t": T0, "active": [
        {"alarm": "probe_off", "priority": "medium", "kind": "technical", "acked": False, "latched": False},
        {"alarm": "spo2_critical", "priority": "high", "kind": "physiological", "acked": True, "latched": True},
    ]}, T0)
    b.apply("3", "alarm_event", {"alarm": "spo2_critical", "event": "acknowledged", "by": "RN Jones"}, T0)
    tile = b.view("3", T0)
    assert [(a["words"], a["priority"], a["acked"], a["by"]) for a in tile["alarms"]] == [
        ("SpO2 critically low", "high", True, "RN Jones"),
        ("SpO2 probe off / no finger / no signal", "medium", False, None),
    ]
    assert tile["tone"] == "medium"
    assert tile["grafana"] == "https://grafana.example/d/chairside-chair?var-site=clinic1&var-chair=3"


def test_drill_chairs_are_marked_and_sorted_after_the_real_chairs() -> None:
    b = board()
    for chair in ("drill-3", "10", "2"):
        b.apply(chair, "vitals", vitals(), T0)
    views = b.views(T0)
    assert [(v["chair"], v["drill"]) for v in views] == [("2", False), ("10", False), ("drill-3", True)]


def test_the_board_holds_at_most_max_chairs_and_counts_the_rest(monkeypatch: Any) -> None:
    monkeypatch.setattr("chairside.station.board.MAX_CHAIRS", 2)
    b = board()
    assert [b.apply(chair, "vitals", vitals(), T0) for chair in ("1", "2", "3")] == [True, True, False]
    assert sorted(b.chairs) == ["1", "2"] and b.chairs_dropped == 1
    assert b.apply("1", "vitals", vitals(), T0 + 1000)  # known chairs still update
