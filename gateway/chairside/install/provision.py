"""``chairside provision``: broker accounts, the ACL and each box's config.json.

    chairside provision --state-dir D --site S --chair N --mqtt-host H [--wifi-ssid X] [--ntp-host T]
    chairside provision --state-dir D --site S --chair N --revoke
    chairside provision --state-dir D --service gateway|pager|staff|drill [--revoke]

Every run regenerates the broker's password file and ACL from
``D/accounts.json`` (password hashes only; never a plain password), writes
them to ``--broker-dir`` (default ``D/mosquitto``), and tells you to reload
Mosquitto (``systemctl reload mosquitto``, i.e. SIGHUP).  Provisioning an
existing box or service again *rotates* its password.

Files under D (secrets mode 0600):
    accounts.json                      users, password hashes, box settings
    boxes/<site>/<chair>/config.json   the box's config (copied by `chairside flash`)
    services/<name>.json               {"user", "password", "logins": {...}} for gateway/pager/staff/drill
    mosquitto/passwd, mosquitto/acl    what the broker reads

One account per broker connection: the shipped broker replaces every client
id by the account's user name (``use_username_as_clientid``), so that no
client can take over another's id; two connections on one account would
knock each other off.  A service with more than one connection gets one
account per connection, all in its credentials file: the gateway's ingest
session ``chairside-gateway`` and its publisher ``chairside-gateway-pub``
(login ``publisher``); the staff account ``chairside-staff`` (``chairside
staff``) and ``chairside-flash`` (login ``flash``, what ``chairside flash``
watches the broker with).  A box's account ``box-<site>-<chair>`` is its
client id; ``chairside serial-bridge`` uses the box's config.json.

Drills (``chairside drill``): ``chairside-drill`` watches the drill and sends
its commands, ``chairside-drill-box`` (login ``box``) is the simulated drill
box.  Both may touch only *drill chairs*: ``drill-<chair>`` of every
provisioned box (Mosquitto's ACL wildcards match whole topic levels, so a
``drill-+`` rule cannot be written: the ACL lists each drill chair and is
regenerated whenever a box is provisioned or revoked).  The drill box
publishes only as a drill chair, never as a real one; the watcher reads the
drill chairs' topics and the site's ``pages``, and writes only a drill
chair's ``cmd``, ``alarms/ack`` and ``drill/end``.  One drill at a time (one
account per connection).

Password file format: Mosquitto 2.0's ``$7$`` entries, PBKDF2-HMAC-SHA512,
``user:$7$<iterations>$<base64 salt>$<base64 hash>``, written directly with
:func:`hashlib.pbkdf2_hmac` (the same format ``mosquitto_passwd`` writes), so the
gateway host does not need the Mosquitto tools.  Passwords are 32 random
bytes (URL-safe base64), which is what makes a brute-force attack on a leaked
hash hopeless, whatever the iteration count.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from chairside import contract
from chairside.paths import REPO
from chairside.sim.services import Mosquitto

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default in 2.0
SERVICES: dict[str, str] = {
    "gateway": "chairside-gateway",
    "pager": "chairside-pager",
    "staff": "chairside-staff",
    "drill": "chairside-drill",
}
# more connections of a service, each with its own account: login -> user
SERVICE_LOGINS: dict[str, dict[str, str]] = {
    "gateway": {"publisher": "chairside-gateway-pub"},
    "pager": {},
    "staff": {"flash": "chairside-flash", "station": "chairside-station"},
    "drill": {"box": "chairside-drill-box"},
}
SHIPPED_CONF = REPO / "deploy" / "mosquitto" / "chairside.conf"
SHIPPED_DIR = "/etc/mosquitto/chairside/"
TLS_PORT = 8883
PLAIN_PORT = 1883


class ProvisionError(ValueError):
    """Bad site/chair, missing setting, or unknown account."""


# ---- pure parts: names, hashes, ACL --------------------------------------------


def box_user(site: str, chair: str) -> str:
    return f"box-{site}-{chair}"


def check_id(kind: str, value: str) -> str:
    if not re.fullmatch(str(contract.load()["id_pattern"]), value):
        raise ProvisionError(f"--{kind} {value!r}: must match {contract.load()['id_pattern']}")
    return value


def _check_host(flag: str, value: str) -> str:
    """A host name or IP address (or "" for none) as the box's config accepts it (0..253 characters)."""
    if len(value) > 253 or not re.fullmatch(r"[A-Za-z0-9.:_-]*", value):
        raise ProvisionError(f"{flag} {value!r}: expected a host name or IP address (at most 253 characters)")
    return value


