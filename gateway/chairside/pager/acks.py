"""Page acknowledgements: from the ack link (a signed token) or from MQTT (``pages/ack``).

A valid acknowledgement ends the paging of its thread and is forwarded to
the alarm engine; one with a blank ``by``, a bad token or no matching thread
is refused, answered on the site's ``pages`` topic (``ack_result``) and
counted by result.  :class:`Acknowledgements` is the part of
:class:`~chairside.pager.service.Pager` that does this; it shares the pager's
state and lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from chairside.metrics import Metrics

from .channels import DeliveryError
from .delivery import epoch_ms
from .escalation import AckVia, State, Step, Thread, on_ack
from .inbound import BY_MAX, clean_text, is_id, printable
from .tokens import TokenError, verify_token

log = logging.getLogger("chairside.pager")


class Acknowledgements:
    """Acknowledging threads; mixed into the pager, whose state it uses."""

    secret: bytes
    clock: Callable[[], float]
    metrics: Metrics
    _lock: threading.RLock
    _wake: threading.Event
    _threads: dict[str, Thread]

    if TYPE_CHECKING:  # provided by the Pager this is mixed into
        def _publish(self, topic: str, payload: dict[str, Any]) -> None: ...

        def _save(self) -> None: ...

        def _apply(self, step: Step, now: float) -> None: ...

        def _reject(self, reason: str, topic: str) -> str: ...

    def handle_page_ack(
        self, site: str, payload: Mapping[str, Any], now: float
    ) -> tuple[bool, str]:
        """``{"v":1,"key":..,"by":..}`` or ``{"v":1,"token":..}`` from
        chairside/v1/{site}/pages/ack.  Every ack is answered with an
        ``ack_result`` on chairside/v1/{site}/pages and counted."""
        v = payload.get("v")
        if v != 1 or isinstance(v, bool):
            return False, self._refuse_ack(site, "unsupported version", payload)
        thread_n: int | None = None
        token = payload.get("token")
        if token is not None:
            if not isinstance(token, str) or len(token) > 1024:
                return False, self._refuse_ack(site, "bad token", payload)
            try:
                claim = verify_token(self.secret, token, now)
            except TokenError as exc:
                return False, self._refuse_ack(site, exc.reason, payload)
            key, by, thread_n = claim.key, claim.person, claim.n
        else:
            raw_key, raw_by = payload.get("key"), payload.get("by")
            if not isinstance(raw_key, str) or not raw_key or len(raw_key) > 200:
                return False, self._refuse_ack(site, "missing or bad key", payload)
            if not isinstance(raw_by, str) or not raw_by.strip():
                return False, self._refuse_ack(site, "missing or blank by", payload)
            clean_by = clean_text(raw_by, BY_MAX)
            if clean_by is None:
                return False, self._refuse_ack(
                    site, f"bad by (printable text, at most {BY_MAX} characters)", payload
                )
            key, by = raw_key, clean_by
            raw_n = payload.get("thread")
            if raw_n is not None:
                if isinstance(raw_n, bool) or not isinstance(raw_n, int) or not 0 < raw_n < 2**31:
                    return False, self._refuse_ack(site, "bad thread", payload)
                thread_n = raw_n
        if not key.startswith(site + "/"):
            return False, self._refuse_ack(site, "key is for another site", payload)
        ok, why = self._ack(key, by, "mqtt", thread_n, now)
        self._answer_ack(site, ok, why, key, by)
        return ok, why

    def _refuse_ack(self, site: str, reason: str, payload: Mapping[str, Any] | None) -> str:
        """Refuse a page acknowledgement: count it, log it, answer it."""
        self.metrics.inc("page_acks", result="refused")
        self._reject(reason, f"chairside/v1/{site}/pages/ack")
        key = payload.get("key") if payload is not None else None
        self._answer_ack(site, False, f"refused: {reason}",
                         key if isinstance(key, str) and printable(key) else None, None)  # fmt: skip
        return reason

    def _answer_ack(self, site: str, ok: bool, why: str, key: str | None, by: str | None) -> None:
        if not is_id(site):
            return  # no topic to answer on
        answer = {"v": 1, "type": "ack_result", "ok": ok, "reason": why[:300],
                  "key": key[:200] if key else None, "by": by, "t": epoch_ms(self.clock())}  # fmt: skip
        try:
            self._publish(f"chairside/v1/{site}/pages", answer)
        except DeliveryError as exc:
            log.error("cannot answer a page ack: %s", exc)

    def _ack(
        self, key: str, by: str, via: AckVia, thread_n: int | None, now: float
    ) -> tuple[bool, str]:
        with self._lock:
            thread = self._threads.get(key)
            if thread is not None and thread.state is State.MERGED and thread.merged_into:
                host = self._threads.get(thread.merged_into)
                if host is not None and (thread_n is None or thread_n == thread.n):
                    thread, thread_n = host, None  # the page was for a thread merged since
            if thread is None:
                self.metrics.inc("page_acks", result="unmatched")
                log.warning("page ack by %s matches no thread: %s", by, key)
                return False, f"no page thread for {key}"
            if thread_n is not None and thread_n != thread.n:
                self.metrics.inc("page_acks", result="unmatched")
                log.warning("page ack by %s for closed thread %s #%d", by, key, thread_n)
                return False, f"this page was for an earlier, closed alarm on {key}"
            if thread.state is State.ACKED:
                self.metrics.inc("page_acks", result="already")
                return True, f"already acknowledged by {thread.acked_by}"
            step = on_ack(thread, by, via, now)
            if step.thread is thread:
                self.metrics.inc("page_acks", result="unmatched")
                log.warning("page ack by %s for %s: %s", by, key, step.reason)
                return False, step.reason
            self.metrics.inc("page_acks", result="acknowledged")
            self._apply(step, now)
            self._save()
        self._wake.set()
        log.info("%s: %s", key, step.reason)
        return True, f"{step.reason}: {thread.site}/{thread.chair}: {thread.text}"

    def check_token(self, token: str) -> tuple[bool, str]:
        """For the confirmation page: is the token good, and for what?"""
        now = self.clock()
        try:
            claim = verify_token(self.secret, token, now)
        except TokenError as exc:
            return False, exc.reason
        with self._lock:
            thread = self._threads.get(claim.key)
        if thread is None or thread.n != claim.n:
            return False, "this page was for an alarm that is already closed"
        prefix = "DRILL " if thread.drill else ""
        return True, (
            f"{prefix}{thread.priority.upper()} {thread.site}/{thread.chair}: {thread.text}. "
            f"Acknowledge as {claim.person}?"
        )

    def ack_token(self, token: str) -> tuple[bool, str]:
        """Acknowledge through the page link (POST /ack)."""
        now = self.clock()
        try:
            claim = verify_token(self.secret, token, now)
        except TokenError as exc:
            self.metrics.inc("page_acks", result="refused")
            return False, exc.reason
        return self._ack(claim.key, claim.person, "link", claim.n, now)

    # --------------------------------------------------------------- timers
