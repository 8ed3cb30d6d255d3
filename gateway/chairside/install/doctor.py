"""``chairside doctor``: is the clinic server working, and if not, what to do.

    sudo chairside doctor [--root DIR] [--stale-s 120] [--gateway-health URL] [--pager-health URL]

Reads the installed layout (``/etc/chairside/install.json`` and the files the
installer wrote) and checks, printing one line each (``OK``, ``WARN`` or
``FAIL``, with the fix after ``->``):

* the broker: the staff account logs in on the loopback listener; the TLS
  listener completes a handshake verified against the clinic CA;
* InfluxDB: answers, refuses an anonymous write, takes the gateway's login and
  its write; the default retention policy;
* the gateway's ``/health`` (URL from the installed unit's ``--metrics-port``)
  and the pager's ``/healthz`` (address from its policy's ``ack`` section);
* the certificates: days left on the server certificate and the CA;
* the clock: ``timedatectl`` says the system clock is NTP-synchronised;
* every provisioned box: last reading, last status (online, firmware, spool,
  dropped), read as Grafana's read-only user.

Exit status 1 when something FAILs, else 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chairside import mqtt_auth
from chairside.install import influxdb, pki
from chairside.install.server import Layout, check_broker, influx_url, pager_policy_edited, unit_command
from chairside.store.influx import CredentialsError, InfluxError, InfluxUnauthorized, InfluxWriter, read_credentials

CERT_WARN_DAYS = 30
OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    level: str
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:<4} {self.what}" + (f" -> {self.fix}" if self.fix else "")


def _settings(layout: Layout) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(layout.settings.read_text())
    return data


# ---- broker ------------------------------------------------------------------------------------


def check_mqtt(layout: Layout, settings: dict[str, Any]) -> list[Finding]:
    found = []
    problems = check_broker(layout, settings)
    if problems:
        found.append(Finding(FAIL, f"broker: {problems[0]}",
                             "systemctl status mosquitto; journalctl -u mosquitto; re-run `chairside install`"))
    else:
        found.append(Finding(OK, f"broker: the staff account logs in on 127.0.0.1:{settings['mqtt_port']}"))
    port = int(settings["mqtt_tls_port"])
    hosts = [str(h) for h in settings.get("server_hosts") or []] or [socket.getfqdn()]
    listen = str(settings.get("mqtt_tls_listen") or "127.0.0.1")
    try:
        context = mqtt_auth.tls_context(layout.broker_dir / "ca.crt")
        with socket.create_connection((listen, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=hosts[0]):
            pass
        found.append(Finding(OK, f"broker: TLS on port {port} verified as {hosts[0]} against the clinic CA"))
    except (OSError, ssl.SSLError) as exc:
        found.append(Finding(FAIL, f"broker: TLS on port {port}: {exc}",
                             "check /etc/mosquitto/chairside/server.crt matches ca.crt; "
                             "`chairside install --renew-server-cert`"))
    return found


# ---- InfluxDB ----------------------------------------------------------------------------------


def check_influx(layout: Layout, settings: dict[str, Any]) -> list[Finding]:
    url = influx_url(settings)
    database = str(settings["database"])
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=5) as resp:
            resp.read()
    except (OSError, urllib.error.URLError) as exc:
        return [Finding(FAIL, f"InfluxDB at {url} does not answer: {exc}",
                        "systemctl status influxdb; journalctl -u influxdb")]
    found = [Finding(OK, f"InfluxDB answers at {url}")]
    anonymous = InfluxWriter(url, database, 5.0)
    try:
        anonymous.check_write()
        found.append(Finding(FAIL, "InfluxDB accepts writes without a login",
                             "auth-enabled = true in /etc/influxdb/influxdb.conf: re-run `chairside install`"))
    except InfluxUnauthorized:
        found.append(Finding(OK, "InfluxDB refuses anonymous writes (auth on)"))
    except InfluxError as exc:
        found.append(Finding(WARN, f"InfluxDB anonymous write check: {exc}"))
    finally:
        anonymous.close()
    try:
        login = read_credentials(layout.influx_dir / "gateway.json")
    except CredentialsError as exc:
        found.append(Finding(FAIL, str(exc), "re-run `chairside install`"))
        return found
    writer = InfluxWriter(url, database, 5.0, credentials=login)
    try:
        writer.check_write()
        found.append(Finding(OK, f"InfluxDB takes writes from the gateway's user {login[0]} on {database}"))
    except InfluxError as exc:
        found.append(Finding(FAIL, f"InfluxDB refuses the gateway's user {login[0]}: {exc}",
                             "re-run `chairside install` (resets the user's password and grant)"))
    finally:
        writer.close()
    try:
        admin = influxdb.InfluxClient(url, read_credentials(layout.influx_dir / "admin.json"))
        duration = influxdb.retention_of(admin, database)
    except (CredentialsError, influxdb.InfluxSetupError) as exc:
        found.append(Finding(WARN, f"InfluxDB retention: cannot read it: {exc}"))
    else:
        if duration is None:
            found.append(Finding(FAIL, f"InfluxDB: {database} has no default retention policy",
                                 "re-run `chairside install --retention ...`"))
        else:
            shown = "for ever" if duration == "0s" else duration
            found.append(Finding(OK, f"InfluxDB retention of {database}: {shown} "
                                 f"(chosen: {settings['retention']}; docs/install-server.md)"))
    return found


# ---- services' health ---------------------------------------------------------------------------


def gateway_health_url(layout: Layout) -> str | None:
    """``http://127.0.0.1:PORT/health`` from the installed unit's ``--metrics-port``."""
    unit = layout.units / "chairside-gateway.service"
    if not unit.exists():
        return None
    argv, _ = unit_command(unit)
    for index, arg in enumerate(argv):
        if arg == "--metrics-port" and index + 1 < len(argv):
            return f"http://127.0.0.1:{argv[index + 1]}/health"
        if arg.startswith("--metrics-port="):
            return f"http://127.0.0.1:{arg.split('=', 1)[1]}/health"
    return None