def new_password() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """A Mosquitto 2.0 password-file hash (``$7$``, PBKDF2-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    salt_b64 = base64.b64encode(salt).decode()
    return f"$7${iterations}${salt_b64}${base64.b64encode(digest).decode()}"


def _topic(name: str, site: str = "+", chair: str = "+") -> str:
    pattern = str(contract.load()["topics"][name]["pattern"])
    return pattern.replace("{site}", site).replace("{chair}", chair)


BOX_READS: Final[tuple[str, ...]] = ("cmd", "stored")
# what the drill's watcher sends to a drill chair (docs/contract.md)
DRILL_WRITES: Final[tuple[str, ...]] = ("cmd", "alarm_ack", "drill_end")


def drill_chairs(accounts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(site, drill chair) for every provisioned box whose ``drill-<chair>`` is a valid id."""
    from chairside.alarms.engine import DRILL_PREFIX

    ids = re.compile(str(contract.load()["id_pattern"]))
    chairs = {(str(b["site"]), DRILL_PREFIX + str(b["chair"])) for b in accounts.get("boxes", {}).values()}
    return sorted(c for c in chairs if ids.fullmatch(c[1]) and not c[1].startswith(DRILL_PREFIX * 2))


def acl_text(accounts: Mapping[str, Any]) -> str:
    """The Mosquitto ACL for every account in ``accounts`` (deterministic)."""
    topics: Mapping[str, Any] = contract.load()["topics"]
    root = contract.topic_root()
    lines = ["# GENERATED by `chairside provision` - do not edit; re-run provision instead.",
             "# No topic lines before the first `user`: anonymous clients get nothing.", ""]
    services: Mapping[str, Any] = accounts.get("services", {})
    if "gateway" in services:
        # the ingest session: reads what boxes and staff send, writes the stored watermarks
        lines += [f"user {services['gateway']['user']}", f"topic readwrite {root}/#", ""]
        publisher = _login(services["gateway"], "publisher")
        if publisher is not None:  # publishes alarm events, commands, answers
            lines += [f"user {publisher}", f"topic write {root}/#", ""]
    if "pager" in services:
        lines += [f"user {services['pager']['user']}",
                  f"topic read {_topic('alarms')}",
                  f"topic read {_topic('alarms_active')}",
                  f"topic write {_topic('pages')}",
                  f"topic read {_topic('page_ack')}",
                  # an on-call acknowledgement is forwarded to the alarm engine
                  f"topic write {_topic('alarm_ack')}",
                  # its own technical alarms (pager_undeliverable, pager_exhausted)
                  f"topic write {_topic('alarms', chair='pager')}", ""]
    if "staff" in services:
        staff_grants = [f"topic read {root}/#"] + [f"topic write {_topic(n)}" for n in sorted(topics)
                                                   if topics[n]["from"] == "staff"]
        lines += [f"user {services['staff']['user']}", *staff_grants, ""]
        station = _login(services["staff"], "station")
        if station is not None:  # the nurses' station: the staff grants on a connection of its own
            lines += [f"user {station}", *staff_grants, ""]
        flash = _login(services["staff"], "flash")
        if flash is not None:  # waits for a flashed box's birth message
            lines += [f"user {flash}", f"topic read {_topic('status')}", ""]
    if "drill" in services:
        lines += _drill_acl(services["drill"], accounts, topics)
    boxes: Mapping[str, Any] = accounts.get("boxes", {})
    for key in sorted(boxes):
        box = boxes[key]
        site, chair = str(box["site"]), str(box["chair"])
        lines.append(f"user {box['user']}")
        lines += [f"topic write {_topic(n, site, chair)}" for n in sorted(topics)
                  if topics[n]["from"] == "box"]
        # a box reads only what the gateway addresses to it: commands and
        # its stored watermark (end-to-end delivery, docs/contract.md)
        lines += [f"topic read {_topic(n, site, chair)}" for n in BOX_READS] + [""]
    return "\n".join(lines) + "\n"


