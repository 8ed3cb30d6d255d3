"""The station's HTTP side and MQTT feed without a browser: failure paths
(no gateway answer, broker down, bad input, slow board client), sessions and
the lock-out as a browser sees it.  A real Mosquitto where a broker is needed;
no gateway runs here, so nothing answers the staff messages."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from chairside.alarms.profile import load_profile
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.station.accounts import MAX_FAILURES, Accounts
from chairside.station.board import Board
from chairside.station.feed import Feed
from chairside.station.web import Hub, Station, _Client

SITE = "clinic-web"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


def station(tmp_path: Path, port: int, clock: Clock, timeout_s: float = 0.3) -> Station:
    board = Board(SITE, load_profile())
    feed = Feed(board, clock, lambda _c: None, port=port)
    accounts = Accounts(tmp_path / "users.json", FAST)
    accounts.add("RN Web", "web password 1", "nurse", 0)
    return Station(board, feed, accounts, clock, secure_cookies=False, audit_path=tmp_path / "audit.jsonl",
                   answer_timeout_s=timeout_s)


async def logged_in(client: TestClient[Any, Any], password: str = "web password 1") -> tuple[int, str]:
    page = await (await client.get("/login")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    response = await client.post("/login", data={"csrf_token": token.group(1), "name": "RN Web",
                                                  "password": password}, allow_redirects=False)
    if response.status != 303:
        return response.status, await response.text()
    board = await (await client.get("/")).text()
    csrf = re.search(r'name="csrf" content="([^"]+)"', board)
    assert csrf is not None
    return 303, csrf.group(1)


def serve(app_station: Station, body: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        client: TestClient[Any, Any] = TestClient(TestServer(app_station.app()))
        await client.start_server()
        try:
            await body(client)
        finally:
            await client.close()

    asyncio.run(main())


@pytest.mark.services
def test_an_action_the_gateway_never_answers_is_shown_as_unconfirmed(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    clock = Clock()
    st = station(tmp_path, mosquitto.port, clock)
    st.feed.start()
    assert st.feed.wait_subscribed(10)

    async def body(client: TestClient[Any, Any]) -> None:
        status, csrf = await logged_in(client)
        assert status == 303
        response = await client.post("/api/chair/3/ack", json={"alarm": "spo2_low"}, headers={"X-CSRF-Token": csrf})
        answer = await response.json()
        assert answer["ok"] == 0 and answer["reason"] == "no_answer" and "nothing is confirmed" in answer["detail"]
        assert not st.feed._pending  # the request is forgotten, not leaked
        bad = await client.post("/api/chair/3/limit", json={"param": "spo2_low.limit", "value": "93"},
                                headers={"X-CSRF-Token": csrf})
        assert bad.status == 400  # a malformed request is refused before anything is sent

    try:
        serve(st, body)
    finally:
        st.feed.stop()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["by"], a["ok"], a["reason"]) for a in audit] == [
        ("login", "RN Web", 1, ""), ("ack", "RN Web", 0, "no_answer")]


def test_an_action_while_the_broker_is_unreachable_is_refused_at_once(tmp_path: Path) -> None:
    clock = Clock()
    st = station(tmp_path, free_port(), clock, timeout_s=5.0)  # nobody listens there
    st.feed.start()

    async def body(client: TestClient[Any, Any]) -> None:
        _, csrf = await logged_in(client)
        response = await client.post("/api/chair/3/standby", json={}, headers={"X-CSRF-Token": csrf})
        answer = await response.json()
        assert (answer["ok"], answer["reason"]) == (0, "broker")
        assert (await (await client.get("/healthz")).json())["mqtt_subscribed"] is False
        assert not st.feed.connected  # the heartbeat tells the page: NOT LIVE
        metrics = await (await client.get("/metrics")).text()
        assert "chairside_station_board_chairs 0.0" in metrics and "chairside_station_chairs_dropped 0.0" in metrics

    try:
        serve(st, body)
    finally:
        st.feed.stop()


def test_pages_need_a_login_and_the_lock_out_is_shown(tmp_path: Path) -> None:
    clock = Clock()
    st = station(tmp_path, free_port(), clock)

    async def body(client: TestClient[Any, Any]) -> None:
        board = await client.get("/", allow_redirects=False)
        assert board.status == 303 and board.headers["Location"] == "/login"
        assert (await client.get("/events")).status == 401
        no_csrf = await client.post("/login", data={"name": "RN Web", "password": "web password 1"})
        assert no_csrf.status == 403  # the login form needs its CSRF token too
        for _ in range(MAX_FAILURES - 1):
            status, text = await logged_in(client, "wrong password")
            assert status == 401 and "Wrong name or password." in text
        status, text = await logged_in(client, "wrong password")
        assert status == 401 and "locked for 15 min" in text
        status, text = await logged_in(client)  # the right password, still locked
        assert status == 401 and "locked" in text
        clock.now += 15 * 60_000
        status, _ = await logged_in(client)
        assert status == 303
        cookie = (await client.get("/login")).headers.get("Set-Cookie", "")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        clock.now += 13 * 3600_000  # past the idle timeout: logged out
        assert (await client.get("/", allow_redirects=False)).status == 303

    serve(st, body)


def test_bad_messages_are_counted_by_reason_and_never_raise(tmp_path: Path) -> None:
    clock = Clock()
    board = Board(SITE, load_profile())
    changed: list[str] = []
    feed = Feed(board, clock, changed.append)
    root = f"chairside/v1/{SITE}"
    for topic, payload in [
        (f"{root}/3/vitals", b"not json"),
        (f"{root}/3/vitals", b'{"v":1}'),
        (f"{root}/3/alarms/active", b"[1,2]"),
        (f"{root}/3/alarms/active", b"\xff\xfe"),
        (f"{root}/BAD ID/alarms/active", b"{}"),
        ("chairside/v1/other-site/3/vitals", b"{}"),
        (f"{root}/3/staff/result", b'{"id": 5}'),
    ]:
        feed.handle(topic, payload)
    assert feed.metrics.get("rejected", reason="not_json") == 1
    assert feed.metrics.get("rejected", reason="missing_field") == 1
    assert feed.metrics.get("rejected", reason="bad_json") == 2
    assert feed.metrics.get("rejected", reason="bad_topic") == 2
    assert changed == [] and board.chairs == {}


def test_a_slow_board_client_is_resynchronised_not_allowed_to_grow_memory() -> None:
    async def main() -> None:
        board = Board(SITE, load_profile())
        import threading

        hub = Hub(board, threading.Lock(), Clock())
        slow, fast = _Client(), _Client()
        hub.clients |= {slow, fast}
        for i in range(slow.queue.maxsize + 5):
            hub.broadcast(f"m{i}")
            fast.queue.get_nowait()
        assert slow.resync and hub.dropped == 1 and slow.queue.qsize() == slow.queue.maxsize
        assert not fast.resync

    asyncio.run(main())


T0 = 1_799_990_000_000  # before the test clock's now


def _seed(url: str, writer: tuple[str, str]) -> None:
    """Two sessions of chair 3 as the gateway stores them: the latest with a dip and a BP."""
    from chairside.store.influx import InfluxWriter
    from chairside.store.points import session_line

    lines = [session_line(SITE, "3", "start", {"session": f"s.3.{T0 - 600_000}", "by": "RN Old"}, T0 - 600_000),
             session_line(SITE, "3", "end", {"session": f"s.3.{T0 - 600_000}", "by": "RN Old", "why": "staff"},
                          T0 - 540_000),
             session_line(SITE, "3", "start", {"session": f"s.3.{T0}", "by": "RN Web", "ref": "ENC-7"}, T0),
             session_line(SITE, "3", "end", {"session": f"s.3.{T0}", "by": "RN Web", "why": "staff"}, T0 + 60_000)]
    lines += [f'vitals,site={SITE},chair=3 spo2={88 if 20 <= i < 30 else 97}i,pr=80i,st="ok" {T0 + i * 1000}'
              for i in range(60)]
    lines.append(f'nibp,site={SITE},chair=3 sys=131i,dia=84i,map=100i,pr=78i,st="ok" {T0 + 30_000}')
    db = InfluxWriter(url, "chairside", credentials=writer)
    try:
        db.write(lines)
    finally:
        db.close()


@pytest.mark.services
@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils missing: run tools/setup.sh")
def test_a_logged_in_nurse_downloads_the_session_record_pdf(tmp_path: Path) -> None:
    from chairside.install.influxdb import Account, InfluxPlan, configure
    from chairside.record.query import InfluxReader
    from chairside.station.report import RecordSource

    influxd = InfluxDB(auth=True, workdir=tmp_path / "influxd")  # as installed: auth on, a read-only login
    influxd.start()
    try:
        plan = InfluxPlan(database="chairside", retention="INF", admin=Account("admin", "admin password 1"),
                          writer=Account("writer", "writer password 1"), reader=Account("reader", "reader pw 1"))
        configure(influxd.url, plan)
        _seed(influxd.url, ("writer", "writer password 1"))
        clock = Clock()
        st = station(tmp_path, free_port(), clock)
        st.records = RecordSource(InfluxReader(influxd.url, "chairside", 5.0, ("reader", "reader pw 1")))

        async def body(client: TestClient[Any, Any]) -> None:
            anonymous = await client.get("/chair/3/report", allow_redirects=False)
            assert anonymous.status == 303 and unquote(anonymous.headers["Location"]) == "/login?next=/chair/3/report"
            page = await (await client.get(anonymous.headers["Location"])).text()  # the Grafana link's way in
            token = re.search(r'name="csrf_token" value="([^"]+)"', page)
            nxt = re.search(r'name="next" value="([^"]+)"', page)
            assert token is not None and nxt is not None and nxt.group(1) == "/chair/3/report"
            login = await client.post("/login", data={"csrf_token": token.group(1), "name": "RN Web",
                                                      "password": "web password 1", "next": nxt.group(1)},
                                      allow_redirects=False)
            assert login.status == 303 and login.headers["Location"] == "/chair/3/report"
            got = await client.get("/chair/3/report")
            assert got.status == 200 and got.content_type == "application/pdf"
            assert got.headers["Content-Disposition"] == f'attachment; filename="s.3.{T0}.pdf"'
            pdf = await got.read()
            assert pdf[:4] == b"%PDF"
            (tmp_path / "latest.pdf").write_bytes(pdf)
            missing = await client.get("/chair/3/report", params={"session": "s.3.nope"})
            assert missing.status == 404
            assert await missing.text() == (f"No session 's.3.nope' stored for chair {SITE}/3 "
                                             "(start one with `chairside staff session start`).")
            none = await client.get("/chair/9/report")
            assert none.status == 404 and await none.text() == (f"No session stored for chair {SITE}/9 "
                                                              "(start one with `chairside staff session start`).")
            assert (await client.get("/chair/BAD ID/report")).status == 400
            st.records = RecordSource(InfluxReader(influxd.url, "chairside", 5.0, ("reader", "wrong password")))
            refused = await client.get("/chair/3/report")
            assert refused.status == 502 and "login was refused" in await refused.text()

        serve(st, body)
    finally:
        influxd.stop()
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "latest.pdf"), "-"], check=True,
                          capture_output=True, text=True, timeout=30).stdout
    for expected in ("Infusion session record", f"s.3.{T0}", "ENC-7", "RN Web", "88 %", "131 mmHg"):
        assert expected in text, expected
    assert re.search(r"Chair\s+3\b", text)
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["action"], a["by"], a["chair"], a["request"]) for a in audit if a["action"] == "report"] == [
        ("report", "RN Web", "3", {"session": f"s.3.{T0}"})]


def test_after_the_login_the_station_only_goes_to_its_own_pages() -> None:
    from chairside.station.web import _local_path

    assert _local_path("/chair/3/report?session=s.3.1") == "/chair/3/report?session=s.3.1"
    for bad in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "chair/3", None, 5, "/a\nb"):
        assert _local_path(bad) == "", bad
