"""Collective feature scaling and intercept, done in place on each shard.

Both are exact reparametrizations of the same least-squares problem, so the weights can
always be mapped back to the original units:

* --intercept: X and y are centered with their global means (mu, y_bar). The best
  intercept for any w is then b = y_bar - mu^T w, and fitting w on centered data is
  exactly fitting (w, b) on the original data.
* --standardize: each feature is divided by a scale s_j (its standard deviation when
  centered, its root mean square otherwise), so training sees w'_j = s_j w_j.
  Constant features (s_j = 0) are left unscaled.
"""

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

_BLOCK_BYTES = 4 << 20


@dataclass
class Transform:
    """How the trained weights relate to the original units."""

    mean: np.ndarray      # subtracted from each feature (zeros without intercept)
    scale: np.ndarray     # each feature divided by this (ones without standardize)
    y_mean: float         # subtracted from y (0 without intercept)

    def original_weights(self, w_trained):
        w = w_trained / self.scale
        return w, float(self.y_mean - self.mean @ w)


def _blocks(X):
    step = max(1, _BLOCK_BYTES // max(1, X.shape[1] * X.itemsize))
    for lo in range(0, len(X), step):
        yield X[lo : lo + step]


def _global_sum(comm, local):
    total = np.empty_like(local)
    comm.Allreduce(local, total, op=MPI.SUM)
    return total


def prepare(comm, X, y, rows_total, intercept, standardize):
    """Collective. Center and/or scale X (and center y) in place; return the Transform."""
    d = X.shape[1]
    mean, scale, y_mean = np.zeros(d), np.ones(d), 0.0
    if intercept:
        local = np.zeros(d + 1)
        for block in _blocks(X):
            local[:d] += block.sum(axis=0, dtype=np.float64)
        local[d] = y.sum(dtype=np.float64)
        sums = _global_sum(comm, local) / rows_total
        # Record the values actually subtracted (rounded to the shard's dtype).
        mean = sums[:d].astype(X.dtype).astype(np.float64)
        y_mean = float(y.dtype.type(sums[d]))
        for block in _blocks(X):
            block -= mean.astype(X.dtype)
        y -= y.dtype.type(y_mean)
    if standardize:
        # Second pass over the already-centered data: numerically stable variance.
        local = np.zeros(d)
        for block in _blocks(X):
            local += np.einsum("ij,ij->j", block, block, dtype=np.float64)
        spread = np.sqrt(_global_sum(comm, local) / rows_total)
        scale = np.where(spread > 0, spread, 1.0).astype(X.dtype).astype(np.float64)
        for block in _blocks(X):
            block /= scale.astype(X.dtype)
    return Transform(mean=mean, scale=scale, y_mean=y_mean)
