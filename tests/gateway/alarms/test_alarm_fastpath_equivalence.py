"""The engine's per-reading fast paths change nothing: long randomized streams
-- readings of every kind, clock ticks, acknowledgements, standby, per-chair
limit changes -- must give the same events and the same slot states (state,
delay bookkeeping, remembered value/limit/detail, reason) after every call as
the engine before the hot-path work did.  That engine's results are recorded
in ``data/alarm_stream_digests.json``: a SHA-256 over every call's result and
snapshot, checkpointed every ``CHECKPOINT`` calls, so a mismatch names the
first window of calls that differs.  These digests are the second net: each
rule of docs/alarms.md has a readable test (test_alarm_rules_readable.py).
After an *intended* behaviour change, run
``python tests/gateway/alarms/test_alarm_fastpath_equivalence.py``: it prints
which streams changed and where, and refuses to overwrite the recording unless
given ``--write`` (or ``CHAIRSIDE_RECORD_DIGESTS=1``); say why in the commit.

The streams deliberately visit what the fast paths skip over: conditions
going normal → abnormal → normal while their slot is idle, dips shorter than
the delay, flapping, hysteresis bands, invalid and missing values, the cuff
interlock, irregular fast pulses (the afib window) with gaps, non-integral
rates and clock steps backwards, and the SatSeconds integral.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from chairside.alarms import AlarmEngine, ProfileError, load_profile, parse_profile
from chairside.alarms import slots as slots_module
from chairside.alarms.profile import Profile
from chairside.model import AlarmEvent, Reading

T0 = 1_700_000_000_000
GOLDEN = Path(__file__).with_name("data") / "alarm_stream_digests.json"
CHECKPOINT = 100
STEPS = 1200
SITE = "clinic1"
CHAIRS = ("c1", "c2", "drill-3")
VITALS_ST = ("ok", "ok", "ok", "ok", "ok", "ok", "searching", "no_finger", "probe_off", "no_data")
PHASES = ("normal", "normal", "dip", "deep", "flap", "tachy", "afib", "brady", "probe", "cuff", "edge")
LIMITS: tuple[tuple[str, float | None], ...] = (
    ("spo2_low.limit", 92),
    ("spo2_low.limit", None),
    ("spo2_critical.limit", 88),
    ("pulse_high.limit", 100),
    ("afib_rvr_suspected.limit", 95),
    ("afib_rvr_suspected.window_s", 10),
    ("afib_rvr_suspected.window_s", 60),
    ("afib_rvr_suspected.min_valid_fraction", 0.5),
    ("afib_rvr_suspected.irregularity", 0.2),
    ("afib_rvr_suspected.window_s", None),
    ("spo2_low.delay_s", 0),
    ("pulse_high.clear_hysteresis", 0),
    ("cuff_interlock", 0),
    ("cuff_interlock", None),
    ("stale_after_s", 10),
    ("flap_violations", 2),
    ("spo2_low.latching", 1),
    ("pulse_high.cuff_hold", 0),
    ("afib_rvr_suspected.cuff_hold", 0),
    ("spo2_low.satseconds_limit", 5),
)


def satseconds_profile() -> Profile:
    raw = copy.deepcopy(dict(load_profile().raw))
    raw["conditions"]["spo2_low"]["mode"] = "satseconds"
    raw["conditions"]["spo2_low"]["satseconds_limit"] = 20
    return parse_profile(raw)


class Stream:
    """One chair's synthetic patient: a random walk through clinical phases."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.phase = "normal"
        self.left = 0
        self.spo2 = 97.0
        self.pr = 75.0

    def vitals(self) -> dict[str, Any]:
        rng = self.rng
        if self.left <= 0:
            self.phase = rng.choice(PHASES)
            self.left = rng.randint(3, 60)
        self.left -= 1
        target_spo2, target_pr, jitter = {
            "normal": (97, 75, 2),
            "dip": (87, 80, 2),
            "deep": (80, 90, 3),
            "flap": (90, 75, 2),
            "tachy": (128, 128, 2),
            "afib": (96, 135, 30),
            "brady": (96, 44, 3),
            "probe": (97, 75, 1),
            "cuff": (88, 125, 5),
            "edge": (90, 120, 0),
        }[self.phase]
        if self.phase in ("tachy", "afib"):
            target_spo2 = 96
        self.spo2 += (target_spo2 - self.spo2) * 0.5 + rng.uniform(-1, 1)
        self.pr += (target_pr - self.pr) * 0.6
        spo2: Any = max(0, min(100, round(self.spo2)))
        pr: Any = max(0, min(300, round(self.pr + rng.uniform(-jitter, jitter))))
        if self.phase == "edge":
            spo2, pr = rng.choice((90, 89, 91, 92, 85, 84)), rng.choice((120, 121, 115, 110, 109))
        st = rng.choice(VITALS_ST) if self.phase == "probe" else ("ok" if rng.random() > 0.01 else "searching")
        roll = rng.random()
        if roll < 0.02:
            spo2 = None
        elif roll < 0.04:
            pr = None
        elif roll < 0.045:
            pr = pr + 0.5  # not a contract value, but the engine takes any number
        elif roll < 0.05:
            spo2 = float(spo2)
        fields: dict[str, Any] = {"spo2": spo2, "pr": pr, "sig": 6, "st": st, "sync": 1}
        if self.phase == "cuff" or rng.random() < 0.02:
            fields["cuff"] = 1 if rng.random() < 0.9 else 0
        if rng.random() < 0.01:
            fields["sync"] = rng.choice((0, 0, 0, True, None))
        if rng.random() < 0.01:
            del fields["sync"]
        return fields

    def nibp(self) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.15:
            return {"st": "error", "sys": None, "dia": None, "map": None, "pr": None, "err": rng.randint(0, 9),
                    "sync": 1}
        sys_ = rng.choice((118, 125, 150, 179, 180, 185, 200, 219, 220, 230, 95, 89, 85))
        dia = rng.choice((70, 80, 105, 109, 110, 115, 119, 120, 125))
        map_ = rng.choice((55, 59, 60, 61, 70, 93, None))
        if rng.random() < 0.05:
            sys_ = None
        return {"st": "ok", "sys": sys_, "dia": dia, "map": map_, "pr": rng.randint(40, 160), "sync": 1}

    def status(self) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.3:
            return {"state": "offline"}
        if rng.random() < 0.1:
            return rng.choice(({"state": "rebooting"}, {"oxi": "ok"}, {"state": "online", "oxi": "busy"}))
        return {"state": "online", "oxi": rng.choice(("ok", "ok", "silent", "error")),
                "nibp": rng.choice(("ok", "ok", "silent", "error")), "sync": rng.choice((0, 1, 1))}


