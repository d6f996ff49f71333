"""The bulk-synchronous loop of the lecture, its step size and its stopping rules.

    rank 0 (server)                     every rank holding rows
    Bcast w_t  ───────────────────────▶ receive w_t
                                        g_k, loss_k over its own rows     (map)
    Reduce(SUM) ◀───────────────────── [g_k, loss_k] packed, one message
    w_t+1 = w_t - lr * g                (update)

The server's stop decision rides on the next broadcast (one extra slot in the buffer),
so stopping costs no extra collective.
"""

import math
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from .timing import PhaseClock

CONTINUE, STOP, DIVERGED = 0.0, 1.0, 2.0

# Divergence: the loss grew by more than this relative margin for this many iterations
# in a row. The margin keeps rounding noise near convergence from counting as growth.
GROWTH_MARGIN = 1e-9
GROWTH_STREAK = 5


@dataclass
class Trajectory:
    """What the loop leaves behind; loss/grad_norm/stop_reason are filled on rank 0 only."""

    w: np.ndarray
    iterations: int          # number of updates w_t -> w_t+1
    evaluations: int         # gradient passes (= iterations + 1: the last one scores w_final)
    stop_reason: str
    loss: np.ndarray
    grad_norm: np.ndarray
    clock: PhaseClock
    wall_s: float


class StopRules:
    """Rank 0's bookkeeping after each Reduce: record, then decide whether to go on."""

    def __init__(self, max_iters, tol):
        self.max_iters, self.tol = max_iters, tol
        self.loss = np.zeros(max_iters + 1)
        self.grad_norm = np.zeros(max_iters + 1)
        self.reason = ""
        self._streak = 0

    def decide(self, t, loss, g):
        norm = math.sqrt(float(np.dot(g, g)))
        self.loss[t], self.grad_norm[t] = loss, norm
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.reason = "diverged"
            return DIVERGED
        if t > 0 and loss > self.loss[t - 1] * (1 + GROWTH_MARGIN):
            self._streak += 1
            if self._streak >= GROWTH_STREAK:
                self.reason = "diverged"
                return DIVERGED
        else:
            self._streak = 0
        if norm <= self.tol * self.grad_norm[0]:
            self.reason = "converged"
            return STOP
        if t == self.max_iters:
            self.reason = "max_iters"
            return STOP
        return CONTINUE


def gradient_descent(comm, shard, w0, lr, max_iters, tol, straggle_s=0.0, on_iteration=None):
    """Run synchronous data-parallel GD from w0 (significant on rank 0 only)."""
    d, root = w0.size, comm.rank == 0
    wbuf = np.zeros(d + 1)                          # [w, control]: Bcast payload
    packed = np.zeros(d + 1)                        # [g_k, loss_k]: Reduce payload
    total = np.zeros(d + 1) if root else None       # [g, loss] on the server
    step = np.empty(d)
    w, g_local = wbuf[:d], packed[:d]
    w[:] = w0
    rules = StopRules(max_iters, tol) if root else None
    clock = PhaseClock(max_iters + 1)
    now = time.perf_counter_ns
    started = now()
    t = 0
    while True:
        t0 = now()
        comm.Bcast(wbuf, root=0)                             # 1. Broadcast w_t
        t1 = now()
        if wbuf[d] != CONTINUE:
            break
        packed[d] = shard.gradient(w, g_local)               # 2. Map: local g and loss
        if straggle_s:
            time.sleep(straggle_s)
        t2 = now()
        comm.Barrier()                                       #    wait for the slowest (sync)
        t3 = now()
        comm.Reduce(packed, total, op=MPI.SUM, root=0)       # 3. Reduce to the server
        t4 = now()
        if root:                                             # 4. Update w_t+1 = w_t - lr g
            wbuf[d] = rules.decide(t, total[d], total[:d])
            if wbuf[d] == CONTINUE:
                np.multiply(total[:d], lr, out=step)
                np.subtract(w, step, out=w)
        t5 = now()
        clock.ns[t] = (t2 - t1, t1 - t0, t4 - t3, t5 - t4, t3 - t2)
        clock.rows = t = t + 1
        if on_iteration is not None:
            on_iteration(t - 1, rules)
    wall_s = (t0 - started) * 1e-9
    evaluations = clock.rows
    return Trajectory(
        w=w.copy(), iterations=evaluations - 1, evaluations=evaluations,
        stop_reason=rules.reason if root else ("diverged" if wbuf[d] == DIVERGED else ""),
        loss=rules.loss[:evaluations] if root else None,
        grad_norm=rules.grad_norm[:evaluations] if root else None,
        clock=clock, wall_s=wall_s,
    )


def estimate_lmax(comm, shard, d, seed=0, rtol=1e-4, max_steps=200):
    """Largest eigenvalue of X^T X by distributed power iteration (same Bcast/Reduce).

    Returns the Rayleigh quotient v^T X^T X v of the unit iterate, a lower bound on
    lambda_max that converges from below; valid on every rank.
    """
    root = comm.rank == 0
    vbuf = np.zeros(d + 1)
    local = np.zeros(d)
    total = np.zeros(d) if root else None
    v = vbuf[:d]
    if root:
        v[:] = np.random.default_rng(seed).standard_normal(d)
        v /= np.linalg.norm(v)
    estimate, steps = 0.0, 0
    while True:
        comm.Bcast(vbuf, root=0)
        if vbuf[d] != CONTINUE:
            break
        shard.normal_product(v, local)
        comm.Reduce(local, total, op=MPI.SUM, root=0)
        steps += 1
        if root:
            previous, estimate = estimate, float(np.dot(v, total))
            norm = float(np.linalg.norm(total))
            done = norm == 0.0 or steps >= max_steps or abs(estimate - previous) <= rtol * estimate
            if norm > 0.0:
                v[:] = total / norm
            vbuf[d] = STOP if done else CONTINUE
    result = np.array([estimate])
    comm.Bcast(result, root=0)
    return float(result[0]), steps
