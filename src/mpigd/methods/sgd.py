"""Mini-batch SGD: each round's map touches only B rows in total, its message stays d + 2.

Which rows: the data's rows are cut into slices of `slice_rows(B)` = max(1, B // 64)
consecutive rows; every epoch visits all slices in a shuffled order drawn from
(seed, epoch); a batch is the next ~64 slices of that order (B rows). A rank computes the
part of each slice that lies in its own rows (contiguous sub-slices, gathered with one
fancy index, then two BLAS calls: a Python loop over slices cost ~25 us per slice, 1.7 ms
per step at B = 200). The rows of batch t are therefore fixed by the seed and the data alone, not by the rank count (the sums
differ across rank counts only by rounding, as gd's do); each rank's share is ~B/m rows.
A batch of all rows (B >= rows) is the full gradient through the gd kernel: with a
constant --lr it is gd, bit for bit.

Rounds: BATCH (a step w -= lr_t * sum of the batch's gradients) and FULL (the loss and
gradient on all rows, every --full-loss-every steps and after the last: a full pass that
result.json counts separately; it decides convergence, no step). Between FULL rounds the
history repeats the last full values: a batch loss is noise, not progress.
lr_t = lr / (1 + lr_decay * t / steps_per_epoch).
"""

import math

import numpy as np

from ..solver import Outcome

FULL, BATCH = 0, 1
SLICES_PER_BATCH = 64


def slice_rows(batch: int) -> int:
    return max(1, batch // SLICES_PER_BATCH)


class Schedule:
    """Which rows each step uses, from (rows, batch size, seed) alone."""

    def __init__(self, rows: int, batch: int, seed: int):
        self.rows, self.seed = rows, seed
        self.full = batch >= rows
        self.size = rows if self.full else slice_rows(batch)
        self.slices = math.ceil(rows / self.size)
        self.per_batch = 1 if self.full else math.ceil(batch / self.size)
        self.steps_per_epoch = math.ceil(self.slices / self.per_batch)
        self._epoch, self._order = -1, None

    def rows_of(self, step: int, lo: int, hi: int) -> np.ndarray:
        """This rank's local row indices of `step`'s batch (its rows are lo..hi), ascending."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, 14, epoch]).permutation(self.slices)
        chosen = np.sort(self._order[k * self.per_batch:(k + 1) * self.per_batch])
        starts = np.maximum(chosen * self.size, lo)
        stops = np.minimum(np.minimum((chosen + 1) * self.size, self.rows), hi)
        keep = starts < stops
        starts, lengths = starts[keep] - lo, (stops - starts)[keep]
        # the concatenation of range(start, start + length) without a Python loop
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        return offsets + np.arange(int(lengths.sum()))


def total_rounds(steps: int, every: int) -> int:
    """BATCH rounds plus FULL ones (at step 0, every `every` steps, and after the last)."""
    return steps + steps // every + 1 + (1 if steps % every else 0)


class MiniBatchSGD:
    def __init__(self, w0, lr, schedule: Schedule, steps: int, every: int, decay: float,
                 lo: int, hi: int, state: dict | None = None):
        self.d, self.lr, self.schedule = w0.size, lr, schedule
        self.steps, self.every, self.decay, self.lo, self.hi = steps, every, decay, lo, hi
        self.w = w0.copy()
        self.done, self.kind, self.full_passes = 0, FULL, 0
        if state:
            self.done, self.kind = int(state["done"]), int(state["kind"])
            self.full_passes = int(state["full_passes"])
        self.step = np.empty(self.d)

    def next_point(self, xbuf):
        xbuf[: self.d] = self.w
        xbuf[self.d + 1], xbuf[self.d + 2] = self.kind, self.done

    def map(self, shard, kind, point, aux, packed):
        d = point.size
        if kind == FULL or self.schedule.full:
            packed[d] = shard.gradient(point, packed[:d])
            return
        rows = self.schedule.rows_of(int(aux), self.lo, self.hi)
        X_b = shard.X[rows]  # one gather of ~B/m rows, then two BLAS calls
        r = X_b @ point.astype(X_b.dtype) - shard.y[rows]
        packed[d] = 0.5 * float(np.dot(r, r))
        packed[:d] = X_b.T @ r   # float64 sums also for a float32 shard

    def update(self, t, kind, total, rules):
        d = self.d
        if kind == FULL:
            self.full_passes += 1
            outcome = rules.decide(t, total)
            if outcome is None and self.done >= self.steps:
                outcome = rules.outcome = Outcome.MAX_ITERS
            if outcome is None:
                self.kind = BATCH
            return outcome
        outcome = _judge_batch(t, total, rules)
        if outcome is not None:
            return outcome
        lr = self.lr if not self.decay else \
            self.lr / (1 + self.decay * self.done / self.schedule.steps_per_epoch)
        np.multiply(total[:d], lr, out=self.step)
        np.subtract(self.w, self.step, out=self.w)
        self.done += 1
        if self.done % self.every == 0 or self.done >= self.steps:
            self.kind = FULL
        return None

    def state(self) -> dict:
        return {"done": self.done, "kind": self.kind, "full_passes": self.full_passes}

    def facts(self) -> dict:
        s = self.schedule
        return {"steps": self.done, "full_passes": self.full_passes,
                "steps_per_epoch": s.steps_per_epoch, "slice_rows": s.size,
                "slices_per_batch": s.per_batch, "lr_decay": self.decay,
                "batches": "contiguous slices in a shuffled order per epoch, independent of the rank count"}


def _judge_batch(t, total, rules):
    """A BATCH round's bookkeeping: carry the last full values; only Inf/NaN or SIGTERM stop."""
    d = total.size - 2
    rules.loss[t], rules.grad_norm[t], rules.last = rules.loss[t - 1], rules.grad_norm[t - 1], t
    if not math.isfinite(float(total[d])) or not np.isfinite(total[:d]).all():
        rules.why, rules.outcome = f"a mini-batch loss became {float(total[d]):.3e}", Outcome.DIVERGED
    elif total[d + 1] > 0:
        rules.outcome = Outcome.TERMINATED
    return rules.outcome
