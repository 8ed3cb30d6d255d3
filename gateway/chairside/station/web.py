"""The nurses' station web application (aiohttp): login, board, live feed, actions.

Pages are rendered on the server (Jinja2, autoescaped); ``static/station.js``
draws the tiles from the Server-Sent Events stream ``/events`` (fed from MQTT
through :class:`~chairside.station.feed.Feed`), plays the alarm tones and
sends the actions.

Security:

* staff log in with a name and password (:mod:`chairside.station.accounts`,
  argon2id, lock-out after repeated failures);
* the session is a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie
  (``Secure`` behind TLS), kept server-side, with an idle timeout; a new token
  is issued at login;
* every POST (login included) must carry the session's CSRF token (form field
  ``csrf_token`` or header ``X-CSRF-Token``), compared in constant time;
  without it the request is refused with 403 and nothing is sent;
* an action is sent as the logged-in name (``by``), never a typed one; a nurse
  may acknowledge, put a chair in standby and start or end its infusion
  session, only a lead may change a limit;
* every action and its answer is written to the station's audit log (JSON
  lines) and the gateway stores the action itself (``alarm_events``,
  ``limit_audit``) under that name;
* ``GET /chair/{chair}/report[?session=ID]`` (logged in) is the session
  record PDF (:mod:`chairside.station.report`); a download is audited too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from chairside import contract
from chairside.alarms.profile import RUNTIME_RANGES
from chairside.ingest.validate import text_problem
from chairside.record.query import RecordQueryError

from .accounts import Accounts, User
from .board import Board
from .feed import Feed, FeedBusy
from .report import RecordSource, make_report

log = logging.getLogger("chairside.station.web")

HERE = Path(__file__).resolve().parent
COOKIE: Final = "chairside_station"
SESSION_IDLE_MS: Final = 12 * 3600_000  # one shift
MAX_SESSIONS: Final = 1000
ANSWER_TIMEOUT_S: Final = 10.0
TICK_S: Final = 1.0  # staleness is re-evaluated at least this often
HEARTBEAT_S: Final = 5.0
CLIENT_QUEUE: Final = 64
MAX_BODY: Final = 4096
LIMIT_PARAMS: Final = tuple(k for k in RUNTIME_RANGES if "." in k)  # per-condition limits

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Session:
    token: str
    csrf: str
    seen_ms: int
    user: User | None = None


class Sessions:
    """Server-side sessions (bounded; the least recently seen is dropped first)."""

    def __init__(self) -> None:
        self._by_token: dict[str, Session] = {}
        self.dropped = 0

    def new(self, now_ms: int, user: User | None = None) -> Session:
        while len(self._by_token) >= MAX_SESSIONS:
            oldest = min(self._by_token.values(), key=lambda s: s.seen_ms)
            del self._by_token[oldest.token]
            self.dropped += 1
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now_ms, user)
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None, now_ms: int) -> Session | None:
        session = self._by_token.get(token or "")
        if session is None:
            return None
        if now_ms - session.seen_ms > SESSION_IDLE_MS:
            del self._by_token[session.token]
            return None
        session.seen_ms = now_ms
        return session

    def drop(self, session: Session) -> None:
        self._by_token.pop(session.token, None)


@dataclass(slots=True, eq=False)
class _Client:
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    resync: bool = False


class Hub:
    """Pushes changed tiles to every open board (SSE)."""

    def __init__(self, board: Board, lock: threading.Lock, clock: Callable[[], int],
                 connected: Callable[[], bool] = lambda: True) -> None:
        self.board = board
        self.connected = connected
        self.lock = lock
        self.clock = clock
        self.clients: set[_Client] = set()
        self.sent: dict[str, str] = {}
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.dropped = 0

    def mark(self, chair: str) -> None:
        self.dirty.add(chair)
        self.wake.set()

    def snapshot(self) -> str:
        with self.lock:
            views = self.board.views(self.clock())
        return _event("tiles", {"tiles": views, "full": True, "mqtt": self.connected()})

    def push_changes(self, everything: bool) -> None:
        now = self.clock()
        with self.lock:
            chairs = list(self.board.chairs) if everything else [c for c in self.dirty if c in self.board.chairs]
            self.dirty.clear()
            views = [self.board.view(chair, now) for chair in chairs]
        changed = []
        for view in views:
            text = json.dumps(view, sort_keys=True)
            if self.sent.get(view["chair"]) != text:
                self.sent[view["chair"]] = text
                changed.append(view)
        if changed:
            self.broadcast(_event("tiles", {"tiles": changed, "full": False, "mqtt": self.connected()}))

    def broadcast(self, message: str) -> None:
        for client in self.clients:
            if client.resync:
                continue
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                # a slow browser: forget what it missed and send it the whole board next
                self.dropped += 1
                client.resync = True

    async def run(self) -> None:
        last_tick = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK_S)
            self.wake.clear()
            tick = time.monotonic() - last_tick >= TICK_S
            if tick:
                last_tick = time.monotonic()
            self.push_changes(everything=tick)


def _static_url(name: str) -> str:
    """``/static/NAME?v=HASH``: a new file is fetched, never a cached old one."""
    digest = hashlib.sha256((HERE / "static" / name).read_bytes()).hexdigest()[:12]
    return f"/static/{name}?v={digest}"


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class Station:
    """The web application and what it holds."""

    def __init__(
        self,
        board: Board,
        feed: Feed,
        accounts: Accounts,
        clock: Callable[[], int],
        *,
        secure_cookies: bool,
        audit_path: Path | None = None,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        heartbeat_s: float = HEARTBEAT_S,
        records: RecordSource | None = None,
    ) -> None:
        self.board = board
        self.feed = feed
        self.accounts = accounts
        self.clock = clock
        self.secure_cookies = secure_cookies
        self.audit_path = audit_path
        self.answer_timeout_s = answer_timeout_s
        self.heartbeat_s = heartbeat_s
        self.records = records
        self._report_lock = asyncio.Lock()  # one report at a time: rendering is CPU-bound
        self.sessions = Sessions()
        self.hub: Hub | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined)
        self.templates.globals["static"] = _static_url

    # ---- application -----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_BODY)
        app.router.add_get("/", self.board_page)
        app.router.add_get("/chair/{chair}", self.board_page)
        app.router.add_get("/chair/{chair}/report", self.report)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/events", self.events)
        app.router.add_post("/api/chair/{chair}/{action}", self.action)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_static("/static", HERE / "static")
        app.cleanup_ctx.append(self._hub_ctx)
        app.on_shutdown.append(self._end_streams)
        return app

    async def _end_streams(self, _app: web.Application) -> None:
        """Open event streams never end by themselves: end them so shutdown does not wait."""
        for task in list(self._streams):
            task.cancel()

    async def _hub_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        hub = self.hub = Hub(self.board, self.feed.lock, self.clock, lambda: self.feed.connected)

        def on_change(chair: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: no board to update
                loop.call_soon_threadsafe(hub.mark, chair)

        self.feed.on_change = on_change
        task = asyncio.create_task(hub.run())
        yield
        self.feed.on_change = lambda _chair: None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ---- sessions --------------------------------------------------------------------

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), self.clock())

    def _set_cookie(self, response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(COOKIE, session.token, httponly=True, secure=self.secure_cookies,
                            samesite="Strict", path="/")

    @staticmethod
    def _csrf_ok(session: Session | None, offered: object) -> bool:
        return (session is not None and isinstance(offered, str) and bool(offered)
                and hmac.compare_digest(offered.encode(), session.csrf.encode()))

    def _render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        text = self.templates.get_template(name).render(**context)
        return web.Response(text=text, status=status, content_type="text/html")

    # ---- pages -----------------------------------------------------------------------

    async def login_page(self, request: web.Request, message: str = "", status: int = 200,
                         next_url: str | None = None) -> web.Response:
        session = self._session(request) or self.sessions.new(self.clock())
        target = _local_path(next_url if next_url is not None else request.query.get("next"))
        response = self._render("login.html", status, csrf=session.csrf, message=message, site=self.board.site,
                                next=target)
        self._set_cookie(response, session)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        form = await request.post()
        target = _local_path(form.get("next"))
        if not self._csrf_ok(session, form.get("csrf_token")):
            self.feed.metrics.inc("refused", reason="csrf")
            return await self.login_page(request, "The form expired: please log in again.", 403, target)
        name, password = form.get("name"), form.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            return await self.login_page(request, "Enter your name and password.", 400, target)
        now = self.clock()
        # argon2 takes tens of milliseconds by design: off the event loop, so the boards keep updating
        result = await asyncio.to_thread(self.accounts.login, name, password, now)
        if result.user is None:
            self.feed.metrics.inc("logins_refused", reason=result.reason)
            self._audit(None, "login", "", {"name": name[:64]}, {"ok": 0, "reason": result.reason})
            if result.reason == "locked":
                minutes = max(1, ((result.locked_until_ms or now) - now + 59_999) // 60_000)
                text = f"Too many failed attempts: this account is locked for {minutes} min."
            else:
                text = "Wrong name or password."
            return await self.login_page(request, text, 401, target)
        assert session is not None
        self.sessions.drop(session)
        fresh = self.sessions.new(now, result.user)
        self._audit(result.user, "login", "", {}, {"ok": 1})
        response = web.HTTPSeeOther(target or "/")
        self._set_cookie(response, fresh)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        form = await request.post()
        if not self._csrf_ok(session, form.get("csrf_token")):
            raise web.HTTPForbidden(text="missing or wrong CSRF token")
        assert session is not None
        self.sessions.drop(session)
        raise web.HTTPSeeOther("/login")

    async def board_page(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None or session.user is None:
            raise web.HTTPSeeOther("/login")
        focus = request.match_info.get("chair", "")
        return self._render(
            "board.html", user=session.user, csrf=session.csrf, site=self.board.site,
            focus=focus if contract.id_regex().fullmatch(focus) else "",
            limit_params=[(p, RUNTIME_RANGES[p]) for p in LIMIT_PARAMS])

    async def report(self, request: web.Request) -> web.StreamResponse:
        """The session record PDF of a chair: its latest session, or ``?session=ID``."""
        session = self._session(request)
        if session is None or session.user is None:
            raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
        chair = request.match_info["chair"]
        wanted = request.query.get("session") or None
        if not contract.id_regex().fullmatch(chair) or (
                wanted is not None and (len(wanted) > 128 or text_problem(wanted) is not None)):
            self.feed.metrics.inc("refused", reason="bad_report_request")
            return web.Response(status=400, text="expected a chair id and at most one session id")
        if self.records is None:
            return web.Response(status=503, text="session records are off: the station was started without "
                                "--influx-url (docs/station.md)")
        async with self._report_lock:
            try:
                made = await asyncio.to_thread(make_report, self.records, self.board.site, chair, wanted,
                                               self.clock())
            except RecordQueryError as exc:
                log.error("session record of chair %s: %s", chair, exc)
                return web.Response(status=502, text=f"cannot read the session from InfluxDB: {exc}")
        if isinstance(made, str):
            return web.Response(status=404, text=made[:1].upper() + made[1:] + ".")
        self._audit(session.user, "report", chair, {"session": made.session}, {"ok": 1})
        return web.Response(body=made.pdf, content_type="application/pdf",
                            headers={"Content-Disposition": f'attachment; filename="{made.filename}"'})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "mqtt_subscribed": self.feed.connected})

    async def metrics(self, _request: web.Request) -> web.Response:
        """Prometheus text: refused input and requests, and what the bounded tables dropped."""
        m = self.feed.metrics
        m.set("board_chairs", len(self.board.chairs))
        m.set("chairs_dropped", self.board.chairs_dropped)
        m.set("sessions_dropped", self.sessions.dropped)
        m.set("login_failures_dropped", self.accounts.failures_dropped)
        m.set("board_clients", len(self.hub.clients) if self.hub else 0)
        m.set("board_updates_dropped", self.hub.dropped if self.hub else 0)
        return web.Response(text=m.render(), content_type="text/plain")

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None or session.user is None or self.hub is None:
            raise web.HTTPUnauthorized(text="log in first")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        client = _Client()
        self.hub.clients.add(client)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            await response.write(self.hub.snapshot().encode())
            while True:
                if client.resync:
                    while not client.queue.empty():
                        client.queue.get_nowait()
                    client.resync = False
                    await response.write(self.hub.snapshot().encode())
                    continue
                try:
                    message = await asyncio.wait_for(client.queue.get(), self.heartbeat_s)
                except TimeoutError:
                    message = _event("heartbeat", {"t": self.clock(), "mqtt": self.feed.connected})
                await response.write(message.encode())
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self.hub.clients.discard(client)
            if task is not None:
                self._streams.discard(task)
        return response

    # ---- actions ---------------------------------------------------------------------

    async def action(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None or session.user is None:
            return web.json_response({"ok": 0, "reason": "not_logged_in"}, status=401)
        if not self._csrf_ok(session, request.headers.get("X-CSRF-Token")):
            self.feed.metrics.inc("refused", reason="csrf")
            return web.json_response({"ok": 0, "reason": "csrf", "detail": "missing or wrong CSRF token"},
                                     status=403)
        user = session.user
        chair, action = request.match_info["chair"], request.match_info["action"]
        if not contract.id_regex().fullmatch(chair):
            return web.json_response({"ok": 0, "reason": "bad_id"}, status=400)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"ok": 0, "reason": "bad_json"}, status=400)
        built = self._message(action, body)
        if isinstance(built, str):
            return web.json_response({"ok": 0, "reason": "bad_field", "detail": built}, status=400)
        kind, message = built
        if not user.may(action):
            self.feed.metrics.inc("refused", reason="role")
            answer = {"ok": 0, "reason": "forbidden", "detail": f"a {user.role} may not change limits; ask a lead"}
            self._audit(user, action, chair, message, answer)
            return web.json_response(answer, status=403)
        message["by"] = user.name  # the logged-in name, never a typed one
        try:
            future = self.feed.request(kind, chair, message)
        except FeedBusy as exc:
            return web.json_response({"ok": 0, "reason": "busy", "detail": str(exc)}, status=503)
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), self.answer_timeout_s)
        except TimeoutError:
            self.feed.forget(future)
            answer = {"ok": 0, "reason": "no_answer",
                      "detail": f"no answer from the gateway within {self.answer_timeout_s:g} s: nothing is confirmed"}
        except ConnectionError as exc:
            answer = {"ok": 0, "reason": "broker", "detail": str(exc)}
        self._audit(user, action, chair, message, answer)
        reply = {"ok": 1 if answer.get("ok") else 0, "reason": answer.get("reason", ""),
                 "detail": answer.get("detail", "")}
        if isinstance(answer.get("session"), str):
            reply["session"] = answer["session"]  # the session id the gateway gave a start or end
        return web.json_response(reply)

    @staticmethod
    def _message(action: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | str:
        """The staff message for ``action`` (without ``by``), or what is wrong with the request."""
        if action == "ack":
            alarm = body.get("alarm")
            if not isinstance(alarm, str) or not alarm or len(alarm) > 64 or text_problem(alarm):
                return "alarm: expected an alarm name"
            return "alarm_ack", {"alarm": alarm}
        if action == "standby":
            return "chair_standby", {}
        if action == "session":
            what, ref = body.get("action"), body.get("ref")
            if what not in ("start", "end"):
                return "action: start or end"
            message: dict[str, Any] = {"action": what}
            if what == "start" and ref not in (None, ""):
                if not isinstance(ref, str) or len(ref) > 64 or text_problem(ref):
                    return "ref: at most 64 printable characters (a clinic reference, never a patient name)"
                message["ref"] = ref
            return "chair_session", message
        if action == "limit":
            param, value, reason = body.get("param"), body.get("value"), body.get("reason", "")
            if param not in LIMIT_PARAMS:
                return "param: not a per-chair limit"
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                return "value: expected a number or null"
            if not isinstance(reason, str) or not reason.strip() or len(reason) > 200 or text_problem(reason):
                return "reason: say why (1-200 characters)"
            return "limits_set", {"param": param, "value": value, "reason": reason.strip()}
        return f"action: unknown {action[:24]!r}"

    def _audit(self, user: User | None, action: str, chair: str, message: dict[str, Any],
               answer: dict[str, Any]) -> None:
        record = {"t": self.clock(), "by": user.name if user else None, "role": user.role if user else None,
                  "action": action, "site": self.board.site, "chair": chair,
                  "request": {k: v for k, v in message.items() if k != "by"},
                  "ok": 1 if answer.get("ok") else 0, "reason": answer.get("reason", "")}
        log.warning("station %s %s on %s by %s: %s", action, record["request"], chair or "-",
                    record["by"], "applied" if record["ok"] else f"refused ({record['reason']})")
        if self.audit_path is None:
            return
        try:
            self.audit_path.parent.mkdir(parents=True, exist_ok=True)
            with self.audit_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as exc:
            self.feed.metrics.inc("persist_errors", what="audit")
            log.error("cannot write the station audit log %s: %s", self.audit_path, exc)


def _local_path(value: object) -> str:
    """``value`` when it is a path on this station (where to go after the login), else ``""``:
    never another site (``//host``, ``https://…``)."""
    if (not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value
            or len(value) > 512 or text_problem(value) is not None):
        return ""
    return value


def server_ssl(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS with the clinic CA's server certificate (``chairside certs server``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context