def snapshot(engine: Any) -> dict[tuple[str, str, str], tuple[Any, ...]]:
    """Every slot's full state (a missing slot reads as a fresh one)."""
    out: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for (site, chair), state in engine._chairs.items():
        for name, slot in state.slots.items():
            d = slot.delay
            fresh = (str(slot.state) == "inactive" and d.pending_since_ms is None and d.last_ms is None
                     and not d.was_present and not d.onsets and d.integral == 0.0 and slot.since_ms is None
                     and slot.value is None and slot.reason == "")
            if fresh:
                continue
            out[(site, chair, name)] = (
                str(slot.state), d.pending_since_ms, d.last_ms, d.was_present, d.onsets, d.integral,
                slot.since_ms, slot.acked_ms, slot.acked_by, slot.value, slot.limit, slot.detail,
                slot.field, slot.op, slot.reason, slot.present, slot.thread, slot.clear_since_ms,
                slot.inhibited_by,
            )
        out[(site, chair, "")] = (state.first_seen_ms, state.last_vitals_ms, state.online_ms,
                                  state.cuff_since_ms, state.standby_by, state.profile.overrides)
    return out


def drive(seed: int, steps: int, profile: Profile) -> Iterator[Callable[[Any], Any]]:
    """The same sequence of engine calls for both engines, as functions of the engine.

    Each step is about one second: most chairs send a vitals reading (so the
    afib window fills), and now and then something else happens."""
    rng = random.Random(seed)
    streams = {chair: Stream(random.Random(seed * 100 + i)) for i, chair in enumerate(CHAIRS)}
    now = T0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.01:
            now += rng.randint(5, 40) * 1000  # a gap: staleness, integrals capped
        elif roll < 0.02:
            now -= rng.randint(1, 3000)  # the gateway clock stepped back
        else:
            now += rng.choice((1000, 1000, 1000, 999, 1001, 500, 1500))
        for chair in CHAIRS:
            if rng.random() < 0.9:
                yield reading_call(chair, "vitals", streams[chair].vitals(), now, rng.random() < 0.01)
            t = now + rng.randint(0, 999)
            yield from extra_calls(rng, profile, streams[chair], chair, t)
        if rng.random() < 0.5:
            yield lambda e, t=now + 999: e.tick(t)


