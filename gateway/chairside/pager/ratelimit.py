"""Per-person page rate limit with a suppression counter and summary.

At most ``max_pages`` pages per person in any sliding ``window_s``.  A page
over the limit is suppressed and counted; once the person is under the limit
again, one summary page tells them how many pages (and which alarms) were
held back.  All methods take ``now``; the state is plain JSON for the
durable store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .policy import RateRule


@dataclass(frozen=True, slots=True)
class Summary:
    person: str
    count: int
    keys: tuple[str, ...]


@dataclass
class RateLimiter:
    rule: RateRule
    sent: dict[str, list[float]] = field(default_factory=dict)
    held: dict[str, list[str]] = field(default_factory=dict)
    suppressed_total: dict[str, int] = field(default_factory=dict)

    def _recent(self, person: str, now: float) -> list[float]:
        start = now - self.rule.window_s
        times = [t for t in self.sent.get(person, []) if t > start]
        self.sent[person] = times
        return times

    def check(self, person: str, now: float) -> tuple[bool, str]:
        """May ``person`` be paged now?  Returns (allowed, reason)."""
        n = len(self._recent(person, now))
        if n >= self.rule.max_pages:
            return False, (
                f"rate limit: {person} already had {n} pages in {self.rule.window_s:g} s"
            )
        return True, f"{n} of {self.rule.max_pages} pages used in the window"

    def record_sent(self, person: str, now: float) -> None:
        self._recent(person, now).append(now)

    def record_suppressed(self, person: str, key: str) -> None:
        self.held.setdefault(person, []).append(key)
        self.suppressed_total[person] = self.suppressed_total.get(person, 0) + 1

    def summaries_due(self, now: float) -> list[Summary]:
        """Summaries for people with held pages who may be paged again;
        their held list is cleared (the caller sends and records the page)."""
        out: list[Summary] = []
        for person, keys in list(self.held.items()):
            if keys and self.check(person, now)[0]:
                out.append(Summary(person, len(keys), tuple(dict.fromkeys(keys))))
                self.held[person] = []
        return out

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "held": self.held, "suppressed_total": self.suppressed_total}

    @classmethod
    def from_json(cls, rule: RateRule, data: Mapping[str, Any]) -> RateLimiter:
        return cls(
            rule=rule,
            sent={k: [float(t) for t in v] for k, v in data.get("sent", {}).items()},
            held={k: [str(x) for x in v] for k, v in data.get("held", {}).items()},
            suppressed_total={k: int(v) for k, v in data.get("suppressed_total", {}).items()},
        )