def _drill_acl(service: Mapping[str, Any], accounts: Mapping[str, Any],
               topics: Mapping[str, Any]) -> list[str]:
    """ACL lines of the drill accounts: drill chairs only (see the module docstring)."""
    chairs = drill_chairs(accounts)
    lines = [f"user {service['user']}"]
    lines += [f"topic read {_topic('pages', site)}" for site in sorted({s for s, _ in chairs})]
    for site, chair in chairs:
        lines.append(f"topic read {contract.topic_root()}/{site}/{chair}/#")
        lines += [f"topic write {_topic(n, site, chair)}" for n in DRILL_WRITES]
    lines.append("")
    box = _login(service, "box")
    if box is not None:  # the simulated drill box: a box's rights, on drill chairs only
        lines.append(f"user {box}")
        for site, chair in chairs:
            lines += [f"topic write {_topic(n, site, chair)}" for n in sorted(topics)
                      if topics[n]["from"] == "box"]
            lines += [f"topic read {_topic(n, site, chair)}" for n in BOX_READS]
        lines.append("")
    return lines


def _login(service: Mapping[str, Any], login: str) -> str | None:
    entry = service.get("logins", {}).get(login)
    return None if entry is None else str(entry["user"])


def passwd_text(accounts: Mapping[str, Any]) -> str:
    entries = [(str(a["user"]), str(a["hash"])) for a in accounts.get("services", {}).values()]
    entries += [(str(login["user"]), str(login["hash"]))
                for a in accounts.get("services", {}).values()
                for login in a.get("logins", {}).values()]
    entries += [(str(b["user"]), str(b["hash"])) for b in accounts.get("boxes", {}).values()]
    return "".join(f"{user}:{digest}\n" for user, digest in sorted(entries))


