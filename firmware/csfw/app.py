# The chair box's main loop: sensors -> readings -> outbox -> MQTT.
#
# One cooperative loop, polled as fast as the board allows (~every 5 ms).
# Every component is non-blocking and takes `now` (uptime ms).  Hardware and
# the clock are injected (`hw`, `clock`), so the same code runs on the Pico W
# (firmware/main.py) and on CPython against firmware/host.
#
# Delivery rule (nothing lost, live first):
# - a new reading is published at once, live (no `h`), when the link is up and
#   the QoS 1 window has room; otherwise it goes to the spool (RAM ring, then
#   flash);
# - while online, the spool is replayed oldest first with h=1 in the window's
#   spare slots; a spooled record is committed (deleted) only after its PUBACK;
# - when the link drops, live readings still awaiting PUBACK are put back in
#   the spool (the gateway writes idempotently, so a duplicate is harmless).
from csfw import contract
from csfw.led import OFFLINE, OK, SENSOR_FAULT, StatusLed
from csfw.supervisor import Supervisor

VITALS_PERIOD_MS = 1000
STATUS_PERIOD_MS = 60000
REPLAY_PER_POLL = 4  # bound the work one loop iteration does for the replay
LIVE_RESERVE = 2  # inflight slots kept free for live readings during a replay

KIND_VITALS = 1
KIND_NIBP = 2

ST_CODES = (contract.ST_OK, contract.ST_SEARCHING, contract.ST_NO_FINGER,
            contract.ST_PROBE_OFF, contract.ST_NO_DATA)


class Hardware:
    """What the app needs from the board; firmware/main.py and
    firmware/host/box.py each build one."""

    def __init__(self, oxi_uart, nibp_uart, wlan, connect_fn, fs_dir, os_module,
                 wdt=None, led_pin=None, reset_cause="unknown", rand=None, ntp_sync=None):
        self.oxi_uart = oxi_uart
        self.nibp_uart = nibp_uart
        self.wlan = wlan
        self.connect_fn = connect_fn
        self.fs_dir = fs_dir
        self.os = os_module
        self.wdt = wdt
        self.led_pin = led_pin
        self.reset_cause = reset_cause
        self.rand = rand
        self.ntp_sync = ntp_sync


def next_boot_count(os_module, fs_dir):
    """Increment and return the boot counter kept in flash."""
    path = fs_dir + "/boot.count"
    count = 0
    try:
        with open(path) as f:
            count = int(f.read().strip() or "0") + 1
    except (OSError, ValueError):
        count = 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(count))
    try:
        os_module.remove(path)
    except OSError:
        pass
    os_module.rename(tmp, path)
    return count


class Outbox:
    """Readings on their way to the gateway: live publishes awaiting PUBACK
    and the spool of everything not yet delivered.

    `spool` provides push(record), peek(i) -> record|None (i-th oldest not yet
    committed), commit(n) (drop the n oldest), depth, dropped.
    """

    def __init__(self, spool):
        self.spool = spool
        self.live = {}  # pid -> record, live publishes awaiting PUBACK
        self.replay = []  # [pid, done] for spooled records in flight, oldest first
        self.published = 0
        self.requeued = 0

    def on_puback(self, pid):
        if pid in self.live:
            del self.live[pid]
            return
        for entry in self.replay:
            if entry[0] == pid:
                entry[1] = True
                break
        done = 0
        while done < len(self.replay) and self.replay[done][1]:
            done += 1
        if done:
            self.spool.commit(done)
            self.replay = self.replay[done:]

    def link_lost(self):
        """Put live readings without PUBACK back into the spool; spooled ones
        in flight simply stay uncommitted and are replayed again."""
        pids = sorted(self.live)
        for pid in pids:
            self.spool.push(self.live[pid])
            self.requeued += 1
        self.live = {}
        self.replay = []
