"""The bulk-synchronous loop of the lecture, its step size and its stopping rules.

    rank 0 (server)                     every rank holding rows
    Bcast w_t  ───────────────────────▶ receive w_t
                                        g_k, loss_k over its own rows     (map)
    Reduce(SUM) ◀───────────────────── [g_k, loss_k, stop_k] packed, one message
    w_t+1 = w_t - lr * g                (update)

The server's stop decision (the Outcome) rides on the next broadcast (one extra slot in
the buffer), and a rank's request to stop (it got SIGTERM) rides on the Reduce, so
neither costs an extra collective, and every rank returns the same Outcome.
`peer_to_peer_descent` is the lecture's other architecture: every rank Allreduces the
gradient and updates its own copy of w, with no server.
"""

import math
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from mpi4py import MPI

from . import progress
from .signals import StopRequest
from .timing import PhaseClock


class Outcome(IntEnum):
    """How a loop ended; its value travels in the control slot of the Bcast buffer."""

    CONVERGED = 1    # ||g_t|| <= tol ||g_0||
    MAX_ITERS = 2    # --iters updates done
    DIVERGED = 3     # the loss or |g| is not finite, or the loss kept growing
    TERMINATED = 4   # some rank received SIGTERM: stopped at this iteration boundary

    @property
    def reason(self) -> str:
        """The stop_reason of result.json."""
        return self.name.lower()


CONTINUE = 0.0  # the control slot while the loop goes on

# Divergence: the loss grew by more than this relative margin for this many iterations
# in a row. The margin keeps rounding noise near convergence from counting as growth.
GROWTH_MARGIN = 1e-9
GROWTH_STREAK = 5


