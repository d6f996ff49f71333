"""Nesterov's accelerated gradient: the gradient at a look-ahead point, same four steps.

    y_t = w_t + beta_t (w_t - w_{t-1});   w_{t+1} = y_t - lr * X^T (X y_t - y)

The server broadcasts y_t; the map and the Reduce are gd's (gradient and loss, d + 2
numbers). beta_t is the strongly convex constant (sqrt(kappa) - 1)/(sqrt(kappa) + 1) when
lambda_min was estimated reliably (`estimate_lmin`), else the schedule (k - 1)/(k + 2)
with k the steps since the last restart. Restart (k = 0, a plain gradient step) when the
loss at y grew or the step went uphill (g_t . (w_{t+1} - w_t) > 0; O'Donoghue & Candes
2015): on a strongly convex problem this recovers the sqrt(kappa) rate without knowing
lambda_min, and it keeps the loss from growing for StopRules' divergence streak. For a
quadratic with lr <= 1/lambda_max every constant beta in [0, 1) converges, so an
over-estimated lambda_min only costs speed.
"""

import math

import numpy as np
from mpi4py import MPI

GRADIENT = 0
LMIN_ROUNDS = 30       # the power iteration's budget: "cheap" = at most this many rounds
LMIN_RESIDUAL = 0.05   # accept lambda_min when ||A v - lambda v|| <= this * lambda


def estimate_lmin(comm, shard, d: int, lmax: float, seed: int) -> tuple[float | None, int]:
    """Collective: (lambda_min of X^T X or None, rounds) by power iteration on lmax I - X^T X.

    Same Bcast/Reduce as the training loop. The Rayleigh quotient of the shifted matrix
    bounds lambda_max - lambda_min from below, so the estimate errs high (safe, see above);
    it is used only when v is an eigenvector to LMIN_RESIDUAL, which on a badly conditioned
    problem (close small eigenvalues) it is not within the budget: then None.
    """
    root = comm.rank == 0
    vbuf = np.zeros(d + 1)
    local, total = np.zeros(d), np.zeros(d)
    v = vbuf[:d]
    result = np.array([math.nan])
    if root:
        v[:] = np.random.default_rng([seed, 1]).standard_normal(d)
        v /= np.linalg.norm(v)
    rounds = 0
    while True:
        comm.Bcast(vbuf, root=0)
        if vbuf[d] != 0.0:
            break
        shard.normal_product(v, local)
        comm.Reduce(local, total, op=MPI.SUM, root=0)
        rounds += 1
        if root:
            lmin = float(np.dot(v, total))          # v^T A v, v a unit vector
            residual = float(np.linalg.norm(total - lmin * v))
            if 0 < lmin and residual <= LMIN_RESIDUAL * lmin:
                result[0] = lmin
            shifted = lmax * v - total
            norm = float(np.linalg.norm(shifted))
            if norm > 0 and math.isfinite(norm):
                v[:] = shifted / norm
            vbuf[d] = 1.0 if (result[0] == result[0] or rounds >= LMIN_ROUNDS or not norm > 0) else 0.0
    comm.Bcast(result, root=0)
    return (float(result[0]) if math.isfinite(result[0]) else None), rounds


class Momentum:
    """The state of Nesterov's method: w_t, w_{t-1}, the steps since restart, beta's rule."""

    def __init__(self, w0: np.ndarray, lr: float, lmin: float | None, state: dict | None = None):
        self.d, self.lr = w0.size, lr
        # kappa from the step: lr = 1/lambda_max for --lr auto, else the user's 1/L.
        self.beta = None if lmin is None else _strong_beta(1.0 / (lr * lmin))
        self.w = w0.copy()
        self.w_prev = w0.copy()
        self.k, self.last_loss, self.restarts = 0, math.inf, 0
        if state:
            self.w_prev = state["w_prev"].copy()
            self.k, self.last_loss, self.restarts = (int(state["k"]), float(state["last_loss"]),
                                                     int(state["restarts"]))
        self.y = np.empty(self.d)
        self.step = np.empty(self.d)

    def next_point(self, xbuf: np.ndarray) -> None:
        beta = 0.0 if self.k == 0 else (self.beta if self.beta is not None
                                        else (self.k - 1) / (self.k + 2))
        np.subtract(self.w, self.w_prev, out=self.y)
        np.multiply(self.y, beta, out=self.y)
        np.add(self.w, self.y, out=self.y)
        xbuf[: self.d] = self.y
        xbuf[self.d + 1] = GRADIENT

    @staticmethod
    def map(shard, kind, point, aux, packed) -> None:
        d = point.size
        packed[d] = shard.gradient(point, packed[:d])

    def update(self, t, kind, total, rules):
        outcome = rules.decide(t, total)
        if outcome is not None:
            return outcome
        d = self.d
        np.multiply(total[:d], self.lr, out=self.step)
        new = self.y - self.step
        uphill = float(np.dot(total[:d], new - self.w)) > 0
        grew = float(total[d]) > self.last_loss
        self.last_loss = float(total[d])
        self.w_prev, self.w = self.w, new
        if (uphill or grew) and self.k > 0:
            self.k, self.restarts = 0, self.restarts + 1
        else:
            self.k += 1
        return None

    def state(self) -> dict:
        return {"w_prev": self.w_prev, "k": self.k, "last_loss": self.last_loss,
                "restarts": self.restarts}

    def facts(self) -> dict:
        return {"momentum": "strongly convex (sqrt(kappa)-1)/(sqrt(kappa)+1)" if self.beta is not None
                else "(k-1)/(k+2) with adaptive restart", "beta": self.beta,
                "restarts": self.restarts}


def _strong_beta(kappa: float) -> float:
    root = math.sqrt(max(kappa, 1.0))
    return (root - 1) / (root + 1)
