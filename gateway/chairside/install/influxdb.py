"""InfluxDB 1.x for a clinic server: users, grants, database and retention.

:func:`configure` is what ``chairside install`` runs against the clinic's
influxd (``auth-enabled = true``, HTTP on loopback only), and what the tests
run against theirs.  It is idempotent: run again (an upgrade, a new retention)
it keeps the users, resets their passwords to the ones given, re-grants
exactly one privilege each and alters the retention policy.

Accounts (least privilege):

* the admin (``ALL PRIVILEGES``): used only here and by ``chairside doctor``
  and the backup, never by a running service;
* the gateway's write user: ``WRITE`` on the database, nothing else;
* Grafana's read-only user: ``READ`` on the database, nothing else.

Retention: the database's default policy ``chairside`` keeps points for
``retention`` (an InfluxQL duration such as ``400d``, or ``INF`` for ever);
see docs/install-server.md for the records duty behind the choice.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RETENTION_POLICY = "chairside"
DEFAULT_RETENTION = "400d"
"""About 13 months: a year of records plus a margin for late reviews (docs/install-server.md)."""
_DURATION = re.compile(r"^(INF|[1-9][0-9]*(h|d|w))$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class InfluxSetupError(RuntimeError):
    """InfluxDB answered with an error, or cannot be reached (message says which)."""


def check_retention(text: str) -> str:
    """``400d``, ``52w``, ``9600h`` or ``INF``; raises ValueError otherwise.

    At least one day (InfluxDB's minimum is one hour; a shorter one would drop a
    box's replay after an outage of more than that)."""
    value = text.strip()
    if not _DURATION.fullmatch(value):
        raise ValueError(f"retention {text!r}: expected e.g. 400d, 52w, 9600h or INF")
    if value.endswith("h") and int(value[:-1]) < 24:
        raise ValueError(f"retention {text!r}: at least 24h (boxes replay what an outage held back)")
    return value


def shard_duration(retention: str) -> str:
    """InfluxDB's own rule for a new policy (1h under 2 days, 1d up to 6 months, else
    7d), set explicitly so that altering a policy's duration keeps it sensible."""
    if retention == "INF":
        return "7d"
    hours = int(retention[:-1]) * {"h": 1, "d": 24, "w": 168}[retention[-1]]
    if hours < 48:
        return "1h"
    return "1d" if hours <= 180 * 24 else "7d"


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{kind} {name!r}: letters, digits, '_', '.', '-' only (1-64)")
    return name


class InfluxClient:
    """``/query`` over HTTP with Basic auth (or none); errors as :class:`InfluxSetupError`."""

    def __init__(self, url: str, credentials: tuple[str, str] | None = None,
                 timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.timeout_s = timeout_s

    def request(self, path: str, params: dict[str, str], body: bytes | None = None) -> tuple[int, str]:
        """(status, body) of ``POST path`` (GET without a body); raises only when unreachable."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.url}{path}"
        req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode("ascii")
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError) as exc:
            raise InfluxSetupError(f"InfluxDB at {self.url} cannot be reached: {exc}") from exc

    def query(self, influxql: str, database: str | None = None) -> list[dict[str, Any]]:
        """The statement's series (``[{"name", "columns", "values"}]``); raises on any error."""
        params = {"q": influxql}
        if database is not None:
            params["db"] = database
        status, text = self.request("/query", {}, urllib.parse.urlencode(params).encode())
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        error = data.get("error") if isinstance(data, dict) else None
        results = data.get("results") if isinstance(data, dict) else None
        if error is None and isinstance(results, list) and results:
            error = results[0].get("error")
        if status >= 300 or error is not None:
            shown = influxql.split(" WITH PASSWORD ")[0]
            raise InfluxSetupError(f"InfluxDB refused {shown!r}: HTTP {status}: {error or text.strip()}")
        if not isinstance(results, list) or not results:
            return []
        series = results[0].get("series", [])
        return series if isinstance(series, list) else []

    def rows(self, influxql: str, database: str | None = None) -> list[dict[str, Any]]:
        """The first series' rows as dicts."""
        series = self.query(influxql, database)
        if not series:
            return []
        cols = series[0]["columns"]
        return [dict(zip(cols, row, strict=True)) for row in series[0].get("values", [])]


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    password: str


@dataclass(frozen=True, kw_only=True, slots=True)
class InfluxPlan:
    database: str
    retention: str
    admin: Account
    writer: Account
    reader: Account


def _admin_exists(url: str) -> bool:
    """With auth on and no admin yet, InfluxDB answers anonymous statements with
    403 "create admin user first"; once one exists, with 401."""
    status, text = InfluxClient(url).request("/query", {}, urllib.parse.urlencode({"q": "SHOW USERS"}).encode())
    if status == 403 and "create admin user first" in text:
        return False
    if status == 200:
        raise InfluxSetupError(
            f"InfluxDB at {url} answers without authentication: set auth-enabled = true in its [http] "
            "section and restart it (chairside install writes that config)")
    return True


def _set_user(client: InfluxClient, existing: set[str], account: Account, admin: bool = False) -> None:
    name = _quote_ident(_check_name("user", account.user))
    if account.user in existing:
        client.query(f"SET PASSWORD FOR {name} = {_quote_string(account.password)}")
    else:
        extra = " WITH ALL PRIVILEGES" if admin else ""
        client.query(f"CREATE USER {name} WITH PASSWORD {_quote_string(account.password)}{extra}")


def configure(url: str, plan: InfluxPlan) -> list[str]:
    """Bring the InfluxDB at ``url`` (auth on) to ``plan``; returns what was done."""
    done: list[str] = []
    database = _check_name("database", plan.database)
    retention = check_retention(plan.retention)
    if len({plan.admin.user, plan.writer.user, plan.reader.user}) != 3:
        raise ValueError("the admin, write and read users must differ")
    if not _admin_exists(url):
        InfluxClient(url).query(
            f"CREATE USER {_quote_ident(_check_name('user', plan.admin.user))} WITH PASSWORD "
            f"{_quote_string(plan.admin.password)} WITH ALL PRIVILEGES")
        done.append(f"created admin user {plan.admin.user}")
    client = InfluxClient(url, (plan.admin.user, plan.admin.password))
    users = {row["user"]: bool(row["admin"]) for row in client.rows("SHOW USERS")}
    if not users.get(plan.admin.user):
        raise InfluxSetupError(f"{plan.admin.user} is not an InfluxDB admin")
    db = _quote_ident(database)
    client.query(f"CREATE DATABASE {db}")
    policies = {row["name"]: row for row in client.rows(f"SHOW RETENTION POLICIES ON {db}")}
    rp = _quote_ident(RETENTION_POLICY)
    verb = "ALTER" if RETENTION_POLICY in policies else "CREATE"
    client.query(f"{verb} RETENTION POLICY {rp} ON {db} DURATION {retention} REPLICATION 1 "
                 f"SHARD DURATION {shard_duration(retention)} DEFAULT")
    done.append(f"database {database}: retention policy {RETENTION_POLICY} ({retention}) is the default")
    for account, grant in ((plan.writer, "WRITE"), (plan.reader, "READ")):
        if users.get(account.user):
            raise InfluxSetupError(f"{account.user} is an InfluxDB admin: use another name")
        _set_user(client, set(users), account)
        name = _quote_ident(account.user)
        client.query(f"REVOKE ALL PRIVILEGES ON {db} FROM {name}")
        client.query(f"GRANT {grant} ON {db} TO {name}")
        done.append(f"user {account.user}: {grant} on {database} only")
    return done


def retention_of(client: InfluxClient, database: str) -> str | None:
    """The default retention policy's duration (InfluxDB's form, ``9600h0m0s``; ``0s`` = for ever)."""
    for row in client.rows(f"SHOW RETENTION POLICIES ON {_quote_ident(database)}"):
        if row.get("default"):
            return str(row["duration"])
    return None