class StopRules:
    """Bookkeeping after each Reduce: record loss and |g|, then decide whether to go on.

    Iterations are numbered globally, so a resumed run continues at `start` with the
    history of the earlier iterations.
    """

    def __init__(self, max_iters: int, tol: float, start: int = 0, loss=(), grad_norm=()):
        self.max_iters, self.tol, self.start = max_iters, tol, start
        self.loss = np.zeros(max_iters + 1)
        self.grad_norm = np.zeros(max_iters + 1)
        self.loss[:start], self.grad_norm[:start] = loss, grad_norm
        self.outcome: Outcome | None = None
        self.why = ""  # for a divergence: what was seen, for the message
        self.last = start - 1
        self._streak = 0

    @property
    def reason(self) -> str:
        return self.outcome.reason if self.outcome else ""

    def decide(self, t: int, total: np.ndarray) -> Outcome | None:
        """Record iteration t from the reduced [g, loss, stop requests]; None = go on."""
        d = total.size - 2
        g, loss = total[:d], float(total[d])
        norm = math.sqrt(float(np.dot(g, g)))
        self.loss[t], self.grad_norm[t], self.last = loss, norm, t
        self.outcome = self._judge(t, loss, norm, stop_requested=total[d + 1] > 0)
        return self.outcome

    def _judge(self, t, loss, norm, stop_requested):
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.why = f"the loss became {loss:.3e}" if not math.isfinite(loss) else \
                f"the gradient norm became {norm:.3e}"
            return Outcome.DIVERGED
        if t > 0 and loss > self.loss[t - 1] * (1 + GROWTH_MARGIN):
            self._streak += 1
            if self._streak >= GROWTH_STREAK:
                self.why = (f"the loss grew for {GROWTH_STREAK} iterations in a row "
                            f"(to {loss:.3e})")
                return Outcome.DIVERGED
        else:
            self._streak = 0
        if stop_requested:
            return Outcome.TERMINATED
        if norm <= self.tol * self.grad_norm[0]:
            return Outcome.CONVERGED
        if t >= self.max_iters:
            return Outcome.MAX_ITERS
        return None

    @property
    def updates(self) -> int:
        """Updates done in total: one per evaluated iteration, except a stopping one."""
        return self.last

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Loss and |g| of every iteration evaluated so far (including a resumed run's)."""
        return self.loss[: self.last + 1], self.grad_norm[: self.last + 1]

    def iterations_to_tol(self, window: int = 20) -> int | None:
        """Iterations still needed to reach tol at the rate |g| fell over the last `window`.

        None when tol was reached, is 0 (never stop early) or |g| stopped falling.
        """
        _, norm = self.history()
        target = self.tol * norm[0]
        if self.tol == 0 or len(norm) < 3 or norm[-1] <= target:
            return None
        k = min(window, len(norm) - 1)
        rate = (norm[-1] / norm[-1 - k]) ** (1 / k) if norm[-1 - k] > 0 else 1.0
        if not 0 < rate < 1:
            return None
        return int(math.ceil(math.log(target / norm[-1]) / math.log(rate)))

    def history_before(self, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """Loss and |g| of iterations 0 .. iteration-1: what a checkpoint at `iteration` keeps."""
        return self.loss[:iteration], self.grad_norm[:iteration]


@dataclass
class Trajectory:
    w: np.ndarray            # the final w (on every rank)
    outcome: Outcome         # how the loop ended (the same on every rank)
    rules: StopRules         # history (filled on rank 0 in server mode)
    clock: PhaseClock
    wall_s: float            # first Bcast to last update


def _map(shard, w, packed, stop, straggle_s):
    """Fill packed = [g_k, loss_k, stop_k] from this rank's rows (and play the straggler)."""
    d = w.size
    progress.STATE[progress.PHASE] = progress.MAPPING    # for the stall watchdog: ~20 ns
    packed[d] = shard.gradient(w, packed[:d])
    packed[d + 1] = stop.raised
    if straggle_s:  # seconds, or a faults.Jitter drawing them per iteration
        time.sleep(straggle_s() if callable(straggle_s) else straggle_s)
    progress.STATE[progress.PHASE] = progress.WAITING


def gradient_descent(comm, shard, w0: np.ndarray, lr: float, rules: StopRules,
                     straggle_s: float = 0.0, stop: StopRequest | None = None,
                     on_iteration=None) -> Trajectory:
    """Run synchronous data-parallel GD from w0 (significant on rank 0 only)."""
    d, root = w0.size, comm.rank == 0
    stop = stop or StopRequest()
    wbuf = np.zeros(d + 1)                          # [w, control]: Bcast payload
    packed = np.zeros(d + 2)                        # [g_k, loss_k, stop_k]: Reduce payload
    total = np.zeros(d + 2) if root else None       # their sums, on the server
    step = np.empty(d)
    w = wbuf[:d]
    w[:] = w0
    clock = PhaseClock(rules.max_iters + 1 - rules.start, comm)
    now = time.perf_counter_ns
    started = t0 = now()
    t = rules.start
    while True:
        t0 = now()
        comm.Bcast(wbuf, root=0)                             # 1. Broadcast w_t
        t1 = now()
        if wbuf[d] != CONTINUE:
            break
        _map(shard, w, packed, stop, straggle_s)             # 2. Map: local g and loss
        t2 = now()
        comm.Barrier()                                       #    wait for the slowest (sync)
        t3 = now()
        comm.Reduce(packed, total, op=MPI.SUM, root=0)       # 3. Reduce to the server
        t4 = now()
        if root:                                             # 4. Update w_t+1 = w_t - lr g
            outcome = rules.decide(t, total)
            wbuf[d] = CONTINUE if outcome is None else float(outcome)
            if outcome is None:
                np.multiply(total[:d], lr, out=step)
                np.subtract(w, step, out=w)
        t5 = now()
        update = t5 - t4 if root else 0  # only the server updates
        clock.record(t0, t2 - t1, t1 - t0, t4 - t3, update, t3 - t2)
        if on_iteration is not None:
            on_iteration(t, w)
        t += 1
    return Trajectory(w=w.copy(), outcome=Outcome(int(wbuf[d])), rules=rules, clock=clock,
                      wall_s=(t0 - started) * 1e-9)


def peer_to_peer_descent(comm, shard, w0: np.ndarray, lr: float, rules: StopRules,
                         straggle_s: float = 0.0, stop: StopRequest | None = None,
                         on_iteration=None) -> Trajectory:
    """The same GD without a server: Allreduce the gradient, every rank updates its w.

    Every rank receives bitwise the same sums, so every rank takes the same decisions.
    """
    d = w0.size
    stop = stop or StopRequest()
    packed = np.zeros(d + 2)                        # [g_k, loss_k, stop_k]
    total = np.zeros(d + 2)                         # their sums, on every rank
    step = np.empty(d)
    w = w0.copy()
    comm.Bcast(w, root=0)                           # everyone starts from rank 0's w0
    clock = PhaseClock(rules.max_iters + 1 - rules.start, comm)
    now = time.perf_counter_ns
    started = t5 = now()
    t, outcome = rules.start, None
    while outcome is None:
        t1 = now()
        _map(shard, w, packed, stop, straggle_s)             # 1. Map: local g and loss
        t2 = now()
        comm.Barrier()                                       #    wait for the slowest (sync)
        t3 = now()
        comm.Allreduce(packed, total, op=MPI.SUM)            # 2. Allreduce: all get the sum
        t4 = now()
        outcome = rules.decide(t, total)                     # 3. Update, on every rank
        if outcome is None:
            np.multiply(total[:d], lr, out=step)
            np.subtract(w, step, out=w)
        t5 = now()
        clock.record(t1, t2 - t1, 0, t4 - t3, t5 - t4, t3 - t2)
        if on_iteration is not None:
            on_iteration(t, w)
        t += 1
    return Trajectory(w=w, outcome=outcome, rules=rules, clock=clock,
                      wall_s=(t5 - started) * 1e-9)
