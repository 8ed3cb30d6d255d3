"""The record's renderers on a hand-made session, without services: the PDF
read back with pdftotext, the chart a PNG, the FHIR Bundle validated with the
exact values and times; and the failures: InfluxDB or the FHIR server away."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import threading
from datetime import UTC
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from chairside.record import chart, export_command, fhir, pdf, report_command
from chairside.record.data import AlarmRow, Nibp, Session, SessionData, Vital
from chairside.record.figures import compute
from chairside.record.query import InfluxReader, RecordQueryError
from chairside.sim.services import free_port

T0 = 1_790_000_000_000


def _data() -> SessionData:
    session = Session(f"s.2.{T0}", "s", "2", T0, T0 + 120_000, "Zoë Brontë", "RN Kim", "ENC-5", "staff")
    vitals = [Vital(T0 + i * 1000, 84 if 30 <= i < 40 else 97, 80, "ok") for i in range(120)]
    nibp = [Nibp(T0 - 60_000, 120, 80, 93, 70, "ok"), Nibp(T0 + 60_000, 141, 88, 106, 75, "ok")]
    alarms = [AlarmRow(T0 + 30_000, "spo2_critical", "raised", "high", "physiological", "a"),
              AlarmRow(T0 + 45_250, "spo2_critical", "acknowledged", "high", "physiological", "a-a1", by="RN Kim")]
    return SessionData(session, vitals=vitals, nibp=nibp, alarms=alarms)


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils missing: run tools/setup.sh")
def test_the_pdf_shows_the_figures_and_the_chart_is_a_png(tmp_path: Path) -> None:
    data = _data()
    figures = compute(data)
    png = chart.render_png(data, figures, dpi=60)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    path = tmp_path / "r.pdf"
    path.write_bytes(pdf.render_pdf(figures, png, site_name="Harbour Clinic", tz=UTC))
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True, timeout=30).stdout
    for expected in ("Harbour Clinic", "Zoë Brontë", "ENC-5", "2026-09-21 14:13:20 UTC", "2 min 00 s",
                     "120/80 mmHg, MAP 93 (median of 1 reading(s), before start)",
                     "141 mmHg at 1 min 00 s after start (+21 over baseline)", "84 % at 30 s after start",
                     "Time SpO2 < 90 %", "10 s", "80 - 80 bpm", "14:13:50", "14:14:05 (RN Kim)", "15 s"):
        assert expected in text, expected
    assert [line.split()[0] for line in text.splitlines() if "No " in line] == ["No", "No"]  # limits, gaps


def test_the_fhir_bundle_validates_with_the_stored_values_and_times() -> None:
    data = _data()
    text = fhir.bundle_json(data, compute(data))
    bundle = Bundle.model_validate_json(text)
    resources = [e.resource for e in bundle.entry or []]
    kinds = [r.get_resource_type() for r in resources]
    assert kinds.count("Device") == 1 and kinds.count("Encounter") == 1
    assert kinds.count("Observation") == 120 * 2 + 1 + 1  # SpO2 and HR each second; one BP panel and MAP
    spo2 = [o for o in resources if o.get_resource_type() == "Observation" and o.code.coding[0].code == "59408-5"]
    assert spo2[30].effectiveDateTime.isoformat(timespec="milliseconds") == "2026-09-21T14:13:50.000+00:00"
    assert (spo2[30].valueQuantity.value, spo2[30].valueQuantity.code, spo2[30].valueQuantity.system) == (
        84, "%", "http://unitsofmeasure.org")
    (panel,) = [o for o in resources if o.get_resource_type() == "Observation" and o.code.coding[0].code == "85354-9"]
    assert [(c.code.coding[0].code, c.valueQuantity.value) for c in panel.component] == [("8480-6", 141),
                                                                                         ("8462-4", 88)]
    assert fhir.bundle_json(data, compute(data)) == text  # the same session, the same ids


def test_an_invalid_resource_is_refused_by_the_validation() -> None:
    data = _data()
    broken = fhir.bundle_dict(data, compute(data))
    broken["entry"][2]["resource"]["effectiveDateTime"] = "yesterday"  # not a FHIR dateTime
    with pytest.raises(ValueError, match="effectiveDateTime"):
        Bundle.model_validate(broken)


def test_influxdb_or_the_fhir_server_away_is_a_clear_error_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RecordQueryError, match="InfluxDB at"):
        InfluxReader(closed, "chairside", timeout_s=2).rows("SELECT * FROM sessions")
    args = argparse.Namespace(site="s", chair="2", session=None, influx_url=closed, database="chairside",
                              timeout=2.0, out=tmp_path, tz="UTC", site_name=None)
    assert report_command.run(args) == 1
    assert "cannot read the session" in capsys.readouterr().out
    with pytest.raises(fhir.PostError):
        fhir.post(closed + "/fhir", "{}", timeout_s=2)
    export = argparse.Namespace(site="s", chair="2", session=None, influx_url=closed, database="chairside",
                                timeout=2.0, format="fhir", out=tmp_path / "b.json", post=None)
    assert export_command.run(export) == 1
    assert not (tmp_path / "b.json").exists()


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(422)
        self.end_headers()
        self.wfile.write(b'{"resourceType":"OperationOutcome"}')

    def log_message(self, *_args: object) -> None:
        pass


def test_a_fhir_server_that_refuses_the_bundle_is_reported() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(fhir.PostError, match=r"HTTP 422.*OperationOutcome"):
            fhir.post(f"http://127.0.0.1:{server.server_address[1]}/fhir", "{}", timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()


def test_an_empty_open_session_still_renders() -> None:
    session = Session(f"s.2.{T0}", "s", "2", T0, None, "RN Lee")
    data = SessionData(session)
    figures = compute(data, now_ms=T0 + 1_000)
    png = chart.render_png(data, figures, dpi=40)
    assert pdf.render_pdf(figures, png).startswith(b"%PDF")
    assert Bundle.model_validate_json(fhir.bundle_json(data, figures)).entry is not None
