# Status LED blink codes (documented in docs/engineer.md, "LED codes").
#
# Each code is a 2-second pattern of on/off steps of 125 ms (16 bits, MSB
# first).  The most urgent condition wins.
try:
    from micropython import const
except ImportError:  # CPython host
    def const(x):
        return x

STEP_MS = const(125)

# code name -> 16-step pattern
OK = const(0b1000000000000000)          # short blip every 2 s: online, sensors ok
OFFLINE = const(0b1100110011001100)     # fast blink: no Wi-Fi or broker (buffering)
SENSOR_FAULT = const(0b1010000010100000)  # double blink: probe off / module silent
NO_CONFIG = const(0b1111111100000000)   # slow blink: config missing or invalid
BOOTING = const(0b1111111111111111)     # solid: starting up


class StatusLed:
    def __init__(self, pin):
        self._pin = pin
        self.pattern = BOOTING
        self._last_level = -1

    def show(self, pattern):
        self.pattern = pattern

    def poll(self, now):
        step = (now // STEP_MS) % 16
        level = (self.pattern >> (15 - step)) & 1
        if level != self._last_level and self._pin is not None:
            self._pin.value(level)
        self._last_level = level
