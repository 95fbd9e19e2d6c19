"""A slow, independent reference of rtml.learn's update equations, in plain Python floats.

FTRL-Proximal per McMahan et al. 2013 ("Ad Click Prediction: a View from the Trenches",
Algorithm 1) and plain SGD, written from the equations in docs/learning.md with the same
operation order as the Rust learner (coordinate order, intercept last, no fused multiply-add),
so the results are expected to be *equal*, bit for bit, not just close: Python floats are IEEE
doubles and math.exp / math.sqrt / ** are the C library's exp / sqrt / pow, as in Rust.
"""

from __future__ import annotations

import math


def _sigmoid(m: float) -> float:
    m = min(max(m, -35.0), 35.0)
    return 1.0 / (1.0 + math.exp(-m))


class RefLinear:
    def __init__(self, loss: str, k: int, opt: dict) -> None:
        self.loss, self.k, self.opt = loss, k, opt
        self.t = 0
        if opt["kind"] == "ftrl":
            self.z = [0.0] * (k + 1)
            self.n = [0.0] * (k + 1)
        else:
            self.w = [0.0] * (k + 1)

    def _ftrl_w(self, i: int) -> float:
        o = self.opt
        l1, l2 = (0.0, 0.0) if i == self.k else (o["l1"], o["l2"])
        z = self.z[i]
        if abs(z) <= l1:
            return 0.0
        sign = 1.0 if z > 0.0 else -1.0
        return -(z - sign * l1) / ((o["beta"] + math.sqrt(self.n[i])) / o["alpha"] + l2)

    def _weights(self) -> list[float]:
        if self.opt["kind"] == "ftrl":
            return [self._ftrl_w(i) for i in range(self.k + 1)]
        return list(self.w)

    def predict(self, x: list[float]) -> float:
        w = self._weights()
        m = 0.0
        for i in range(self.k):
            m += w[i] * x[i]
        m = m + w[self.k]
        return _sigmoid(m) if self.loss == "logistic" else m

    def learn(self, x: list[float], y: float) -> float:
        p = self.predict(x)
        self.step(x, p - y)
        self.t += 1
        return p

    def step(self, x: list[float], g: float) -> None:
        """One update with gradient `g` of the margin (the weights before it, `t` updates so far)."""
        w = self._weights()
        o = self.opt
        if o["kind"] == "ftrl":
            for i in range(self.k + 1):
                xi = 1.0 if i == self.k else x[i]
                gi = g * xi
                gg = gi * gi
                ni = self.n[i]
                s = (math.sqrt(ni + gg) - math.sqrt(ni)) / o["alpha"]
                self.z[i] += gi - s * w[i]
                self.n[i] = ni + gg
        else:
            sch = o["schedule"]
            if sch["kind"] == "constant":
                eta = sch["eta0"]
            else:
                eta = sch["eta0"] / float(self.t + 1) ** sch["power_t"]
            shrink = eta * o["l1"]
            for i in range(self.k):
                wi = self.w[i]
                wi = wi - eta * (g * x[i] + o["l2"] * wi)
                if wi > shrink:
                    wi = wi - shrink
                elif wi < -shrink:
                    wi = wi + shrink
                else:
                    wi = 0.0
                self.w[i] = wi
            self.w[self.k] -= eta * g


class RefSoftmax:
    """Softmax regression from docs/learning.md's equations, same operation order as
    src/learn/softmax.rs: margins class by class, the largest margin subtracted before exp, the
    probabilities' sum in class order, then each class's coordinates updated as RefLinear's."""

    def __init__(self, n_classes: int, k: int, opt: dict) -> None:
        self.c, self.k, self.opt = n_classes, k, opt
        self.t = 0
        self.lin = [RefLinear("squared", k, opt) for _ in range(n_classes)]

    def _margin(self, c: int, x: list[float]) -> float:
        lin = self.lin[c]
        w = lin._weights()
        m = 0.0
        for i in range(self.k):
            m += w[i] * x[i]
        return m + w[self.k]

    def predict(self, x: list[float]) -> list[float]:
        m = [self._margin(c, x) for c in range(self.c)]
        mx = m[0]
        for v in m[1:]:
            if v > mx:
                mx = v
        e = [math.exp(v - mx) for v in m]
        s = 0.0
        for v in e:
            s += v
        return [v / s for v in e]

    def learn(self, x: list[float], y: int) -> list[float]:
        p = self.predict(x)
        for c in range(self.c):
            g = p[c] - (1.0 if c == y else 0.0)
            self.lin[c].t = self.t  # one schedule for every class: updates so far
            self.lin[c].step(x, g)
        self.t += 1
        return p

    def state(self) -> dict:
        """The document's state arrays, class after class."""
        if self.opt["kind"] == "ftrl":
            return {
                "z": [v for lin in self.lin for v in lin.z],
                "n": [v for lin in self.lin for v in lin.n],
            }
        return {"w": [v for lin in self.lin for v in lin.w]}
