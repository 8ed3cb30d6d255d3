"""``make report-sample``: a sample session record (PDF, PNG, FHIR) from the demo's chain.

Starts a private Mosquitto and InfluxDB, the real gateway and one simulated
chair box (the real firmware) in accelerated time, and plays a 45-minute
ketamine session on it: two NIBP readings before the start, the session
started with ``chairside staff session start``, NIBP every 5 minutes with
the expected rise (peak about 40 minutes after the start), a desaturation to
83 % acknowledged by the nurse, and the end.  Then writes, into
``build/report-sample/`` (or ``--out``): ``sample.pdf``, ``sample.png`` and
``sample-fhir.json``.  The numbers are simulated, not clinical data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gateway"))

from chairside.config import GatewayConfig  # noqa: E402
from chairside.record import fhir  # noqa: E402
from chairside.record.query import InfluxReader  # noqa: E402
from chairside.record.report_command import Loaded, load_session, write_report  # noqa: E402
from chairside.service import Gateway, default_alarm_stage  # noqa: E402
from chairside.sim.services import InfluxDB, Mosquitto  # noqa: E402
from chairside.sim.simulator import Fleet, make_box  # noqa: E402
from chairside.staff import commands as staff  # noqa: E402

SITE, CHAIR = "demo-clinic", "3"
MIN = 60_000
START_MIN = 11
"""the session starts 11 min after the box boots (NIBP readings at about 5 and 10 min before it)"""
END_MIN = START_MIN + 45


class _SimWall:
    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock.true_epoch_ms())


def _script() -> list[tuple[int, str, Any]]:
    s = START_MIN * MIN
    bp = [(0, (124, 79)), (s + 2 * MIN, (131, 83)), (s + 12 * MIN, (139, 87)), (s + 22 * MIN, (146, 90)),
          (s + 32 * MIN, (153, 94)), (s + 37 * MIN, (158, 97)), (s + 42 * MIN, (147, 91))]
    desat = s + 14 * MIN
    return ([(t, "bp", v) for t, v in bp] + [(0, "spo2", 97), (0, "pulse", 76)]
            + [(desat, "spo2", 88), (desat, "pulse", 84), (desat + 20_000, "spo2", 83), (desat + 20_000, "pulse", 92),
               (desat + 50_000, "spo2", 91), (desat + 70_000, "spo2", 97), (desat + 70_000, "pulse", 78)])


def _staff(port: int, action: str, **extra: Any) -> None:
    args = {"action": action, "site": SITE, "chair": CHAIR, "by": "RN Okafor", "mqtt_host": "127.0.0.1",
            "mqtt_port": port, "mqtt_credentials": None, "mqtt_ca": None}
    args.update(extra)
    if staff.run(argparse.Namespace(**args)) != 0:
        raise SystemExit(f"staff {action} failed")


def _advance(fleet: Fleet, box: Any, gateway: Gateway, until_ms: int) -> None:
    """Run the box to ``until_ms`` of uptime a second at a time, letting the gateway catch up."""
    while box.clock.now_ms() < until_ms:
        fleet.run_for(1000)
        deadline = time.monotonic() + 5
        while gateway.metrics.total("messages_in") < box.app.seq and time.monotonic() < deadline:
            time.sleep(0.001)
        gateway.wait_idle(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "report-sample")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chairside-report-sample-"))
    mosquitto, influxdb = Mosquitto(workdir=work / "mosquitto"), InfluxDB(workdir=work / "influxd")
    mosquitto.start()
    influxdb.start()
    box = make_box(SITE, CHAIR, "normal", "127.0.0.1", mosquitto.port, fs_dir=str(work / "box"), nibp_interval_s=300)
    box.patient.script(_script())
    gateway = Gateway(GatewayConfig(mqtt_port=mosquitto.port, influx_url=influxdb.url, state_dir=work / "gw",
                                    batch_interval_s=0.005), default_alarm_stage(), clock=_SimWall(box.clock))
    fleet = Fleet([box], step_ms=1000)
    began = time.monotonic()
    try:
        gateway.start()
        if not gateway.wait_subscribed(10):
            raise SystemExit("the gateway did not subscribe")
        _advance(fleet, box, gateway, START_MIN * MIN)
        _staff(mosquitto.port, "session", what="start", ref="ENC-0042")
        desat = (START_MIN + 14) * MIN
        _advance(fleet, box, gateway, desat + 45_000)
        _staff(mosquitto.port, "ack", alarm="spo2_critical")
        _advance(fleet, box, gateway, END_MIN * MIN)
        _staff(mosquitto.port, "session", what="end")
        _advance(fleet, box, gateway, END_MIN * MIN + 1000)
        now = box.clock.true_epoch_ms()
        loaded = load_session(InfluxReader(influxdb.url, "chairside"), SITE, CHAIR, None, now)
        if not isinstance(loaded, Loaded):
            raise SystemExit(loaded)
        files = write_report(loaded, args.out, tz=UTC, site_name="Demo clinic (simulated data)", now_ms=now)
        shutil.move(files.pdf, args.out / "sample.pdf")
        shutil.move(files.png, args.out / "sample.png")
        (args.out / "sample-fhir.json").write_text(fhir.bundle_json(loaded.data, loaded.figures), encoding="utf-8")
    finally:
        fleet.close()
        gateway.stop()
        influxdb.stop()
        mosquitto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}/sample.pdf, sample.png and sample-fhir.json in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
