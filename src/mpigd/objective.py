"""The map step: least-squares loss and gradient summed over one rank's rows.

    r = X w - y,   g = X^T r = sum_i (x_i^T w - y_i) x_i,   loss = 1/2 ||r||^2

The naive `X.T @ (X @ w - y)` streams X from memory twice. Here X is walked in row
blocks small enough to stay in cache between the two products, so each pass reads X
from memory about once. All scratch space is allocated once, in the constructor.

With numba installed (`pip install '.[fast]'`) a fused one-pass kernel (fused.py) does
the same work faster; MPIGD_KERNEL=blas|numba|auto chooses (see `choose_kernel`).
"""

import time

import numpy as np

from .config import kernel_setting
from .data import block_range
from .errors import MpigdError

# A block of rows should fit in a core's L2 cache together with its residual; measured
# on this machine's 1e6 x 100 float64 shard, 128-512 KB blocks were all within 5 %.
BLOCK_BYTES = 256 << 10

# `auto` takes numba only for shards at least this big: below, importing numba and loading
# its cached code (~0.6 s, ~2 s when it must compile) costs more than it saves over a
# typical run (docs/benchmarks.md has the measurement).
NUMBA_MIN_BYTES = 256 << 20


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def choose_kernel(nbytes: int, requested: str | None = None) -> str:
    """'blas' or 'numba' for a shard of `nbytes`: `requested` (--kernel), else MPIGD_KERNEL."""
    requested = kernel_setting(requested)
    if requested == "numba" and not numba_available():
        raise MpigdError("the numba kernel was asked for (--kernel or MPIGD_KERNEL) but numba is "
                         "not installed; `pip install '.[fast]'` (or numba), or use the blas kernel")
    if requested == "auto":
        return "numba" if nbytes >= NUMBA_MIN_BYTES and numba_available() else "blas"
    return requested


def job_kernel(rows: int, features: int, itemsize: int, workers: int,
               requested: str | None = None) -> str:
    """The one kernel for a whole job: the choice for its largest worker shard.

    Every rank (and every run of a sweep) must use the same kernel: chosen per shard, ranks
    whose shards straddle the threshold would differ, a dedicated server (no rows) would
    record the wrong one, and a strong sweep would switch kernels as shards shrink.
    """
    lo, hi = block_range(rows, workers, 0)  # block 0 is the largest of a balanced split
    return choose_kernel((hi - lo) * features * itemsize, requested)


def fast_scan(rows: int, features: int, itemsize: int, workers: int,
              requested: str | None = None) -> bool:
    """Whether the load scans with numba (scan_fused): where the job's kernel is numba's.

    Then numba is imported anyway; train counts the scan's compile (or cache load) with the
    kernel's set-up, not in load_s.
    """
    try:  # job_kernel imports numba only where it might choose it (not for small shards)
        return job_kernel(rows, features, itemsize, workers, requested) == "numba"
    except MpigdError:  # numba asked for but missing: the kernel's own step says so
        return False


class LeastSquaresShard:
    """One rank's rows and the scratch buffers to compute on them without allocating."""

    def __init__(self, X, y, block_bytes=BLOCK_BYTES, kernel=None):
        if X.ndim != 2 or y.shape != (X.shape[0],) or X.dtype != y.dtype:
            raise ValueError("X must be (n, d) and y (n,) of the same dtype")
        self.X, self.y = X, y
        rows, features = X.shape
        self.block = max(1, min(rows, block_bytes // (features * X.itemsize)))
        self._w = np.empty(features, dtype=X.dtype)          # w in the compute dtype
        self._r = np.empty(self.block, dtype=X.dtype)        # residual of one block
        self._g_block = np.empty(features, dtype=X.dtype)    # X_b^T r_b of one block
        # The kernel, and what choosing it cost (numba: import + compile or cache load),
        # paid here so that the first iteration is not charged for it.
        started = time.perf_counter()
        self.kernel = choose_kernel(X.nbytes, kernel)
        self._fused = None
        if self.kernel == "numba":
            from . import fused

            fused.warm_up(X.dtype, X.flags.c_contiguous)
            self._fused = fused.gradient_pass
        self.setup_s = time.perf_counter() - started

    @property
    def rows(self):
        return self.X.shape[0]

    def gradient(self, w, g_out):
        """Write sum_i (x_i^T w - y_i) x_i into g_out (float64); return 1/2 ||Xw - y||^2."""
        return self._pass(w, g_out, self.y)

    def normal_product(self, v, out):
        """Write X^T X v into out (float64): the map step of the power iteration."""
        self._pass(v, out, None)

    def _pass(self, w, out, y):
        X, r, g_block = self.X, self._r, self._g_block
        np.copyto(self._w, w, casting="same_kind")
        if self._fused is not None:
            return self._fused(X, y, self._w, g_block, out)
        out[:] = 0.0
        loss = 0.0
        for lo in range(0, self.rows, self.block):
            X_b = X[lo : lo + self.block]
            r_b = r[: X_b.shape[0]]
            np.dot(X_b, self._w, out=r_b)
            if y is not None:
                np.subtract(r_b, y[lo : lo + self.block], out=r_b)
                loss += float(np.dot(r_b, r_b))
            np.dot(X_b.T, r_b, out=g_block)
            np.add(out, g_block, out=out)  # float64 accumulation also for float32 shards
        return 0.5 * loss
