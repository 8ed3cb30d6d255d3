"""Server certificate renewal (`chairside install`) and expiry checks (`chairside doctor`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from chairside.install import doctor, pki, server


def test_install_renews_a_server_certificate_that_expires_soon(tmp_path: Path) -> None:
    layout = server.Layout(tmp_path / "root")
    for folder in (layout.pki, layout.broker_dir, layout.state, layout.at("/etc/mosquitto/conf.d")):
        folder.mkdir(parents=True)
    pki.init_ca(layout.pki)
    pki.issue_server(layout.pki, ["127.0.0.1"], days=10)
    settings = dict(server.DEFAULTS, site="clinic1", server_hosts=["127.0.0.1"])
    lines: list[str] = []
    report = server.Report(lines.append)
    owners = server.Owners(layout, report)
    now = dt.datetime.now(dt.UTC)
    soon = doctor.check_cert("server certificate", layout.pki / "server.crt", now, "renew")
    assert soon.level == "WARN" and "10 days" in soon.what and soon.fix == "renew"
    server.step_broker(layout, settings, report, owners)
    assert any("expires within 60 days" in line for line in lines), lines
    renewed = doctor.cert_not_after(layout.broker_dir / "server.crt")
    assert (renewed - now).days >= pki.LEAF_DAYS - 1
    lines.clear()
    server.step_broker(layout, settings, report, owners)  # nothing to do now
    assert not any("server certificate" in line for line in lines), lines
    server.step_broker(layout, settings, report, owners, renew=True)
    assert any("asked (--renew-server-cert)" in line for line in lines), lines
    later = now + dt.timedelta(days=pki.LEAF_DAYS + 1)
    assert doctor.check_cert("server certificate", layout.broker_dir / "server.crt", later, "renew").level == "FAIL"
