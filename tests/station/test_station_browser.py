"""Issue 19's proof: the nurses' station driven in a real headless browser
(Debian's chromium through Playwright, no downloaded browser) against real
Mosquitto, InfluxDB, the gateway (its alarm engine) and the pager, the real
firmware in simulated boxes, and the station itself behind TLS with a
certificate from the clinic CA (``chairside certs``).

One browser and one set of services for the module.  Boxes and gateway run in
accelerated time (``lockstep``); the station's own clock is injected, so a
silent box turns stale by moving that clock, not by waiting 30 s.

Screenshots of the board (normal, alarm, stale) go to ``test-artefacts/station``
(``CHAIRSIDE_TEST_ARTEFACTS`` overrides; gitignored)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_support import Observer, Receiver, SimWallClock, lockstep, start_gateway, wait_rows, wait_until

from chairside.install.pki import init_ca, issue_server
from chairside.pager.escalation import State
from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.sim.simulator import Fleet, make_box
from chairside.station.accounts import Accounts
from chairside.station.command import StationConfig, StationServer, wall_ms
from host.clock import SimClock

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("CHAIRSIDE_CHROMIUM", "/usr/bin/chromium")
pytestmark = [pytest.mark.services, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                       reason="Debian's chromium missing (tools/setup.sh)")]
SITE = "clinic-station"
NURSE, NURSE_PW = "RN Station", "nurse password 1"
LEAD, LEAD_PW = "Dr Lead", "lead password 12"
REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(os.environ.get("CHAIRSIDE_TEST_ARTEFACTS", REPO / "test-artefacts")) / "station"
DESAT_AT_MS = 8_000
PROMPT = [""]  # what the "nurse" types into the next prompt (the session's clinic reference)


class OffsetClock:
    """The station's clock: the wall clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return wall_ms() + self.offset

    def advance(self, ms: int) -> None:
        self.offset += ms


