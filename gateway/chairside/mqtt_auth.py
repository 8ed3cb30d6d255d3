"""Broker login and TLS options shared by the gateway, the pager and the
serial bridge: ``--mqtt-credentials FILE`` (the JSON written by
``chairside provision --service NAME``: ``{"user": ..., "password": ...}``)
and ``--mqtt-ca FILE`` (the clinic CA, turns TLS on)."""

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
                        help="JSON file {user, password} from `chairside provision --service ...`")
    parser.add_argument("--mqtt-ca", type=Path, default=None,
                        help="clinic CA certificate: connect with TLS and verify the broker")


def read_credentials(path: Path) -> tuple[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path}: cannot read credentials: {exc}") from exc
    user, password = data.get("user"), data.get("password")
    if not isinstance(user, str) or not user:
        raise CredentialsError(f"{path}: user: expected a non-empty string")
    if not isinstance(password, str) or not password:
        raise CredentialsError(f"{path}: password: expected a non-empty string")
    return user, password


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that verifies the broker against the clinic CA."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def apply(client: mqtt.Client, credentials: Path | None, ca_file: Path | None) -> None:
    """Configure login and TLS on a paho client before it connects."""
    if credentials is not None:
        user, password = read_credentials(credentials)
        client.username_pw_set(user, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
