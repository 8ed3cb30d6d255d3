# Watchdog supervisor: the hardware watchdog is fed only while every task
# has shown progress recently (style-anchors habit 10).  A task that stops
# reporting (stuck in a loop, or raising every time) lets the WDT reset the
# box, which then comes back with reset cause "watchdog" in its birth message.
#
# RP2040 datasheet 4.7: the watchdog timeout is at most ~8.3 s; MicroPython's
# machine.WDT(timeout=ms) takes it in ms and is fed with .feed().


class Supervisor:
    def __init__(self, wdt=None, stall_ms=5000):
        self._wdt = wdt
        self._stall_ms = stall_ms
        self._names = []
        self._last = []
        self.starved = 0  # loop iterations where the WDT was not fed
        self.stalled = None  # name of the first stalled task, for the status message

    def register(self, name, now):
        self._names.append(name)
        self._last.append(now)
        return len(self._names) - 1

    def progress(self, task_id, now):
        self._last[task_id] = now

    def check(self, now):
        """Feed the watchdog if every task progressed within stall_ms."""
        for i in range(len(self._last)):
            if now - self._last[i] > self._stall_ms:
                self.stalled = self._names[i]
                self.starved += 1
                return False
        self.stalled = None
        if self._wdt is not None:
            self._wdt.feed()
        return True