def reading_call(chair: str, kind: str, fields: dict[str, Any], t: int, historical: bool) -> Callable[[Any], Any]:
    reading = Reading(SITE, chair, kind, fields, t, t, historical)  # type: ignore[arg-type]
    return lambda e: e.on_reading(reading, t)


def extra_calls(
    rng: random.Random, profile: Profile, stream: Stream, chair: str, t: int
) -> Iterator[Callable[[Any], Any]]:
    """Rarer events for one chair: NIBP, status, resp, acks, limits, standby, forget."""
    roll = rng.random()
    if roll < 0.04:
        yield reading_call(chair, "nibp", stream.nibp(), t, rng.random() < 0.05)
    elif roll < 0.06:
        yield reading_call(chair, "status", stream.status(), t, False)
    elif roll < 0.065:
        yield reading_call(chair, "resp", {"rr": 14}, t, False)
    elif roll < 0.10:
        alarm = rng.choice(sorted(profile.conditions))
        who = rng.choice(("nurse", "dr"))
        yield lambda e: e.acknowledge(SITE, chair, alarm, who, t)
    elif roll < 0.107:
        param, value = rng.choice(LIMITS)

        def set_limit(e: Any) -> Any:
            try:
                return e.set_limit(SITE, chair, param, value, "nurse", "test", t)
            except ProfileError as exc:
                return str(exc)

        yield set_limit
    elif roll < 0.109:
        yield lambda e: e.standby(SITE, chair, "nurse", t)
    elif roll < 0.1095:
        yield lambda e: e.forget(SITE, chair, t)


