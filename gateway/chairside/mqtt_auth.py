"""Broker login and TLS options shared by the gateway, the pager, the staff
commands and the serial bridge: ``--mqtt-credentials FILE`` (the JSON written by
``chairside provision --service NAME``: ``{"user": ..., "password": ...,
"logins": {NAME: {"user": ..., "password": ...}}}``, or a box's config.json,
whose ``mqtt`` section holds its login) and ``--mqtt-ca FILE`` (the clinic CA,
turns TLS on).

The shipped broker binds client ids to accounts (``use_username_as_clientid``):
a connection's client id *is* its user name, whatever it asks for, so every
connection needs its own account (``logins`` are a service's further
connections, e.g. the gateway's ``publisher``).  :func:`client_id` gives a
client the id the broker will use, so logs and sessions agree on both the
shipped and the anonymous demo broker."""

from __future__ import annotations

import argparse
import json
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt


class CredentialsError(ValueError):
    """The credentials file is missing or malformed (message names the file and field)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt-credentials", type=Path, default=None,
                        help="JSON file {user, password, logins} from `chairside provision --service "
                        "...` (a box's config.json for the serial bridge)")
    parser.add_argument("--mqtt-ca", type=Path, default=None,
                        help="clinic CA certificate: connect with TLS and verify the broker")


def read_credentials(path: Path, login: str | None = None) -> tuple[str, str]:
    """(user, password) of the file's main account, or of its ``login``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path}: cannot read credentials: {exc}") from exc
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: expected a JSON object")
    where = ""
    if "user" not in data and isinstance(data.get("mqtt"), dict):
        data, where = data["mqtt"], "mqtt."  # a box's config.json
    if login is not None:
        logins = data.get("logins")
        entry = logins.get(login) if isinstance(logins, dict) else None
        if not isinstance(entry, dict):
            raise CredentialsError(
                f"{path}: no {login!r} login (one broker account per connection): provision "
                "the service again (`chairside provision --service ...`) and reload the broker")
        data, where = entry, f"{where}logins.{login}."
    user, password = data.get("user"), data.get("password")
    if not isinstance(user, str) or not user:
        raise CredentialsError(f"{path}: {where}user: expected a non-empty string")
    if not isinstance(password, str) or not password:
        raise CredentialsError(f"{path}: {where}password: expected a non-empty string")
    return user, password


def has_login(path: Path, login: str) -> bool:
    """Whether the credentials file holds the further login ``login``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    logins = data.get("logins") if isinstance(data, dict) else None
    return isinstance(logins, dict) and isinstance(logins.get(login), dict)


def client_id(credentials: Path | None, default: str, login: str | None = None) -> str:
    """The client id to connect with: the account's user name when logging in
    (the shipped broker uses it whatever the client asks), else ``default``."""
    if credentials is None:
        return default
    return read_credentials(credentials, login)[0]


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that verifies the broker against the clinic CA."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def apply(client: mqtt.Client, credentials: Path | None, ca_file: Path | None,
          login: str | None = None) -> None:
    """Configure login (the main account or ``login``) and TLS on a paho
    client before it connects."""
    if credentials is not None:
        user, password = read_credentials(credentials, login)
        client.username_pw_set(user, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