# ---- state on disk -----------------------------------------------------------------


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _write_public(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


class State:
    """The provisioning state folder (see the module docstring)."""

    def __init__(self, state_dir: Path, broker_dir: Path | None = None) -> None:
        self.dir = state_dir
        self.broker_dir = broker_dir or state_dir / "mosquitto"
        self.accounts_path = state_dir / "accounts.json"
        self.accounts: dict[str, Any] = {"boxes": {}, "services": {}}
        if self.accounts_path.exists():
            self.accounts = json.loads(self.accounts_path.read_text())

    def box_config_path(self, site: str, chair: str) -> Path:
        return self.dir / "boxes" / site / chair / "config.json"

    def service_path(self, name: str) -> Path:
        return self.dir / "services" / f"{name}.json"

    def service_credentials(self, name: str, login: str | None = None) -> tuple[str, str]:
        """The (user, password) of a service's main account, or of one of its
        other connections (``login``, see SERVICE_LOGINS)."""
        from chairside import mqtt_auth

        path = self.service_path(name)
        if not path.exists():
            raise ProvisionError(f"no {name} account; run `chairside provision --service {name}`")
        try:
            return mqtt_auth.read_credentials(path, login)
        except mqtt_auth.CredentialsError as exc:
            raise ProvisionError(str(exc)) from exc

    def save(self) -> None:
        _write_secret(self.accounts_path, json.dumps(self.accounts, indent=1, sort_keys=True))
        # the broker runs as its own user: passwd holds hashes only, acl no secrets
        _write_public(self.broker_dir / "passwd", passwd_text(self.accounts), 0o640)
        _write_public(self.broker_dir / "acl", acl_text(self.accounts), 0o644)

    # -- boxes --
    def provision_box(self, site: str, chair: str, *, mqtt_host: str | None = None,
                      mqtt_port: int | None = None, tls: bool | None = None,
                      wifi_ssid: str | None = None, wifi_key: str | None = None,
                      ntp_host: str | None = None) -> tuple[Path, bool]:
        """Create or rotate a box; returns (config.json path, rotated?).

        ``ntp_host``: the NTP server the box asks (``""`` = no NTP: the
        gateway's ``time`` command sets the clock); None keeps the box's
        previous setting, or leaves the key out so the firmware's default
        (``pool.ntp.org``, csfw/config.py) applies."""
        check_id("site", site)
        check_id("chair", chair)
        path = self.box_config_path(site, chair)
        old: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        old_mqtt: dict[str, Any] = old.get("mqtt", {})
        old_wifi: dict[str, Any] = old.get("wifi", {})
        use_tls = tls if tls is not None else bool(old_mqtt.get("tls", True))
        host = mqtt_host or old_mqtt.get("host")
        if not host:
            raise ProvisionError("--mqtt-host is required the first time a box is provisioned")
        port = mqtt_port or (old_mqtt.get("port") if tls is None else None)
        port = int(port or (TLS_PORT if use_tls else PLAIN_PORT))
        password = new_password()
        user = box_user(site, chair)
        mqtt: dict[str, Any] = {"host": host, "port": port, "user": user,
                                "password": password, "tls": use_tls}
        if use_tls:
            mqtt["ca_file"] = "ca.crt"
        config: dict[str, Any] = {
            "site": site,
            "chair": chair,
            "wifi": {"ssid": wifi_ssid if wifi_ssid is not None else old_wifi.get("ssid", ""),
                     "key": wifi_key if wifi_key is not None else old_wifi.get("key", "")},
            "mqtt": mqtt,
        }
        for key in ("pins", "nibp_interval_s", "hist_ram_records", "spool_kb", "ntp_host"):
            if key in old:
                config[key] = old[key]
        if ntp_host is not None:
            config["ntp_host"] = _check_host("--ntp-host", ntp_host)
        rotated = f"{site}/{chair}" in self.accounts["boxes"]
        self.accounts["boxes"][f"{site}/{chair}"] = {
            "site": site, "chair": chair, "user": user, "hash": hash_password(password),
            "provisioned": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        _write_secret(path, json.dumps(config, indent=1, sort_keys=True) + "\n")
        self.save()
        return path, rotated

    def revoke_box(self, site: str, chair: str) -> None:
        key = f"{check_id('site', site)}/{check_id('chair', chair)}"
        if key not in self.accounts["boxes"]:
            raise ProvisionError(f"box {key} is not provisioned")
        del self.accounts["boxes"][key]
        self.box_config_path(site, chair).unlink(missing_ok=True)
        self.save()

    # -- service accounts --
    def provision_service(self, name: str) -> tuple[Path, bool]:
        if name not in SERVICES:
            raise ProvisionError(f"--service must be one of {', '.join(SERVICES)}")
        password = new_password()
        rotated = name in self.accounts["services"]
        logins = {login: (user, new_password()) for login, user in SERVICE_LOGINS[name].items()}
        self.accounts["services"][name] = {
            "user": SERVICES[name], "hash": hash_password(password),
            "logins": {login: {"user": user, "hash": hash_password(secret)}
                       for login, (user, secret) in logins.items()},
        }
        path = self.service_path(name)
        _write_secret(path, json.dumps({
            "user": SERVICES[name], "password": password,
            "logins": {login: {"user": user, "password": secret}
                       for login, (user, secret) in logins.items()},
        }) + "\n")
        self.save()
        return path, rotated

    def revoke_service(self, name: str) -> None:
        if name not in self.accounts["services"]:
            raise ProvisionError(f"service {name} is not provisioned")
        del self.accounts["services"][name]
        self.service_path(name).unlink(missing_ok=True)
        self.save()


# ---- the shipped broker configuration ----------------------------------------------


def render_shipped_config(conf_dir: Path, tls_port: int, plain_port: int,
                          text: str | None = None) -> str:
    """deploy/mosquitto/chairside.conf with its paths and ports replaced.

    Used to run the *shipped* configuration in tests and on a developer
    machine: only ``/etc/mosquitto/chairside/`` and the two listener lines
    change; authentication, ACL, TLS settings and anonymous access stay as
    shipped.  The TLS listener is bound to loopback.
    """
    text = text if text is not None else SHIPPED_CONF.read_text()
    out = []
    for line in text.splitlines():
        if line.strip() == f"listener {TLS_PORT}":
            line = f"listener {tls_port} 127.0.0.1"
        elif line.strip() == f"listener {PLAIN_PORT} 127.0.0.1":
            line = f"listener {plain_port} 127.0.0.1"
        out.append(line.replace(SHIPPED_DIR, f"{conf_dir}/"))
    return "\n".join(out) + "\n"


class ShippedMosquitto(Mosquitto):
    """A real Mosquitto running deploy/mosquitto/chairside.conf on loopback ports.

    ``conf_dir`` stands for /etc/mosquitto/chairside/ (passwd, acl, ca.crt,
    server.crt, server.key).  ``port`` is the plain loopback listener,
    ``tls_port`` the TLS listener.
    """

    def __init__(self, conf_dir: Path, tls_port: int | None = None,
                 workdir: Path | None = None) -> None:
        super().__init__(allow_anonymous=False, workdir=workdir)
        from chairside.sim.services import free_port

        self.conf_dir = conf_dir
        self.tls_port = tls_port or free_port()

    def config_text(self) -> str:
        local = [
            # when the tests run as root, stay root instead of switching to the
            # `mosquitto` user that cannot read the private temp folder
            "user root",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        shipped = render_shipped_config(self.conf_dir, self.tls_port, self.port)
        return shipped + "\n".join(local) + "\n"

    def reload(self) -> None:
        """SIGHUP: re-read the password file and ACL, like `systemctl reload`."""
        import signal

        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)


# ---- command line ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="provisioning state folder (keep it private; it holds box secrets)")
    parser.add_argument("--broker-dir", type=Path,
                        help="where to write passwd and acl (default STATE/mosquitto; "
                        "on the server: /etc/mosquitto/chairside)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--chair", help="chair id (with --site)")
    who.add_argument("--service", choices=sorted(SERVICES), help="a service account")
    parser.add_argument("--site", help="site id, e.g. clinic1")
    parser.add_argument("--revoke", action="store_true", help="remove the account")
    parser.add_argument("--mqtt-host", help="broker address the box uses (first time)")
    parser.add_argument("--mqtt-port", type=int, help="default 8883 with TLS, 1883 without")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", default=None,
                     help="box uses TLS (default)")
    tls.add_argument("--no-tls", dest="tls", action="store_false",
                     help="plain MQTT (loopback demo only)")
    parser.add_argument("--wifi-ssid", help="clinic Wi-Fi network for the box")
    parser.add_argument("--ntp-host",
                        help="NTP server the box asks for the time (an IP address avoids a DNS lookup; "
                        "\"\" turns NTP off); remembered; default: the firmware's pool.ntp.org")
    parser.add_argument("--wifi-key-file", type=Path,
                        help="file holding the Wi-Fi key (or set CHAIRSIDE_WIFI_KEY)")


def run(args: argparse.Namespace) -> int:
    state = State(args.state_dir, args.broker_dir)
    try:
        if args.service:
            if args.revoke:
                state.revoke_service(args.service)
                print(f"revoked service account {args.service}")
            else:
                path, rotated = state.provision_service(args.service)
                print(f"{'rotated' if rotated else 'created'} {args.service} account; "
                      f"credentials in {path}")
        else:
            if not args.site:
                raise ProvisionError("--site is required with --chair")
            chair = str(args.chair)
            if args.revoke:
                state.revoke_box(args.site, chair)
                print(f"revoked box {args.site}/{chair}")
            else:
                wifi_key = None
                if args.wifi_key_file is not None:
                    wifi_key = args.wifi_key_file.read_text().strip()
                elif os.environ.get("CHAIRSIDE_WIFI_KEY"):
                    wifi_key = os.environ["CHAIRSIDE_WIFI_KEY"]
                path, rotated = state.provision_box(
                    args.site, chair, mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port,
                    tls=args.tls, wifi_ssid=args.wifi_ssid, wifi_key=wifi_key, ntp_host=args.ntp_host)
                print(f"{'rotated credentials of' if rotated else 'provisioned'} box "
                      f"{args.site}/{chair}; config in {path}")
                if rotated:
                    print("flash the new config to the box: the old password stops working "
                          "when the broker reloads")
    except (ProvisionError, OSError) as exc:
        print(f"chairside provision: {exc}")
        return 1
    print(f"broker files updated in {state.broker_dir}; reload the broker "
          "(systemctl reload mosquitto) to apply")
    return 0