def canonical(obj: Any) -> str:
    """A text of obj that is the same in every process and slot order (sets and
    dicts sorted)."""
    if isinstance(obj, (set, frozenset)):
        return "{" + ",".join(sorted(canonical(x) for x in obj)) + "}"
    if isinstance(obj, (list, tuple)):
        return "(" + ",".join(canonical(x) for x in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ",".join(sorted(canonical(k) + ":" + canonical(v) for k, v in obj.items())) + "}"
    return repr(obj)


def stream_digests(seed: int, satseconds: bool, engine: AlarmEngine | None = None) -> list[str]:
    """Checkpointed digests of every call's result and the engine's snapshot."""
    profile = satseconds_profile() if satseconds else load_profile()
    engine = engine if engine is not None else AlarmEngine(profile, id_prefix="x")
    digest = hashlib.sha256()
    out = []
    for step, call in enumerate(drive(seed, STEPS, profile)):
        digest.update(canonical((call(engine), snapshot(engine))).encode())
        if step % CHECKPOINT == CHECKPOINT - 1:
            out.append(digest.hexdigest()[:16])
    out.append(digest.hexdigest()[:16])
    return out


def _key(seed: int, satseconds: bool) -> str:
    return f"{seed}-{'satseconds' if satseconds else 'delay'}"


@pytest.mark.parametrize("satseconds", [False, True], ids=["delay", "satseconds"])
@pytest.mark.parametrize("seed", range(3))
def test_engine_matches_the_recorded_streams(seed: int, satseconds: bool) -> None:
    want = json.loads(GOLDEN.read_text())[_key(seed, satseconds)]
    got = stream_digests(seed, satseconds)
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    assert first is None and len(got) == len(want), (
        f"calls {first * CHECKPOINT}..{first * CHECKPOINT + CHECKPOINT - 1} differ"
        if first is not None else "a different number of calls")


def test_fast_path_equals_the_full_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Besides the recording: the same stream through an engine whose presence
    checks always defer to the full path (``_observe`` then ``_apply``) gives
    the same digests, so the fast path decides exactly what the full one would."""
    want = stream_digests(0, False)
    monkeypatch.setattr(slots_module, "presence", lambda cond, kind, profile: _always_full)
    assert stream_digests(0, False, AlarmEngine(load_profile(), id_prefix="x")) == want


def _always_full(chair: Any, fields: Any, now_ms: int, cuff_on: bool) -> bool | None:
    return True


def test_streams_alarm_often() -> None:
    """The streams leave the fast paths many times (else they prove little)."""
    profile = load_profile()
    engine = AlarmEngine(profile, id_prefix="x")
    raised = 0
    for call in drive(0, STEPS, profile):
        got = call(engine)
        if isinstance(got, list):
            raised += sum(1 for e in got if isinstance(e, AlarmEvent) and e.event in ("raised", "escalated"))
    assert raised > 20


def test_streams_visit_every_condition() -> None:
    """Guard the generator itself: every condition of the profile raises at least once."""
    profile = load_profile()
    engine = AlarmEngine(profile, id_prefix="x")
    seen: set[str] = set()
    for seed in range(3):
        for call in drive(seed, STEPS, profile):
            got = call(engine)
            if isinstance(got, list):
                seen.update(e.alarm for e in got if isinstance(e, AlarmEvent) and e.event == "raised")
    assert seen >= set(profile.conditions) - {"data_stale"}


Digests = Mapping[str, list[str]]


def all_digests() -> dict[str, list[str]]:
    return {_key(seed, sat): stream_digests(seed, sat) for seed in range(3) for sat in (False, True)}


def changed_streams(old: Digests, new: Digests) -> list[str]:
    """One line per stream that differs: which, and the first window of calls."""
    lines = []
    for key in sorted(old.keys() | new.keys()):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if was is None or now is None:
            lines.append(f"{key}: {'new stream' if was is None else 'stream removed'}")
            continue
        first = next((i for i, (a, b) in enumerate(zip(was, now, strict=False)) if a != b), min(len(was), len(now)))
        lines.append(f"{key}: differs from calls {first * CHECKPOINT}..{first * CHECKPOINT + CHECKPOINT - 1}")
    return lines


def record(golden: Path, compute: Callable[[], Digests], write: bool, say: Callable[[str], None] = print) -> int:
    """Compare the engine's digests with the recording, print what changed, and
    overwrite the recording only when ``write`` is set.  Exit status: 0 when
    nothing changed or the new digests were written, 1 when they differ and
    ``write`` was not given."""
    old = json.loads(golden.read_text()) if golden.exists() else {}
    new = compute()
    changed = changed_streams(old, new)
    for line in changed:
        say(line)
    if not changed:
        say(f"no stream changed: {golden} left as it is")
        return 0
    if not write:
        say(f"{len(changed)} stream(s) changed; {golden} NOT overwritten. If the change is intended, "
            "run again with --write (or CHAIRSIDE_RECORD_DIGESTS=1) and say why in the commit.")
        return 1
    golden.parent.mkdir(exist_ok=True)
    golden.write_text(json.dumps(dict(new), indent=1, sort_keys=True) + "\n")
    say(f"recorded {golden}")
    return 0


def test_recorder_refuses_to_overwrite_without_the_flag_and_names_the_changed_streams(tmp_path: Path) -> None:
    golden = tmp_path / "digests.json"
    before = {"0-delay": ["a", "b", "c"], "0-satseconds": ["x"], "1-delay": ["gone"]}
    golden.write_text(json.dumps(before))
    after = {"0-delay": ["a", "B", "C"], "0-satseconds": ["x"], "2-delay": ["new"]}
    said: list[str] = []
    assert record(golden, lambda: after, write=False, say=said.append) == 1
    assert json.loads(golden.read_text()) == before
    assert said[:3] == ["0-delay: differs from calls 100..199", "1-delay: stream removed", "2-delay: new stream"]
    assert "NOT overwritten" in said[3] and "--write" in said[3]
    said.clear()
    assert record(golden, lambda: after, write=True, say=said.append) == 0
    assert json.loads(golden.read_text()) == after and said[-1] == f"recorded {golden}"
    said.clear()
    assert record(golden, lambda: after, write=False, say=said.append) == 0
    assert said == [f"no stream changed: {golden} left as it is"]


if __name__ == "__main__":  # re-record after an intended behaviour change (see the module docstring)
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "gateway"))
    flag = "--write" in sys.argv[1:] or os.environ.get("CHAIRSIDE_RECORD_DIGESTS") == "1"
    sys.exit(record(GOLDEN, all_digests, write=flag))