def pager_health_url(layout: Layout) -> str | None:
    try:
        policy = json.loads((layout.etc / "pager-policy.json").read_text())
        port = int(policy["ack"]["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"http://127.0.0.1:{port}/healthz"


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")[:200]


def check_health(name: str, url: str | None, unit: str, missing_fix: str) -> Finding:
    if url is None:
        return Finding(WARN, f"{name}: no health address known", missing_fix)
    try:
        status, body = _get_json(url)
    except OSError as exc:
        return Finding(FAIL, f"{name}: {url} does not answer ({exc})",
                       f"systemctl status {unit}; journalctl -u {unit}")
    if status == 200:
        return Finding(OK, f"{name}: {url} healthy")
    bad = ""
    if isinstance(body, dict):
        bad = ", ".join(f"{k}={v}" for k, v in sorted(body.items())
                        if v is False or (k == "influx_write_refused" and v) or (k == "spool_full" and v))
    return Finding(FAIL, f"{name}: {url} answers {status}" + (f" ({bad})" if bad else ""),
                   f"journalctl -u {unit} (docs/install-server.md)")


# ---- certificates and clock ---------------------------------------------------------------------


def cert_not_after(crt: Path) -> dt.datetime:
    text = pki._openssl("x509", "-in", str(crt), "-noout", "-enddate").strip()
    stamp = text.split("=", 1)[1].replace("  ", " ")
    return dt.datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)


def check_cert(name: str, crt: Path, now: dt.datetime, fix: str) -> Finding:
    try:
        end = cert_not_after(crt)
    except (pki.PkiError, OSError, ValueError, IndexError) as exc:
        return Finding(FAIL, f"{name} {crt}: cannot read it: {exc}", fix)
    days = (end - now).total_seconds() / 86400
    when = end.date().isoformat()
    if days < 0:
        return Finding(FAIL, f"{name} expired on {when}", fix)
    if days < CERT_WARN_DAYS:
        return Finding(WARN, f"{name} expires on {when} ({days:.0f} days)", fix)
    return Finding(OK, f"{name} valid until {when} ({days:.0f} days)")


def timedatectl_synced() -> bool | None:
    """True/False from ``timedatectl show -p NTPSynchronized``; None if it cannot tell."""
    binary = shutil.which("timedatectl")
    if binary is None:
        return None
    try:
        proc = subprocess.run([binary, "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                              text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = proc.stdout.strip()
    return True if value == "yes" else False if value == "no" else None


def check_clock(synced: bool | None) -> Finding:
    fix = ("systemctl enable --now systemd-timesyncd; set NTP= in /etc/systemd/timesyncd.conf to the "
           "clinic's time server (docs/install-server.md)")
    if synced is True:
        return Finding(OK, "clock: NTP-synchronised")
    if synced is False:
        return Finding(FAIL, "clock: not NTP-synchronised (stored times, staleness and page times depend on it)",
                       fix)
    return Finding(WARN, "clock: cannot tell whether it is synchronised (no timedatectl answer)", fix)


# ---- boxes ---------------------------------------------------------------------------------------


def _by_chair(series: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for item in series:
        tags = item.get("tags") or {}
        row = dict(zip(item["columns"], item["values"][0], strict=True))
        out[(str(tags.get("site")), str(tags.get("chair")))] = row
    return out


def check_boxes(layout: Layout, settings: dict[str, Any], now_ms: int, stale_s: float) -> list[Finding]:
    try:
        accounts = json.loads((layout.state / "accounts.json").read_text())
    except (OSError, ValueError) as exc:
        return [Finding(WARN, f"boxes: cannot read {layout.state / 'accounts.json'}: {exc}")]
    boxes = sorted(accounts.get("boxes", {}).values(), key=lambda b: (b["site"], b["chair"]))
    if not boxes:
        return [Finding(WARN, "boxes: none provisioned", "chairside provision --site ... --chair ... (docs)")]
    database = str(settings["database"])
    try:
        reader = influxdb.InfluxClient(influx_url(settings), read_credentials(layout.influx_dir / "grafana.json"))
        seen = _by_chair(reader.query('SELECT last("seq") AS seq FROM "vitals" GROUP BY "site", "chair"', database))
        status = _by_chair(reader.query(
            'SELECT last("online") AS online, last("fw") AS fw, last("spool") AS spool, '
            'last("dropped") AS dropped FROM "device" GROUP BY "site", "chair"', database))
    except (CredentialsError, influxdb.InfluxSetupError) as exc:
        return [Finding(WARN, f"boxes: cannot read InfluxDB: {exc}")]
    found = []
    for box in boxes:
        key = (box["site"], box["chair"])
        name = f"box {key[0]}/{key[1]}"
        last = seen.get(key)
        info = status.get(key, {})
        extra = ", ".join(f"{k} {info[k]}" for k in ("fw", "spool", "dropped") if info.get(k) is not None)
        extra = f" ({extra})" if extra else ""
        if last is None:
            found.append(Finding(WARN, f"{name}: never sent a reading{extra}",
                                 "power it, check its Wi-Fi and config (chairside flash), "
                                 "journalctl -u mosquitto for its login"))
            continue
        at = dt.datetime.fromisoformat(str(last["time"]).replace("Z", "+00:00"))
        age_s = now_ms / 1000 - at.timestamp()
        when = at.strftime("%Y-%m-%d %H:%M:%S UTC")
        if age_s > stale_s:
            found.append(Finding(WARN, f"{name}: last reading {when} ({age_s / 60:.0f} min ago){extra}",
                                 "idle chair, or box off / out of Wi-Fi"))
        elif info.get("dropped"):
            found.append(Finding(WARN, f"{name}: last reading {when}{extra}: it dropped readings",
                                 "its flash spool overflowed during an outage (docs/engineer.md)"))
        else:
            found.append(Finding(OK, f"{name}: last reading {when}{extra}"))
    return found


# ---- all of it ------------------------------------------------------------------------------------


def diagnose(layout: Layout, *, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
             clock_synced: Callable[[], bool | None] = timedatectl_synced, stale_s: float = 120.0,
             gateway_health: str | None = None, pager_health: str | None = None) -> list[Finding]:
    try:
        settings = _settings(layout)
    except (OSError, ValueError) as exc:
        return [Finding(FAIL, f"no installation at {layout.root}: {exc}", "run `chairside install --site ...`")]
    found: list[Finding] = []
    found += check_mqtt(layout, settings)
    found += check_influx(layout, settings)
    found.append(check_health("gateway", gateway_health or gateway_health_url(layout), "chairside-gateway",
                              "give the gateway --metrics-port PORT in its unit"))
    if pager_policy_edited(layout) or pager_health:
        found.append(check_health("pager", pager_health or pager_health_url(layout), "chairside-pager",
                                  "set ack.port in /etc/chairside/pager-policy.json"))
    else:
        found.append(Finding(WARN, "pager: its policy is still the template, so it is not started",
                             "edit /etc/chairside/pager-policy.json, then systemctl restart chairside-pager"))
    moment = now()
    renew = "sudo chairside install --renew-server-cert (docs/install-server.md)"
    found.append(check_cert("server certificate", layout.broker_dir / "server.crt", moment, renew))
    found.append(check_cert("clinic CA", layout.broker_dir / "ca.crt", moment,
                            "a new CA means new certificates on every box: plan it (docs/install-server.md)"))
    found.append(check_clock(clock_synced()))
    found += check_boxes(layout, settings, int(moment.timestamp() * 1000), stale_s)
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"), help="the installed layout's root")
    parser.add_argument("--stale-s", type=float, default=120.0,
                        help="a box whose last reading is older than this is reported")
    parser.add_argument("--gateway-health", default=None, help="gateway /health URL (default: from its unit)")
    parser.add_argument("--pager-health", default=None, help="pager /healthz URL (default: from its policy)")


def run(args: argparse.Namespace) -> int:
    found = diagnose(Layout(args.root.resolve()), stale_s=args.stale_s, gateway_health=args.gateway_health,
                     pager_health=args.pager_health)
    for finding in found:
        print(finding.line())
    failed = sum(1 for f in found if f.level == FAIL)
    warned = sum(1 for f in found if f.level == WARN)
    print(f"doctor: {failed} failed, {warned} warnings")
    return 1 if failed else 0
