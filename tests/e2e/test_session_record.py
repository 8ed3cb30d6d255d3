"""Issue 20's end-to-end proof: a session through the real chain, then its record.

A simulated box (the real firmware) → real Mosquitto → the real gateway →
real InfluxDB, in accelerated time (``lockstep``).  Two NIBP readings before
the session (118/76, 122/80: baseline 120/78), the session started with
``chairside staff session start``, a BP rise to 150/96, a 20 s desaturation
to 82 % (spo2_critical) acknowledged with ``chairside staff ack``, a limit
change, a last NIBP reading, the session ended.  Then the figures are
checked exactly, ``chairside report`` writes the PDF, which is rendered to PNG (``pdftoppm``) and read back
(``pdftotext``), and the FHIR Bundle is validated with ``fhir.resources``,
compared with what InfluxDB holds and POSTed to a local HTTP receiver.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from e2e_support import Observer, SimWallClock, lockstep, query_rows, start_gateway, wait_rows
from fhir.resources.R4B.bundle import Bundle

from chairside.record import export_command, fhir, report_command
from chairside.record.query import InfluxReader
from chairside.record.report_command import Loaded, load_session
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from chairside.sim.simulator import Fleet, make_box
from chairside.staff import commands as staff

pytestmark = pytest.mark.services
SITE = "clinic-record"
CHAIR = "4"


def _staff(mosquitto: Mosquitto, action: str, **extra: Any) -> int:
    base = {"action": action, "site": SITE, "chair": CHAIR, "by": "RN Lee", "mqtt_host": "127.0.0.1",
            "mqtt_port": mosquitto.port, "mqtt_credentials": None, "mqtt_ca": None}
    base.update(extra)
    return staff.run(argparse.Namespace(**base))


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.bodies.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.end_headers()
        self.wfile.write(b'{"resourceType":"Bundle","type":"transaction-response"}')

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils missing: run tools/setup.sh")
def test_a_session_through_the_real_chain_reports_its_figures_pdf_and_fhir(
    mosquitto: Mosquitto, influxdb: InfluxDB, observer: Observer, tmp_path: Path, sim_clock: Any,
) -> None:
    # writes batched every 5 ms, not 50: lockstep waits for each 1 s step to be stored
    gateway = start_gateway(mosquitto, influxdb, tmp_path / "gw", clock=SimWallClock(sim_clock),
                            batch_interval_s=0.005)
    try:
        _run(mosquitto, influxdb, gateway, observer, tmp_path, sim_clock)
    finally:
        gateway.stop()


def _run(mosquitto: Mosquitto, influxdb: InfluxDB, gateway: Gateway, observer: Observer, tmp_path: Path,
         sim_clock: Any) -> None:
    box = make_box(SITE, CHAIR, "normal", "127.0.0.1", mosquitto.port, fs_dir=str(tmp_path / "box"), clock=sim_clock)
    box.patient.script([
        (0, "spo2", 97), (0, "pulse", 72), (0, "bp", (118, 76)), (44_000, "bp", (122, 80)),
        (92_000, "bp", (150, 96)), (140_000, "spo2", 82), (140_000, "pulse", 96),
        (160_000, "spo2", 97), (160_000, "pulse", 72), (162_000, "bp", (132, 84)),
    ])
    fleet = Fleet([box], step_ms=1000)
    cmd_topic = f"chairside/v1/{SITE}/{CHAIR}/cmd"

    def nibp_now(n: int) -> None:
        observer.client.publish(cmd_topic, json.dumps({"v": 1, "cmd": "nibp_start", "id": f"bp{n}"}),
                                qos=1).wait_for_publish(5)

    try:
        lockstep(fleet, gateway, 5_000)
        nibp_now(1)
        lockstep(fleet, gateway, 40_000)  # 45 s: the first reading is in (cuff 28-38 s)
        nibp_now(2)
        lockstep(fleet, gateway, 45_000)  # 90 s
        assert _staff(mosquitto, "session", what="start", ref="ENC-20931") == 0
        lockstep(fleet, gateway, 3_000)
        nibp_now(3)  # the BP rise, measured 93-131 s
        lockstep(fleet, gateway, 57_000)  # 150 s: SpO2 82 % since 140 s
        raised = observer.wait_for(f"/{CHAIR}/alarms", lambda p: p["alarm"] == "spo2_critical"
                                   and p["event"] == "raised")
        assert _staff(mosquitto, "ack", alarm="spo2_critical", by="RN Kim") == 0
        assert _staff(mosquitto, "limit", param="pulse_high.limit", value="130", by="Dr Park",
                      reason="anxious, sinus tachycardia at rest") == 0
        lockstep(fleet, gateway, 25_000)  # 175 s: cleared (10 s at >= 87 %, no cuff on)
        nibp_now(4)
        lockstep(fleet, gateway, 40_000)  # 215 s
        assert _staff(mosquitto, "session", what="end") == 0
        lockstep(fleet, gateway, 1_000)  # the box goes offline (closed) after the end
    finally:
        fleet.close()
    assert gateway.wait_idle(10)
    cleared = observer.wait_for(f"/{CHAIR}/alarms", lambda p: p["alarm"] == "spo2_critical" and p["event"] == "cleared")
    acked = observer.wait_for(f"/{CHAIR}/alarms", lambda p: p["event"] == "acknowledged")
    (start_row,) = wait_rows(influxdb, f"SELECT * FROM sessions WHERE site = '{SITE}' AND event = 'start'", 1)
    (end_row,) = wait_rows(influxdb, f"SELECT * FROM sessions WHERE site = '{SITE}' AND event = 'end'", 1)
    start, end = start_row["time"], end_row["time"]
    sid = f"{SITE}.{CHAIR}.{start}"
    assert (start_row["session"], start_row["by"], start_row["ref"], start_row["why"]) == (
        sid, "RN Lee", "ENC-20931", "staff")
    assert (end_row["session"], end_row["by"], end_row["why"]) == (sid, "RN Lee", "staff")
    results = observer.payloads(f"/{CHAIR}/staff/result")
    assert [r["session"] for r in results if r["kind"] == "chair_session"] == [sid, sid]

    # ---- the figures, exactly ---------------------------------------------------------
    reader = InfluxReader(influxdb.url, "chairside")
    nibp_rows = wait_rows(influxdb, f"SELECT * FROM nibp WHERE site = '{SITE}'", 4)
    assert [(r["sys"], r["dia"], r["map"]) for r in nibp_rows] == [
        (118, 76, 90), (122, 80, 94), (150, 96, 114), (132, 84, 100)]
    assert nibp_rows[1]["time"] < start < nibp_rows[2]["time"] < nibp_rows[3]["time"] < end
    loaded = load_session(reader, SITE, CHAIR, None, now_ms=end + 60_000)
    assert isinstance(loaded, Loaded)
    f = loaded.figures
    assert f.session.id == sid and f.end_ms == end and f.session.started_by == "RN Lee"
    assert f.baseline is not None
    assert (f.baseline.sys, f.baseline.dia, f.baseline.map, f.baseline.readings, f.baseline.source) == (
        120.0, 78.0, 92.0, 2, "before start")
    peak_t = nibp_rows[2]["time"]
    assert f.peak_sys is not None and f.peak_dia is not None and f.peak_map is not None
    assert (f.peak_sys.value, f.peak_sys.t_ms, f.peak_sys.after_start_ms, f.peak_sys.rise) == (
        150, peak_t, peak_t - start, 30.0)
    assert (f.peak_dia.value, f.peak_dia.rise, f.peak_map.value, f.peak_map.rise) == (96, 18.0, 114, 22.0)
    vitals = query_rows(influxdb, f"SELECT * FROM vitals WHERE site = '{SITE}' AND time >= {start}ms "
                                  f"AND time <= {end}ms")
    low = [r for r in vitals if r["spo2"] == 82]
    assert len(low) == 20 and all(r["st"] == "ok" for r in vitals)  # 140-159 s at 1 Hz
    assert f.spo2_min is not None and (f.spo2_min.value, f.spo2_min.t_ms) == (82, low[0]["time"])
    assert f.below_ms == {90: 20_000, 85: 20_000}
    assert f.pulse_min is not None and f.pulse_max is not None
    assert (f.pulse_min.value, f.pulse_max.value) == (72, 96)
    assert f.vitals_valid == len(vitals) and f.nibp_valid == 2
    (episode,) = f.episodes
    assert (episode.alarm, episode.raised_ms, episode.acked_ms, episode.acked_by, episode.cleared_ms) == (
        "spo2_critical", raised["t"], acked["t"], "RN Kim", cleared["t"])
    assert episode.response_ms == acked["t"] - raised["t"]
    (change,) = f.limit_changes
    assert (change.param, change.old, change.new, change.by) == ("pulse_high.limit", 120.0, 130.0, "Dr Park")
    assert f.gaps == []

    # ---- the PDF and the PNG ------------------------------------------------------------
    common = {"site": SITE, "chair": CHAIR, "session": sid, "influx_url": influxdb.url, "database": "chairside",
              "timeout": 10.0}
    report = tmp_path / "report"
    assert report_command.run(argparse.Namespace(**common, out=report, tz="UTC", site_name=None)) == 0
    assert (report / f"{sid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(report / f"{sid}.pdf"), str(tmp_path / "page")], check=True,
                   timeout=60)
    assert (tmp_path / "page-1.png").stat().st_size > 10_000
    text = subprocess.run(["pdftotext", "-layout", str(report / f"{sid}.pdf"), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    for expected in ("Infusion session record", sid, "ENC-20931", "120/78 mmHg, MAP 92", "150 mmHg",
                     "+30 over baseline", "Lowest SpO2", "82 %", "Time SpO2 < 90 %", "20 s", "72 - 96 bpm",
                     "spo2_critical", "(RN Kim)", "pulse_high.limit", "Dr Park", "No monitoring gap",
                     "not a validated medical device"):
        assert expected in text, expected

    # ---- FHIR: validated, equal to InfluxDB, written and POSTed --------------------------
    out = tmp_path / "bundle.json"
    assert export_command.run(argparse.Namespace(**common, format="fhir", out=out, post=None)) == 0
    bundle = Bundle.model_validate_json(out.read_text())
    resources = [e.resource for e in bundle.entry or []]
    observations = [r for r in resources if r.get_resource_type() == "Observation"]

    def series(code: str) -> list[tuple[str, Any]]:
        return sorted((o.effectiveDateTime.isoformat(timespec="milliseconds"), o.valueQuantity.value)
                      for o in observations if o.code.coding[0].code == code)

    assert series("59408-5") == sorted((fhir.fhir_time(r["time"]), r["spo2"]) for r in vitals)
    assert series("8867-4") == sorted((fhir.fhir_time(r["time"]), r["pr"]) for r in vitals)
    assert series("8478-0") == [(fhir.fhir_time(r["time"]), r["map"]) for r in nibp_rows[2:]]
    panels = [o for o in observations if o.code.coding[0].code == "85354-9"]
    assert sorted((o.effectiveDateTime.isoformat(timespec="milliseconds"),
                   [(c.code.coding[0].code, c.valueQuantity.value, c.valueQuantity.code) for c in o.component])
                  for o in panels) == [
        (fhir.fhir_time(r["time"]), [("8480-6", r["sys"], "mm[Hg]"), ("8462-4", r["dia"], "mm[Hg]")])
        for r in nibp_rows[2:]]
    (encounter,) = [r for r in resources if r.get_resource_type() == "Encounter"]
    assert encounter.period.start.isoformat(timespec="milliseconds") == fhir.fhir_time(start)
    assert encounter.period.end.isoformat(timespec="milliseconds") == fhir.fhir_time(end)
    assert [i.value for i in encounter.identifier] == [sid, "ENC-20931"]

    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        assert export_command.run(argparse.Namespace(**common, format="fhir", out=None, post=url)) == 0
    finally:
        server.shutdown()
        server.server_close()
    ((path, content_type, body),) = _Receiver.bodies
    assert path == "/fhir" and content_type.startswith("application/fhir+json")
    assert json.loads(body) == json.loads(out.read_text())
