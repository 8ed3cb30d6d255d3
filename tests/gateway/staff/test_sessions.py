"""Infusion sessions in the gateway's staff controls (chairside.staff.sessions):
start, end, the refusals, standby ending a session, a restart keeping it open,
and a state dir that cannot be written (counted, never a crash).  The real
alarm engine and StaffControls; what the gateway would publish is captured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from chairside.alarms.engine import AlarmEngine
from chairside.metrics import Metrics
from chairside.staff import commands
from chairside.staff.controls import Control, StaffControls, control_of
from chairside.staff.sessions import FILE_NAME, parse_session_id

SITE, CHAIR = "clinic1", "3"
TOPIC = f"chairside/v1/{SITE}/{CHAIR}/session"


class Harness:
    def __init__(self, state_dir: Path | None) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.metrics = Metrics()
        self.controls = StaffControls(
            AlarmEngine(), self.metrics, publish=lambda t, p: self.published.append((t, json.loads(p))),
            emit=lambda events: [], publish_active=lambda site, chair: None, state_dir=state_dir)

    def send(self, message: dict[str, Any] | bytes, now_ms: int,
             topic: str = TOPIC) -> tuple[list[str], dict[str, Any]]:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        control = control_of(topic, payload, None)
        assert isinstance(control, Control)
        lines = self.controls.handle(control, now_ms)
        return lines, self.published[-1][1]


def test_start_end_and_their_points(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    lines, answer = h.send({"v": 1, "action": "start", "by": "RN Lee", "ref": "ENC-1", "id": "r1"}, 1_000)
    assert answer == {"v": 1, "kind": "chair_session", "ok": 1, "t": 1_000, "id": "r1", "session": "clinic1.3.1000"}
    assert lines == ['sessions,chair=3,event=start,site=clinic1 by="RN Lee",ref="ENC-1",session="clinic1.3.1000",'
                     'why="staff" 1000']
    assert h.published[-1][0] == f"chairside/v1/{SITE}/{CHAIR}/staff/result"
    lines, answer = h.send({"v": 1, "action": "end", "by": "RN Kim"}, 9_000)
    assert answer["ok"] == 1 and answer["session"] == "clinic1.3.1000"
    assert lines == ['sessions,chair=3,event=end,site=clinic1 by="RN Kim",ref="ENC-1",session="clinic1.3.1000",'
                     'why="staff" 9000']
    assert parse_session_id("clinic1.3.1000") == ("clinic1", "3", 1000)
    assert (h.metrics.get("sessions", event="start"), h.metrics.get("sessions", event="end")) == (1, 1)


def test_a_second_start_and_an_end_without_a_session_are_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    lines, answer = h.send({"v": 1, "action": "end", "by": "RN Kim"}, 500)
    assert (lines, answer["ok"], answer["reason"]) == ([], 0, "no_session")
    h.send({"v": 1, "action": "start", "by": "RN Lee"}, 1_000)
    lines, answer = h.send({"v": 1, "action": "start", "by": "RN Kim"}, 2_000)
    assert (lines, answer["ok"], answer["reason"]) == ([], 0, "session_open")
    assert "clinic1.3.1000" in answer["detail"]
    assert h.controls.sessions.open_session(SITE, CHAIR) is not None


def test_bad_session_messages_are_refused_with_the_field() -> None:
    h = Harness(None)
    for message, reason, field in (
        ({"v": 1, "action": "pause", "by": "RN Lee"}, "bad_field", "action"),
        ({"v": 1, "action": "start"}, "bad_field", "by"),
        ({"v": 1, "action": "start", "by": "RN Lee", "ref": "x" * 65}, "bad_field", "ref"),
        ({"v": 1, "action": "start", "by": "RN Lee", "ref": "ENC\n1"}, "bad_field", "ref"),
        ({"v": 1, "action": "start", "by": "RN Lee", "ref": 12}, "bad_field", "ref"),
        ({"v": 2, "action": "start", "by": "RN Lee"}, "bad_version", "v"),
        (b"\xff", "bad_json", ""),
    ):
        lines, answer = h.send(message, 1_000)
        assert (lines, answer["ok"], answer["reason"]) == ([], 0, reason), message
        assert answer["detail"].startswith(field)
    assert h.controls.sessions.open_session(SITE, CHAIR) is None
    assert h.metrics.total("control_rejected") == 7


def test_standby_ends_the_open_session_and_a_restart_keeps_it_open(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.send({"v": 1, "action": "start", "by": "RN Lee", "ref": "ENC-7"}, 1_000)
    assert json.loads((tmp_path / FILE_NAME).read_text())[f"{SITE}/{CHAIR}"]["start_ms"] == 1_000
    restarted = Harness(tmp_path)  # a gateway restart: the session is still open
    opened = restarted.controls.sessions.open_session(SITE, CHAIR)
    assert opened is not None and (opened.id, opened.by, opened.ref) == ("clinic1.3.1000", "RN Lee", "ENC-7")
    lines, answer = restarted.send({"v": 1, "by": "RN Park"}, 5_000, topic=f"chairside/v1/{SITE}/{CHAIR}/standby")
    assert answer["ok"] == 1
    assert 'sessions,chair=3,event=end,site=clinic1 by="RN Park",ref="ENC-7",session="clinic1.3.1000",' \
           'why="standby" 5000' in lines
    assert restarted.controls.sessions.open_session(SITE, CHAIR) is None
    assert json.loads((tmp_path / FILE_NAME).read_text()) == {}
    lines, _ = restarted.send({"v": 1, "by": "RN Park"}, 6_000, topic=f"chairside/v1/{SITE}/{CHAIR}/standby")
    assert not [line for line in lines if line.startswith("sessions")]  # no session: nothing to end


def test_an_unwritable_state_dir_is_counted_and_the_session_still_starts(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    h = Harness(blocked)
    lines, answer = h.send({"v": 1, "action": "start", "by": "RN Lee"}, 1_000)
    assert answer["ok"] == 1 and lines
    assert h.metrics.get("persist_errors", what="sessions") == 1


def test_an_unreadable_saved_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text('{"clinic1/3": {"id": "x"}, "bad": 1}')
    assert Harness(tmp_path).controls.sessions.open_session(SITE, CHAIR) is None
    (tmp_path / FILE_NAME).write_text("{not json")
    assert Harness(tmp_path).controls.sessions.open_session(SITE, CHAIR) is None


def test_the_staff_command_builds_the_session_message() -> None:
    args = argparse.Namespace(action="session", what="start", site=SITE, chair=CHAIR, by="RN Lee", ref="ENC-1")
    topic, message = commands.build_message(args, "r1")
    assert topic == TOPIC
    assert message == {"v": 1, "by": "RN Lee", "id": "r1", "action": "start", "ref": "ENC-1"}
    args = argparse.Namespace(action="session", what="end", site=SITE, chair=CHAIR, by="RN Lee", ref="")
    assert commands.build_message(args, "r2")[1] == {"v": 1, "by": "RN Lee", "id": "r2", "action": "end"}
