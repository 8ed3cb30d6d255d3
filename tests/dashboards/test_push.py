"""``chairside dashboards push`` against a local stand-in for Grafana's HTTP API.

No Grafana server can be installed here, so a small ``http.server`` answers
the endpoints grafana-client calls (``/api/frontend/settings`` for the
version, ``/api/folders``, ``/api/dashboards/db``) and records every request.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chairside.install import grafana_push

REPO = Path(__file__).resolve().parents[2]
JSON_DIR = REPO / "dashboards" / "json"


@dataclass
class FakeGrafana:
    version: str = "12.1.0"
    folders: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)

    def posted(self, path: str) -> list[Any]:
        return [body for method, p, _, body in self.requests if method == "POST" and p == path]


def _handler(state: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            path = self.path.split("?")[0]
            state.requests.append((self.command, path, self.headers.get("Authorization"), body))
            return path, body

        def do_GET(self) -> None:
            path, _ = self._record()
            if path == "/api/frontend/settings":
                self._reply(200, {"buildInfo": {"version": state.version, "edition": "OSS"}})
            elif path == "/api/health":
                self._reply(200, {"database": "ok", "version": state.version})
            elif path == "/api/folders":
                self._reply(200, state.folders)
            else:
                self._reply(404, {"message": "not found"})

        def do_POST(self) -> None:
            path, body = self._record()
            if path == "/api/folders":
                folder = {"id": len(state.folders) + 1, "uid": body.get("uid") or "gen",
                          "title": body["title"]}
                state.folders.append(folder)
                self._reply(200, folder)
            elif path == "/api/dashboards/db":
                uid = body["dashboard"]["uid"]
                self._reply(200, {"status": "success", "uid": uid, "version": 1,
                                  "url": f"/d/{uid}"})
            else:
                self._reply(404, {"message": "not found"})

    return Handler


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    state = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    grafana_push.add_arguments(parser)
    return parser.parse_args(list(argv))


def _expected_uids() -> set[str]:
    return {json.loads(p.read_text())["uid"] for p in JSON_DIR.glob("*.json")}


def test_push_creates_folder_and_overwrites_each_dashboard(
    grafana: tuple[FakeGrafana, str],
) -> None:
    state, url = grafana
    rc = grafana_push.run(_args("push", "--url", url, "--token", "t0k", "--folder", "Chairside"))
    assert rc == 0
    # version checked before anything is written
    first_write = next(i for i, r in enumerate(state.requests) if r[0] == "POST")
    assert any(r[1] == "/api/frontend/settings" for r in state.requests[:first_write])
    assert state.posted("/api/folders") == [{"title": "Chairside", "uid": "chairside"}]
    uploads = state.posted("/api/dashboards/db")
    assert {u["dashboard"]["uid"] for u in uploads} == _expected_uids()
    assert {"chairside-overview", "chairside-chair", "chairside-devices"} <= _expected_uids()
    for upload in uploads:
        assert upload["overwrite"] is True
        assert upload["folderUid"] == "chairside"
        assert upload["dashboard"]["id"] is None
    assert all(auth == "Bearer t0k" for _, _, auth, _ in state.requests)


def test_second_push_reuses_the_folder(grafana: tuple[FakeGrafana, str]) -> None:
    state, url = grafana
    assert grafana_push.run(_args("push", "--url", url, "--token", "x")) == 0
    assert grafana_push.run(_args("push", "--url", url, "--token", "x")) == 0
    assert len(state.posted("/api/folders")) == 1
    assert len(state.posted("/api/dashboards/db")) == 2 * len(_expected_uids())


def test_basic_auth_from_user_and_password(grafana: tuple[FakeGrafana, str]) -> None:
    state, url = grafana
    rc = grafana_push.run(_args("push", "--url", url, "--user", "admin", "--password", "pw"))
    assert rc == 0
    assert all((auth or "").startswith("Basic ") for _, _, auth, _ in state.requests)


def test_old_grafana_is_refused_before_any_write(
    grafana: tuple[FakeGrafana, str], capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = grafana
    state.version = "9.5.2"
    rc = grafana_push.run(_args("push", "--url", url, "--token", "x"))
    assert rc == 1
    assert "too old" in capsys.readouterr().err
    assert not [r for r in state.requests if r[0] == "POST"]


def test_missing_credentials_is_a_clear_error(
    grafana: tuple[FakeGrafana, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = grafana
    args = _args("push", "--url", url)
    args.token = args.user = args.password = None
    assert grafana_push.run(args) == 1
    assert "no credentials" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "ok"), [("12.1.0", True), ("10.0.0-pre", True), ("11.6.3+security-01", True),
                     ("9.5.2", False), ("8.0.0", False)]
)
def test_version_gate(text: str, ok: bool) -> None:
    if ok:
        grafana_push.check_version(text)
    else:
        with pytest.raises(grafana_push.PushError, match="too old"):
            grafana_push.check_version(text)


def test_build_check_entry_point() -> None:
    assert grafana_push.run(_args("build", "--check")) == 0
