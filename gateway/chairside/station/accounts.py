"""Staff accounts of the nurses' station: argon2id password hashes, roles, lock-out.

The accounts live in one JSON file (``{"v": 1, "users": {name: {"hash", "role",
"created"}}}``), written atomically, mode 0600.  Only argon2id hashes are kept
(argon2-cffi's defaults: 64 MiB, 3 passes); a password is never stored or logged.

Roles: ``nurse`` (acknowledge, standby, start/end an infusion session) and
``lead`` (all of that, and per-chair limit changes).

Lock-out: :data:`MAX_FAILURES` failed logins of one name within
:data:`FAILURE_WINDOW_MS` lock that name for :data:`LOCKOUT_MS`; while locked,
even the right password is refused.  Unknown names are counted and locked the
same way (and still cost one hash verification), so a login attempt cannot
tell a wrong name from a wrong password.  The failure table is in memory and
bounded (:data:`MAX_TRACKED`, the oldest entry dropped and counted): a station
restart clears lock-outs.  Decisions take ``now_ms``; nothing here reads a clock.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from chairside.ingest.validate import text_problem

Role = Literal["nurse", "lead"]
ROLES: Final[tuple[Role, ...]] = ("nurse", "lead")
MAX_NAME: Final = 64  # the staff messages' `by` limit (contract.json)
MIN_PASSWORD: Final = 10
MAX_PASSWORD: Final = 256
MAX_FAILURES: Final = 5
FAILURE_WINDOW_MS: Final = 15 * 60_000
LOCKOUT_MS: Final = 15 * 60_000
MAX_TRACKED: Final = 10_000


class AccountError(ValueError):
    """A bad user name, role or password, or an unreadable accounts file (the message says which)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role

    def may(self, action: str) -> bool:
        """Whether this role may do ``action`` (``limit`` needs a lead)."""
        return action != "limit" or self.role == "lead"


@dataclass(frozen=True, slots=True)
class LoginResult:
    """``user`` when the login succeeded, else ``reason``: ``bad_credentials`` or ``locked``."""

    user: User | None
    reason: str = ""
    locked_until_ms: int | None = None


def check_name(name: str) -> str:
    """A user name is what the gateway stores as ``by``: 1-64 printable characters."""
    clean = name.strip()
    if not clean or len(clean) > MAX_NAME:
        raise AccountError(f"user name must be 1-{MAX_NAME} characters")
    problem = text_problem(clean)
    if problem is not None:
        raise AccountError(f"user name holds a {problem}")
    return clean


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")


@dataclass(slots=True)
class _Failures:
    times: list[int]
    locked_until: int | None = None


class Accounts:
    """The accounts file plus the in-memory lock-out table (thread-safe)."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self.hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._failures: dict[str, _Failures] = {}
        self.failures_dropped = 0
        self._dummy: str | None = None

    def _dummy_hash(self) -> str:
        """What an unknown name is checked against (made on first use: hashing costs time)."""
        if self._dummy is None:
            self._dummy = self.hasher.hash("chairside-station-no-such-user")
        return self._dummy

    # ---- the file ------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, object]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AccountError(f"{self.path}: cannot read accounts: {exc}") from exc
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise AccountError(f"{self.path}: users: expected an object")
        return {str(k): v for k, v in users.items() if isinstance(v, dict)}

    def _write(self, users: dict[str, dict[str, object]]) -> None:
        """Atomically, mode 0600, keeping the file's owner: the station (user
        ``chairside``) must still read it after ``sudo chairside station user add``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = self.path.stat()
            owner: tuple[int, int] | None = (st.st_uid, st.st_gid)
        except OSError:
            owner = None
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if owner is not None and os.geteuid() == 0:  # root (sudo): give the file back to its owner
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"v": 1, "users": users}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def ensure_file(self) -> bool:
        """Create an empty accounts file if there is none (the installer); True if created."""
        with self._lock:
            if self.path.exists():
                return False
            self._write({})
            return True

    def add(self, name: str, password: str, role: str, now_ms: int, *, replace: bool = False) -> User:
        """Create (or with ``replace``, reset) an account; raises AccountError."""
        clean = check_name(name)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        check_password(password)
        with self._lock:
            users = self._read()
            if clean in users and not replace:
                raise AccountError(f"user {clean!r} exists (use --replace to reset the password or role)")
            users[clean] = {"hash": self.hasher.hash(password), "role": role, "created": now_ms}
            self._write(users)
            self._failures.pop(clean, None)
        return User(clean, role)

    def names(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted((name, str(entry.get("role"))) for name, entry in self._read().items())

    # ---- login ---------------------------------------------------------------------

    def login(self, name: str, password: str, now_ms: int) -> LoginResult:
        """Check a login; counts failures and applies the lock-out."""
        key = name.strip()[:MAX_NAME]
        with self._lock:
            record = self._failures.get(key)
            if record is not None and record.locked_until is not None:
                if now_ms < record.locked_until:
                    return LoginResult(None, "locked", record.locked_until)
                del self._failures[key]
                record = None
            try:
                entry = self._read().get(key)
            except AccountError:
                entry = None
        stored = entry.get("hash") if entry is not None else None
        role = entry.get("role") if entry is not None else None
        ok = False
        try:
            # verify against a dummy hash for unknown names: same cost, same answer
            ok = self.hasher.verify(stored if isinstance(stored, str) else self._dummy_hash(), password[:MAX_PASSWORD])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if ok and isinstance(stored, str) and role in ROLES:
            with self._lock:
                self._failures.pop(key, None)
            return LoginResult(User(key, role))
        return self._failed(key, now_ms)

    def _failed(self, key: str, now_ms: int) -> LoginResult:
        with self._lock:
            record = self._failures.get(key)
            if record is None:
                if len(self._failures) >= MAX_TRACKED:
                    oldest = min(self._failures, key=lambda k: self._failures[k].times[-1])
                    del self._failures[oldest]
                    self.failures_dropped += 1
                record = self._failures[key] = _Failures([])
            record.times = [t for t in record.times if now_ms - t < FAILURE_WINDOW_MS] + [now_ms]
            if len(record.times) >= MAX_FAILURES:
                record.locked_until = now_ms + LOCKOUT_MS
                return LoginResult(None, "locked", record.locked_until)
            return LoginResult(None, "bad_credentials")
