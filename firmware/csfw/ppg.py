# On-device PPG estimate from MAX30102 red/IR samples: pulse rate and a
# ratio-of-ratios SpO2.  NOT CLINICALLY VALIDATED: the SpO2 calibration is the
# generic linear approximation SpO2 = 110 - 25 R quoted in sensor application
# notes, not a calibration of this sensor on people.  Messages from this path
# carry src "max30102" (contract: messages.vitals.fields.src) so the gateway
# and dashboards can say so.
#
# Samples go into preallocated arrays (add() allocates nothing for 18-bit
# values); estimate() runs at 1 Hz and uses small-float maths.
import array

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

SRC = "max30102"
NOT_VALIDATED = "estimate from max30102: not clinically validated"
MIN_DC = const(5000)          # below this IR level there is no finger on the sensor
MIN_PERFUSION = 0.0005        # AC/DC of IR below this: no usable pulse
SPO2_A = 110.0
SPO2_B = 25.0


class PpgEstimator:
    def __init__(self, rate_sps=100, window_s=4):
        self.rate = rate_sps
        self.size = rate_sps * window_s
        self._red = array.array("i", [0] * self.size)
        self._ir = array.array("i", [0] * self.size)
        self._head = 0
        self.count = 0

    def add(self, red, ir):
        h = self._head
        self._red[h] = red
        self._ir[h] = ir
        h += 1
        self._head = 0 if h == self.size else h
        if self.count < self.size:
            self.count += 1

    def reset(self):
        self._head = 0
        self.count = 0

    def _ordered(self, i):
        # index of the i-th oldest sample
        start = self._head - self.count
        if start < 0:
            start += self.size
        j = start + i
        return j - self.size if j >= self.size else j

    def estimate(self):
        """-> (spo2|None, pr|None, ratio|None).  None until a full window."""
        n = self.count
        if n < self.size:
            return None, None, None
        red = self._red
        ir = self._ir
        sr = 0.0
        si = 0.0
        for k in range(n):
            sr += red[k]
            si += ir[k]
        dc_r = sr / n
        dc_i = si / n
        if dc_i < MIN_DC or dc_r < MIN_DC:
            return None, None, None
        qr = 0.0
        qi = 0.0
        for k in range(n):
            a = red[k] - dc_r
            b = ir[k] - dc_i
            qr += a * a
            qi += b * b
        ac_r = (qr / n) ** 0.5
        ac_i = (qi / n) ** 0.5
        if ac_i / dc_i < MIN_PERFUSION or ac_r == 0:
            return None, None, None
        ratio = (ac_r / dc_r) / (ac_i / dc_i)
        spo2 = SPO2_A - SPO2_B * ratio
        spo2 = int(spo2 + 0.5)
        if spo2 > 100:
            spo2 = 100
        if spo2 < 0:
            spo2 = 0
        return spo2, self._pulse_rate(dc_i, ac_i), ratio

    def _pulse_rate(self, dc, ac):
        # upward mean crossings of the IR signal with hysteresis (0.5 x RMS)
        hi = dc + 0.5 * ac
        lo = dc - 0.5 * ac
        ir = self._ir
        armed = False
        first = -1
        last = -1
        beats = 0
        for i in range(self.count):
            v = ir[self._ordered(i)]
            if v < lo:
                armed = True
            elif armed and v > hi:
                armed = False
                if first < 0:
                    first = i
                else:
                    beats += 1
                last = i
        if beats < 1 or last <= first:
            return None
        pr = 60.0 * self.rate * beats / (last - first)
        return int(pr + 0.5)
