# Optical sensor path: a MAX30102 on I2C instead of the OEM oximeter module,
# with SpO2 and pulse estimated on the box (csfw.ppg).  Same surface as
# csfw.oximeter.Oximeter (poll / summary / health), so the app does not care
# which path a box has.  Its readings carry src="max30102": the estimate is
# NOT clinically validated (ppg.NOT_VALIDATED); the OEM module stays the
# recommended path (docs/hardware-protocols.md).
from csfw import ppg
from csfw.contract import ST_NO_DATA, ST_NO_FINGER, ST_OK, ST_SEARCHING
from csfw.max30102 import Max30102, Max30102Error

READ_PERIOD_MS = 100  # the 32-sample FIFO holds 320 ms at 100 samples/s
SILENT_MS = 2000


class OpticalOximeter:
    src = ppg.SRC

    def __init__(self, i2c, rate_sps=100, window_s=4):
        self.sensor = Max30102(i2c)
        self.estimator = ppg.PpgEstimator(rate_sps, window_s)
        self._next_read = 0
        self._last_samples = None
        self.error = None
        try:
            self.sensor.init(rate_sps)
        except (OSError, Max30102Error) as exc:  # wrong part or no answer: a status, not a crash
            self.error = exc

    def poll(self, now, tick=None):
        if self.error is not None or now < self._next_read:
            return
        self._next_read = now + READ_PERIOD_MS
        try:
            if self.sensor.read(self.estimator.add):
                self._last_samples = now
        except OSError as exc:
            self.error = exc

    def summary(self, now):
        if self.health(now) != "ok":
            return None, None, 0, ST_NO_DATA
        spo2, pr, _ratio = self.estimator.estimate()
        if spo2 is None:
            if self.estimator.count < self.estimator.size:
                return None, None, 0, ST_SEARCHING
            return None, None, 0, ST_NO_FINGER
        return spo2, pr, 8, ST_OK

    def health(self, now):
        if self.error is not None:
            return "error"
        if self._last_samples is None or now - self._last_samples > SILENT_MS:
            return "silent"
        return "ok"