def spki_sha256(cert: Path) -> str:
    """base64 SHA-256 of the certificate's public key: chromium trusts exactly this key."""
    openssl = shutil.which("openssl") or "openssl"
    pub = subprocess.run([openssl, "x509", "-in", str(cert), "-noout", "-pubkey"], check=True,
                         capture_output=True).stdout
    der = subprocess.run([openssl, "pkey", "-pubin", "-outform", "der"], input=pub, check=True,
                         capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class World:
    def __init__(self, **parts: Any) -> None:
        self.__dict__.update(parts)


@pytest.fixture(scope="module")
def world(mosquitto_module: Mosquitto, influxdb_module: InfluxDB,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("station")
    sim_clock = SimClock(epoch_at_boot_ms=wall_ms(), synced=True)
    gateway: Gateway = start_gateway(mosquitto_module, influxdb_module, tmp / "gw", clock=SimWallClock(sim_clock))
    receiver = Receiver()
    ack_port = free_port()
    policy = parse_policy({
        "timezone": "UTC",
        "people": {"nurse-kim": {"channels": [{"type": "webhook", "url":
                                               receiver.url,
                                               "routing_key": "k"}]}},
        "fallback": ["nurse-kim"],
        "priorities": {"high": {"delay_s": 0, "ack_timeout_s": 60}, "medium": {"delay_s": 0, "ack_timeout_s": 60},
                       "low": {"page": False, "ack_timeout_s": 60}},
        "ack": {"base_url": f"http://127.0.0.1:{ack_port}", "port": ack_port},
    })
    pager = Pager(policy, secret=b"station-test-secret-0123456789", state_path=tmp / "pager.json",
                  broker_port=mosquitto_module.port, client_id="station-test-pager", tick_s=0.2)
    pager.start()
    assert pager.wait_connected(10)
    init_ca(tmp / "pki")
    cert = issue_server(tmp / "pki", ["127.0.0.1"])
    # argon2 at a lower cost than the station's default (the default is what test_station_accounts checks)
    accounts = Accounts(tmp / "users.json", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    accounts.add(NURSE, NURSE_PW, "nurse", 0)
    accounts.add(LEAD, LEAD_PW, "lead", 0)
    clock = OffsetClock()
    station = StationServer(StationConfig(
        site=SITE, users=tmp / "users.json", mqtt_port=mosquitto_module.port, host="127.0.0.1", port=0,
        tls_cert=cert, tls_key=cert.with_suffix(".key"), grafana_url="https://grafana.clinic.test",
        audit_log=tmp / "audit.jsonl"), clock=clock, accounts=accounts)
    station.start()
    assert station.feed.wait_subscribed(10)
    observer = Observer(mosquitto_module.port, f"chairside/v1/{SITE}/#")
    boxes = [make_box(SITE, chair, "normal", "127.0.0.1", mosquitto_module.port, fs_dir=str(tmp / chair),
                      clock=sim_clock, seed=i) for i, chair in enumerate(("3", "4", "drill-1"))]
    boxes[0].patient.script([(DESAT_AT_MS, "spo2", 80)])  # < 85: spo2_critical, high, no delay
    fleet = Fleet(boxes, step_ms=1000)
    pw = playwright_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                 args=[f"--ignore-certificate-errors-spki-list={spki_sha256(cert)}"])
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    try:
        lockstep(fleet, gateway, 4_000)
        yield World(gateway=gateway, pager=pager, receiver=receiver, station=station, clock=clock,
                    observer=observer, fleet=fleet, browser=browser, influxdb=influxdb_module,
                    ca=tmp / "pki" / "ca.crt", audit=tmp / "audit.jsonl")
    finally:
        browser.close()
        pw.stop()
        fleet.close()
        observer.close()
        station.stop()
        pager.stop()
        receiver.close()
        gateway.stop()


def login(world: World, name: str, password: str) -> Any:
    context = world.browser.new_context(viewport={"width": 1100, "height": 700})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept(PROMPT[0]) if dialog.type == "prompt" else dialog.accept())
    page.goto(world.station.url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("#login-button")
    return page


def test_served_with_the_clinic_ca_certificate(world: World) -> None:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(world.ca))
    with urllib.request.urlopen(world.station.url + "/login", context=context, timeout=5) as resp:
        assert resp.status == 200
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie


def test_desaturation_shows_on_its_tile_is_acknowledged_by_the_logged_in_nurse_then_goes_stale(
    world: World,
) -> None:
    page = login(world, NURSE, NURSE_PW)
    page.wait_for_selector("#tile-3 .vital.spo2 .value")
    assert page.locator("#sound").inner_text().startswith("SOUND OFF")
    page.click("#start")  # the browser's autoplay rule: sound starts on this click
    page.wait_for_function("window.stationSound.started === true")
    assert page.locator("#sound").inner_text().startswith("SOUND ON")
    assert page.locator("#drills #tile-drill-1 .drill-badge").inner_text() == "DRILL"
    assert page.locator("#chairs #tile-drill-1").count() == 0
    grafana = page.locator("#tile-3 a.grafana").get_attribute("href")
    assert grafana == f"https://grafana.clinic.test/d/chairside-chair?var-site={SITE}&var-chair=3"
    assert page.locator("#tile-3 a.record").get_attribute("href") == "/chair/3/report"  # the session record PDF
    assert page.locator("#tile-drill-1 a.record").count() == 0  # a drill is no patient's session
    page.screenshot(path=str(ARTEFACTS / "board-normal.png"), full_page=True)

    lockstep(world.fleet, world.gateway, DESAT_AT_MS)  # the desaturation (sim time) and its alarm event
    world.observer.wait_for("/3/alarms", lambda p: p["alarm"] == "spo2_critical" and p["event"] == "raised")
    t_event = next(t for topic, raw, t in list(world.observer.messages)
                   if topic.endswith("/3/alarms") and json.loads(raw)["event"] == "raised")
    page.wait_for_selector('#tile-3 li.alarm.p-high.unacked[data-alarm="spo2_critical"]', timeout=5000)
    shown_after = time.monotonic() - t_event
    print(f"\nalarm on the tile {shown_after * 1000:.0f} ms after the gateway's event")
    assert shown_after <= 2.0
    assert page.locator('#tile-3 li[data-alarm="spo2_critical"] .words').inner_text() == "SpO2 critically low"
    assert page.locator("#tile-4 li.alarm").count() == 0  # only the right tile
    assert page.evaluate("document.body.dataset.tone") == "high"
    page.wait_for_function("window.stationSound.bursts >= 1")
    page.screenshot(path=str(ARTEFACTS / "board-alarm.png"), full_page=True)
    key = f"{SITE}/3/spo2_critical"
    wait_until(lambda: world.receiver.actions("trigger"), 10, "the pager's page")

    page.click('#tile-3 li[data-alarm="spo2_critical"] button.ack')
    page.wait_for_selector("#tile-3 .result.applied", timeout=10_000)
    page.wait_for_selector(f'#tile-3 li.alarm.acked[data-alarm="spo2_critical"] >> text="ACK by {NURSE}"')
    assert page.evaluate("document.body.dataset.tone") == "none"
    rows = wait_rows(world.influxdb, f"SELECT * FROM alarm_events WHERE site = '{SITE}' "
                                     "AND \"event\" = 'acknowledged'", 1)
    assert [(r["chair"], r["alarm"], r["by"]) for r in rows] == [("3", "spo2_critical", NURSE)]
    thread = wait_until(lambda: (t := world.pager.threads().get(key)) and t.state is State.ACKED and t,
                        10, "the page thread acknowledged")
    assert thread.acked_by == NURSE and thread.next_at is None  # escalation stopped
    wait_until(lambda: world.receiver.actions("acknowledge"), 10, "the pager's acknowledge message")
    audit = [json.loads(line) for line in world.audit.read_text().splitlines()]
    assert {"action": "ack", "by": NURSE, "chair": "3", "ok": 1}.items() <= audit[-1].items()

    # the boxes stop publishing: past stale_after_s on the station's clock the tile is stale
    world.clock.advance(31_000)
    page.wait_for_selector('#tile-3 .sensor >> text="OFFLINE"', timeout=5000)
    assert page.locator("#tile-3 .vital.spo2 .value").inner_text() == "STALE"
    assert page.locator("#tile-3 .vital.pr .value").inner_text() == "STALE"
    assert "is-stale" in (page.locator("#tile-3").get_attribute("class") or "")
    page.screenshot(path=str(ARTEFACTS / "board-stale.png"), full_page=True)
    page.context.close()


def test_wrong_password_missing_csrf_and_a_nurse_changing_a_limit_are_refused(world: World) -> None:
    page = login(world, NURSE, "not the password")
    assert page.locator("#login-message").inner_text() == "Wrong name or password."
    assert page.url.endswith("/login")
    page.context.close()

    page = login(world, NURSE, NURSE_PW)
    page.wait_for_selector("#tile-4")
    before = len(world.observer.messages)
    # the browser's own requests, with the session cookie but without the CSRF token
    no_token = page.evaluate("""fetch('/api/chair/4/standby', {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'}, body: '{}'}).then(async r => [r.status, await r.json()])""")
    assert no_token == [403, {"ok": 0, "reason": "csrf", "detail": "missing or wrong CSRF token"}]
    wrong_token = page.evaluate("""fetch('/api/chair/4/standby', {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'forged'}, body: '{}'}).then(r => r.status)""")
    assert wrong_token == 403
    no_form_token = page.evaluate("""fetch('/logout', {method: 'POST', credentials: 'same-origin',
        body: new URLSearchParams({})}).then(r => r.status)""")
    assert no_form_token == 403
    assert page.locator("#limit-dialog").count() == 0  # no limit form for a nurse
    answer = page.evaluate("stationAct('4', 'limit', {param: 'spo2_low.limit', value: 93, reason: 'test'}, 'x')")
    assert answer == {"ok": 0, "reason": "forbidden", "detail": "a nurse may not change limits; ask a lead"}
    assert "refused: forbidden" in page.locator("#tile-4 .result.refused").inner_text()
    time.sleep(0.3)
    sent = [t for t, _, _ in world.observer.messages[before:] if "/standby" in t or "/limits/set" in t]
    assert sent == []  # nothing refused reached the gateway
    assert page.locator("#tile-4 button.limit").count() == 0
    page.click("#tile-4 button.standby")  # a nurse may: confirmed in the dialog, applied by the gateway
    page.wait_for_selector("#tile-4 .result >> text=applied: standby")
    standby = world.observer.wait_for("/4/standby", lambda p: True)
    assert standby["by"] == NURSE
    # the infusion session (issue 20's chair_session): the prompt's answer is the clinic reference
    PROMPT[0] = "ENC-42"
    page.click("#tile-4 button.session-start")
    page.wait_for_selector(f"#tile-4 .result >> text=applied: session started ({SITE}.4.")
    PROMPT[0] = "ENC-43"
    page.click("#tile-4 button.session-start")
    page.wait_for_selector("#tile-4 .result >> text=refused: session_open")
    page.click("#tile-4 button.session-end")
    page.wait_for_selector("#tile-4 .result >> text=applied: session ended")
    rows = wait_rows(world.influxdb, f"SELECT * FROM sessions WHERE site = '{SITE}' AND chair = '4'", 2)
    assert sorted((r["event"], r["by"], r.get("ref")) for r in rows) == [
        ("end", NURSE, "ENC-42"), ("start", NURSE, "ENC-42")]  # the session keeps its reference
    page.context.close()

    page = login(world, LEAD, LEAD_PW)
    page.goto(world.station.url + "/chair/4")  # where Grafana's overview links a chair
    page.wait_for_selector("#tile-4.focus button.limit")
    for value, outcome in (("70", "refused: bad_limit"), ("93", "applied: spo2_low.limit = 93")):
        page.click("#tile-4 button.limit")
        page.select_option("#limit-param", "spo2_low.limit")
        page.fill("#limit-value", value)
        page.fill("#limit-reason", "baseline 94 %")
        page.click("#limit-send")
        page.wait_for_selector(f"#tile-4 .result >> text={outcome}", timeout=10_000)
    (row,) = wait_rows(world.influxdb, f"SELECT * FROM limit_audit WHERE site = '{SITE}' AND chair = '4'", 1)
    assert (row["param"], row["new"], row["by"], row["reason"]) == ("spo2_low.limit", 93, LEAD, "baseline 94 %")
    page.context.close()


def test_the_page_says_not_live_when_the_station_has_no_broker_or_the_page_no_station(
    world: World, tmp_path: Path,
) -> None:
    """A second station whose broker is gone (nobody listens on its port)."""
    accounts = Accounts(tmp_path / "users.json", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    accounts.add(NURSE, NURSE_PW, "nurse", 0)
    orphan = StationServer(StationConfig(site=SITE, users=tmp_path / "users.json", mqtt_port=free_port(),
                                         host="127.0.0.1", port=0, heartbeat_s=0.3), accounts=accounts)
    orphan.start()
    try:
        context = world.browser.new_context()
        page = context.new_page()
        page.goto(orphan.url + "/login")
        page.fill("input[name=name]", NURSE)
        page.fill("input[name=password]", NURSE_PW)
        page.click("#login-button")
        page.wait_for_selector('#connection.lost >> text="NOT LIVE: the station lost the MQTT broker"',
                               timeout=5000)
        assert "feed-lost" in (page.locator("body").get_attribute("class") or "")
    finally:
        orphan.stop()
    page.wait_for_selector('#connection.lost >> text="NOT LIVE: no connection to the station server"',
                           timeout=5000)
    context.close()
