"""Station benchmark: how fast the nurses' station board follows the chairs.

    python benchmarks/station.py                    # 100 chairs at 1 Hz for 30 s, SSE client and browser
    python benchmarks/station.py --chairs 200 --seconds 60 --no-browser

Everything on loopback: a private Mosquitto (``chairside.sim.services``) and
``chairside station serve`` as a *subprocess* (its own interpreter, as in
production; plain HTTP here).  The benchmark publishes contract-valid
``vitals`` for ``--chairs`` chairs at ``--rate`` Hz each (QoS 1, spread evenly
over each period) and measures the **board update latency**, from the
publish of a reading to

* ``sse``: a logged-in client reading the board's event stream (``/events``)
  receiving the tile that carries that reading's ``seq``;
* ``browser``: Debian's chromium (Playwright, ``--chromium``) showing the
  board: a MutationObserver records when the tile holding that ``seq`` is put
  into the page (``Date.now()`` there and ``time.time()`` here are the same
  machine clock).

Prints one row per client: updates seen, p50/p95/p99/max latency in ms, and
the station's CPU use over the run.  Figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _extra in (REPO / "gateway", REPO / "firmware"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from chairside.sim.services import Mosquitto, free_port, wait_for_port  # noqa: E402
from chairside.station.accounts import Accounts  # noqa: E402

SITE = "bench"
USER, PASSWORD = "bench nurse", "bench password 1"


class Published:
    """(chair, seq) -> publish time (s since the epoch)."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()


def publish(port: int, chairs: int, rate: float, seconds: float, published: Published, stop: threading.Event) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-chairs")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    period = 1.0 / rate
    start = time.monotonic() + 0.5
    n = int(seconds * rate)
    try:
        for seq in range(n):
            for i in range(chairs):
                due = start + seq * period + i * period / chairs
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                now = time.time()
                payload = {"v": 1, "boot": 1, "seq": seq, "up": seq * 1000, "t": int(now * 1000), "sync": 1,
                           "spo2": 97, "pr": 70 + seq % 5, "sig": 5, "st": "ok"}
                with published.lock:
                    published.at[(f"{i + 1}", seq)] = now
                client.publish(f"chairside/v1/{SITE}/{i + 1}/vitals", json.dumps(payload), qos=1)
    finally:
        time.sleep(0.5)
        client.loop_stop()
        client.disconnect()


def login_opener(url: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(url + "/login", timeout=10).read().decode()
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the login page"
    form = urllib.parse.urlencode({"csrf_token": match.group(1), "name": USER, "password": PASSWORD}).encode()
    board = opener.open(url + "/login", data=form, timeout=10)
    assert board.geturl().rstrip("/") == url, "login failed"
    return opener


def read_sse(url: str, published: Published, latencies: list[float], stop: threading.Event) -> None:
    opener = login_opener(url)
    stream = opener.open(url + "/events", timeout=30)
    event = ""
    while not stop.is_set():
        line = stream.readline().decode()
        if not line:
            return
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event == "tiles":
            now = time.time()
            message = json.loads(line[5:])
            if message.get("full"):
                continue
            for tile in message["tiles"]:
                with published.lock:
                    sent = published.at.get((tile["chair"], tile["seq"]))
                if sent is not None:
                    latencies.append(now - sent)


def browser_run(url: str, chromium: str, seconds: float, started: threading.Event) -> list[list[Any]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url + "/login")
        page.fill("input[name=name]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("#login-button")
        page.wait_for_selector("#chairs")
        page.evaluate("""() => {
            window.benchSeen = [];
            new MutationObserver((records) => {
                const now = Date.now();
                for (const r of records) for (const n of r.addedNodes)
                    if (n.dataset && n.dataset.seq)
                        window.benchSeen.push([n.dataset.chair, Number(n.dataset.seq), now]);
            }).observe(document.getElementById('chairs'), {childList: true});
        }""")
        started.set()
        time.sleep(seconds + 2.0)
        seen: list[list[Any]] = page.evaluate("window.benchSeen")
        browser.close()
        return seen


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(name: str, values_s: list[float]) -> str:
    if not values_s:
        return f"{name:<8} {0:>8}  (no updates seen)"
    ms = sorted(v * 1000 for v in values_s)
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else [ms[0]] * 99
    return f"{name:<8} {len(ms):>8} {q[49]:>8.1f} {q[94]:>8.1f} {q[98]:>8.1f} {ms[-1]:>8.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chairs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per chair")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)
    use_browser = not args.no_browser and Path(args.chromium).exists()

    with tempfile.TemporaryDirectory(prefix="chairside-station-bench-") as tmp:
        users = Path(tmp) / "users.json"
        Accounts(users).add(USER, PASSWORD, "nurse", 0)
        broker = Mosquitto(workdir=Path(tmp) / "mosquitto")
        broker.start()
        port = free_port()
        log = open(Path(tmp) / "station.log", "wb")  # noqa: SIM115 - handed to the child
        env = dict(os.environ, PYTHONPATH=str(REPO / "gateway"))
        station = subprocess.Popen(
            [sys.executable, "-m", "chairside.cli", "--log-level", "ERROR", "station", "serve", "--site", SITE,
             "--users", str(users), "--host", "127.0.0.1", "--port", str(port), "--mqtt-port", str(broker.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        try:
            wait_for_port(port, 20, None)
            published = Published()
            sse: list[float] = []
            reader = threading.Thread(target=read_sse, args=(url, published, sse, stop), daemon=True)
            reader.start()
            seen: list[list[Any]] = []
            browser_started = threading.Event()
            if use_browser:
                browser = threading.Thread(
                    target=lambda: seen.extend(browser_run(url, args.chromium, args.seconds, browser_started)),
                    daemon=True)
                browser.start()
                browser_started.wait(60)
            time.sleep(1.0)
            cpu0, t0 = cpu_s(station.pid), time.monotonic()
            publish(broker.port, args.chairs, args.rate, args.seconds, published, stop)
            cpu1, t1 = cpu_s(station.pid), time.monotonic()
            time.sleep(1.0)
            if use_browser:
                browser.join(30)
            browser_lat = []
            for chair, seq, t_ms in seen:
                sent = published.at.get((chair, seq))
                if sent is not None:
                    browser_lat.append(t_ms / 1000 - sent)
        finally:
            stop.set()
            station.terminate()
            station.wait(10)
            log.close()
            broker.stop()
    total = len(published.at)
    print(f"\nstation board update latency: {args.chairs} chairs at {args.rate:g} Hz for {args.seconds:g} s "
          f"({total} readings published)")
    print(f"{'client':<8} {'updates':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'-' * 8} {'-' * 8} {'-' * 8} {'-' * 8} {'-' * 8} {'-' * 8}")
    print(summary("sse", sse))
    if use_browser:
        print(summary("browser", browser_lat))
    print(f"station CPU: {100 * (cpu1 - cpu0) / (t1 - t0):.1f} % of one core while publishing")
    return 0 if sse else 1


if __name__ == "__main__":
    raise SystemExit(main())
