"""Conjugate gradient on the normal equations X^T X w = X^T y, one round per iteration.

Two kinds of round, each one Bcast, one fused pass over the shard, one Reduce of d + 2:
- GRADIENT: broadcast w; map = the gradient kernel (g = X^T (X w - y) and the loss);
  restart p = s = -g. No step is taken (w_{t+1} = w_t).
- DIRECTION: broadcast p; map = the power iteration's kernel q = X^T (X p) (fused.py
  with y = None, or the blocked BLAS pass). The server then does the whole CG step:
      alpha = gamma / p.q,  w += alpha p,  s -= alpha q,  loss -= alpha gamma / 2,
      beta = |s|^2 / gamma,  p = s + beta p
  p.q = |X p|^2 needs no extra scalar in the Reduce.
StopRules sees, per iteration, the recurrences' loss and |s| at w_t.

Restart / re-orthogonalization policy: none of the O(d^2) kind. The recurrences drift
from the true gradient by rounding (float32 shards: q carries ~1e-6 relative error, so
conjugacy is lost within tens of steps), so the true gradient is recomputed (a GRADIENT
round, restarting from steepest descent) every 4 d steps for float64 (the Krylov space is
exhausted after d in exact arithmetic; restarting at d threw away the progress: 131 rounds
instead of 27 at d = 16, cond 1e4, tol 1e-8) and every min(d, 20) steps for float32, and
whenever the recurrence says |s| <= tol |g0|: convergence is only declared on a true
gradient.
"""

import math

import numpy as np

GRADIENT, DIRECTION = 0, 1
RESTART_FLOAT32 = 20
RESTART_FLOAT64 = 4  # times d


def restart_every(d: int, dtype) -> int:
    return max(1, min(d, RESTART_FLOAT32) if np.dtype(dtype) == np.float32 else RESTART_FLOAT64 * d)


class ConjugateGradient:
    def __init__(self, w0: np.ndarray, dtype, state: dict | None = None):
        self.d = w0.size
        self.every = restart_every(self.d, dtype)
        self.w = w0.copy()
        self.p, self.s = np.zeros(self.d), np.zeros(self.d)
        self.gamma, self.loss, self.since, self.kind = 0.0, 0.0, 0, GRADIENT
        self.restarts = 0
        if state:
            self.p, self.s = state["p"].copy(), state["s"].copy()
            self.gamma, self.loss = float(state["gamma"]), float(state["loss"])
            self.since, self.kind = int(state["since"]), int(state["kind"])
            self.restarts = int(state["restarts"])
        self.g = np.zeros(self.d + 2)  # [-s, loss, stop]: what StopRules judges on a DIRECTION round

    def next_point(self, xbuf):
        xbuf[: self.d] = self.w if self.kind == GRADIENT else self.p
        xbuf[self.d + 1] = self.kind

    @staticmethod
    def map(shard, kind, point, aux, packed):
        d = point.size
        if kind == GRADIENT:
            packed[d] = shard.gradient(point, packed[:d])
        else:
            shard.normal_product(point, packed[:d])
            packed[d] = 0.0

    def update(self, t, kind, total, rules):
        d = self.d
        if kind == GRADIENT:
            outcome = rules.decide(t, total)
            if outcome is None:
                np.negative(total[:d], out=self.s)
                self.p[:] = self.s
                self.gamma, self.loss = float(np.dot(self.s, self.s)), float(total[d])
                self.since, self.kind, self.restarts = 0, DIRECTION, self.restarts + 1
            return outcome
        np.negative(self.s, out=self.g[:d])
        self.g[d], self.g[d + 1] = self.loss, total[d + 1]
        outcome = rules.decide(t, self.g)
        if outcome is not None and outcome.name == "CONVERGED":
            rules.outcome, outcome = None, None   # verify on the true gradient first
            self.kind = GRADIENT
            return None
        if outcome is not None:
            return outcome
        self._step(total[:d])
        return None

    def _step(self, q):
        curvature = float(np.dot(self.p, q))
        if not (curvature > 0 and math.isfinite(curvature)):
            self.kind = GRADIENT  # p is (numerically) in X's null space: start again from g
            return
        alpha = self.gamma / curvature
        self.w += alpha * self.p
        self.s -= alpha * q
        self.loss -= 0.5 * alpha * self.gamma
        gamma = float(np.dot(self.s, self.s))
        self.p *= gamma / self.gamma
        self.p += self.s
        self.gamma = gamma
        self.since += 1
        self.kind = GRADIENT if self.since >= self.every else DIRECTION

    def state(self) -> dict:
        return {"p": self.p, "s": self.s, "gamma": self.gamma, "loss": self.loss,
                "since": self.since, "kind": self.kind, "restarts": self.restarts}

    def facts(self) -> dict:
        return {"restart_every": self.every, "true_gradient_rounds": self.restarts}
