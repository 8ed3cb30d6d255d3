"""Station accounts: argon2id hashes, roles, lock-out on an injected clock."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from chairside.station.accounts import (
    FAILURE_WINDOW_MS,
    LOCKOUT_MS,
    MAX_FAILURES,
    AccountError,
    Accounts,
)

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # unit tests only; the station uses the defaults


def _accounts(tmp_path: Path) -> Accounts:
    accounts = Accounts(tmp_path / "users.json", FAST)
    accounts.add("RN Jones", "correct horse 1", "nurse", 0)
    accounts.add("Dr Lead", "correct horse 2", "lead", 0)
    return accounts


def test_passwords_are_stored_only_as_argon2id_hashes_in_a_private_file(tmp_path: Path) -> None:
    accounts = _accounts(tmp_path)
    text = (tmp_path / "users.json").read_text()
    assert "correct horse" not in text
    users = json.loads(text)["users"]
    assert users["RN Jones"]["hash"].startswith("$argon2id$") and users["RN Jones"]["role"] == "nurse"
    assert stat.S_IMODE((tmp_path / "users.json").stat().st_mode) == 0o600
    user = accounts.login("RN Jones", "correct horse 1", 1000).user
    assert user is not None and user.role == "nurse" and not user.may("limit") and user.may("ack")
    lead = accounts.login("Dr Lead", "correct horse 2", 1000).user
    assert lead is not None and lead.may("limit")


@pytest.mark.parametrize(("name", "password", "role", "why"), [
    ("", "long enough pw", "nurse", "1-64"),
    ("RN\x1bJones", "long enough pw", "nurse", "control"),
    ("x" * 65, "long enough pw", "nurse", "1-64"),
    ("RN Ok", "short", "nurse", "password"),
    ("RN Ok", "long enough pw", "admin", "role"),
])
def test_bad_names_passwords_and_roles_are_refused(tmp_path: Path, name: str, password: str, role: str,
                                                   why: str) -> None:
    with pytest.raises(AccountError, match=why):
        Accounts(tmp_path / "u.json", FAST).add(name, password, role, 0)


def test_an_existing_account_is_not_overwritten_without_replace(tmp_path: Path) -> None:
    accounts = _accounts(tmp_path)
    with pytest.raises(AccountError, match="exists"):
        accounts.add("RN Jones", "another password", "lead", 0)
    accounts.add("RN Jones", "another password", "lead", 0, replace=True)
    user = accounts.login("RN Jones", "another password", 0).user
    assert user is not None and user.role == "lead"


def test_repeated_failures_lock_the_name_even_for_the_right_password_then_expire(tmp_path: Path) -> None:
    accounts = _accounts(tmp_path)
    for i in range(MAX_FAILURES - 1):
        assert accounts.login("RN Jones", "wrong", i).reason == "bad_credentials"
    locked = accounts.login("RN Jones", "wrong", 10)
    assert locked.reason == "locked" and locked.locked_until_ms == 10 + LOCKOUT_MS
    assert accounts.login("RN Jones", "correct horse 1", 20).reason == "locked"
    assert accounts.login("Dr Lead", "correct horse 2", 20).user is not None  # other names unaffected
    assert accounts.login("RN Jones", "correct horse 1", 10 + LOCKOUT_MS).user is not None


def test_failures_spread_beyond_the_window_do_not_lock(tmp_path: Path) -> None:
    accounts = _accounts(tmp_path)
    for i in range(MAX_FAILURES * 2):
        assert accounts.login("RN Jones", "wrong", i * FAILURE_WINDOW_MS // 2).reason == "bad_credentials"


def test_unknown_names_answer_like_wrong_passwords_and_lock_too(tmp_path: Path) -> None:
    accounts = _accounts(tmp_path)
    assert accounts.login("nobody", "whatever pw", 0).reason == "bad_credentials"
    for i in range(MAX_FAILURES - 1):
        accounts.login("nobody", "whatever pw", i)
    assert accounts.login("nobody", "whatever pw", 9).reason == "locked"


def test_user_add_command_reads_the_password_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from chairside.cli import main

    users = tmp_path / "users.json"
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["station", "user", "add", "RN Kim", "--role", "nurse", "--users", str(users),
                 "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["station", "user", "add", "RN Short", "--role", "nurse", "--users", str(users),
                 "--password-stdin"]) == 1
    assert main(["station", "user", "list", "--users", str(users)]) == 0
    out = capsys.readouterr().out
    assert "RN Kim\tnurse" in out and "RN Short\t" not in out and "password must be" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root (sudo)")
def test_an_account_added_as_root_leaves_the_file_to_the_station_user(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "users.json", FAST)
    assert accounts.ensure_file() and not accounts.ensure_file()
    os.chown(accounts.path, 4242, 4243)  # the installer gives it to the station's user
    accounts.add("RN Jones", "correct horse 1", "nurse", 0)
    st = accounts.path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4243, 0o600)
