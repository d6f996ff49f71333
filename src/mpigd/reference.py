"""The exact least-squares answer w*, by distributed normal equations, and the distance to it.

    every rank     A_k = X_kᵀX_k, b_k = X_kᵀy_k over its own rows       (map, once)
    Reduce(SUM)    [A_k, b_k] packed: d² + d numbers, one message      (communication, once)
    rank 0         A w* = b by Cholesky; by lstsq when A is singular    (solve)

Gradient descent moves d + 1 numbers down and d + 2 up per iteration; the exact answer
moves d² + d once. `Reference.track` measures GD against w*: ‖w_t − w*‖/‖w*‖, and
L(w_t) − L(w*) = ½ (w_t − w*)ᵀ A (w_t − w*), exact for least squares (the gradient at w*
is zero) and free of the cancellation of subtracting two nearly equal losses.
"""

import math
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

_BLOCK_ROWS = 1 << 14
# Up to this many bytes of iterates, rank 0 only copies w_t during the loop and computes the
# distances after it: the other ranks then never wait for that arithmetic in their next Bcast.
STORE_BYTES = 256 << 20


@dataclass
class Normal:
    """XᵀX and Xᵀy of all ranks' rows (on rank 0; None elsewhere) and what forming them cost."""

    A: "np.ndarray | None"
    b: "np.ndarray | None"
    compute_s: float
    reduce_s: float
    message_bytes: int


def normal_equations(comm, X: np.ndarray, y: np.ndarray) -> Normal:
    """Collective: every rank forms X_kᵀX_k and X_kᵀy_k; one Reduce sums them at rank 0."""
    d = X.shape[1]
    started = time.perf_counter()
    local = np.zeros(d * d + d)
    A, b = local[: d * d].reshape(d, d), local[d * d :]
    for lo in range(0, len(X), _BLOCK_ROWS):
        block = X[lo : lo + _BLOCK_ROWS].astype(np.float64, copy=False)
        A += block.T @ block
        b += block.T @ y[lo : lo + _BLOCK_ROWS].astype(np.float64, copy=False)
    computed = time.perf_counter()
    total = np.zeros_like(local) if comm.rank == 0 else None
    comm.Reduce(local, total, op=MPI.SUM, root=0)
    reduced = time.perf_counter()
    A, b = (None, None) if total is None else (total[: d * d].reshape(d, d), total[d * d :])
    return Normal(A, b, computed - started, reduced - computed, local.nbytes)


@dataclass
class Solution:
    w: np.ndarray
    method: str          # "cholesky" or "lstsq"
    rank: int
    note: str            # what the user should know about how w* was found
    seconds: float


def solve(A: np.ndarray, b: np.ndarray) -> Solution:
    """Rank 0: A w = b by Cholesky; for a (numerically) singular A the minimum-norm lstsq w."""
    started = time.perf_counter()
    d = len(b)
    try:
        L = np.linalg.cholesky(A)
        pivots = np.diag(L) ** 2
        # A pivot this small means XᵀX is singular to working precision (e.g. one-hot
        # columns that sum to the intercept): Cholesky's answer would be noise there.
        if pivots.min() <= 10 * d * np.finfo(float).eps * max(float(np.diag(A).max()), 1e-300):
            raise np.linalg.LinAlgError("numerically singular")
        w = np.linalg.solve(L.T, np.linalg.solve(L, b))
        return Solution(w, "cholesky", d, "Cholesky of XᵀX", time.perf_counter() - started)
    except np.linalg.LinAlgError:
        w, _, rank, _ = np.linalg.lstsq(A, b, rcond=None)
        note = (f"XᵀX is rank-deficient (rank {rank} of {d}: some features are linear combinations "
                "of others, e.g. every one-hot column with --intercept; --drop-first avoids that): "
                "w* is the minimum-norm solution by lstsq")
        return Solution(w, "lstsq", int(rank), note, time.perf_counter() - started)


class Reference:
    """Rank 0: w* and XᵀX of the training rows (in training units), and the distance per iteration."""

    def __init__(self, normal: Normal, solution: Solution, length: int):
        self.normal, self.solution = normal, solution
        self.A, self.w_star = normal.A, solution.w
        self.norm = float(np.linalg.norm(self.w_star)) or 1.0
        self.relative_error = np.full(length, np.nan)
        self.suboptimality = np.full(length, np.nan)
        self.seconds = 0.0
        d = len(self.w_star)
        self._iterates = np.full((length, d), np.nan) if length * d * 8 <= STORE_BYTES else None

    def distance(self, w: np.ndarray) -> "tuple[float, float]":
        """(‖w − w*‖/‖w*‖, L(w) − L(w*)) for a w in training units."""
        e = w - self.w_star
        return float(np.linalg.norm(e)) / self.norm, 0.5 * float(e @ (self.A @ e))

    def track(self, index: int, w: np.ndarray) -> None:
        """During the loop: keep w_t (or, for too many iterates to keep, measure it now)."""
        if not 0 <= index < len(self.relative_error):
            return
        if self._iterates is not None:
            self._iterates[index] = w
        else:
            started = time.perf_counter()
            self.relative_error[index], self.suboptimality[index] = self.distance(w)
            self.seconds += time.perf_counter() - started

    def measure_kept(self) -> None:
        """After the loop: the distances of every kept iterate, in one vectorized pass."""
        if self._iterates is None:
            return
        started = time.perf_counter()
        kept = ~np.isnan(self._iterates[:, 0])
        E = self._iterates[kept] - self.w_star
        self.relative_error[kept] = np.linalg.norm(E, axis=1) / self.norm
        self.suboptimality[kept] = 0.5 * np.einsum("ij,ij->i", E @ self.A, E)
        self._iterates = None
        self.seconds += time.perf_counter() - started

    def summary(self, w_final: np.ndarray, final_loss: float) -> dict:
        """result.json's `reference` block (w* itself is added in original units by the caller)."""
        relative, sub = self.distance(w_final)
        d = len(self.w_star)
        return {"method": self.solution.method, "rank": self.solution.rank, "note": self.solution.note,
                "loss_star": final_loss - sub, "final_w_relative_error": relative,
                "final_suboptimality": sub, "units": "training units (after --standardize/--intercept)",
                "seconds": {"normal_equations": self.normal.compute_s, "reduce": self.normal.reduce_s,
                            "solve": self.solution.seconds, "tracking": self.seconds},
                "reduce_numbers": d * d + d, "reduce_bytes": self.normal.message_bytes,
                "gd_bytes_per_iteration": gd_bytes_per_iteration(d),
                "break_even_iterations": math.ceil(self.normal.message_bytes / gd_bytes_per_iteration(d))}


def gd_bytes_per_iteration(d: int) -> int:
    """One iteration's messages: Bcast [w, control] (d + 1) and Reduce [g, loss, stop] (d + 2)."""
    return 8 * ((d + 1) + (d + 2))
