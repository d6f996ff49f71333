"""Synthetic least-squares data: y = X w_true + noise, written to HDF5 in row blocks.

Rows are generated block by block, each block from its own seed (seed, block index), so
memory stays at one block whatever the size of the file and the same arguments give
byte-identical datasets.
"""

import os
import time

import numpy as np

from . import __version__
from .errors import MpigdError

# Rows per generation block: ~32 MB of float64 per block. It depends only on the number of
# features, so it is part of "the same arguments" and results do not depend on memory.
_BLOCK_VALUES = 4 << 20


def block_rows(features):
    return max(1, _BLOCK_VALUES // features)


def generate(path, rows, features, seed=0, noise=0.1, dtype="float64", compression=None):
    """Write X (rows x features), y (rows) and w_true (features) to `path`.

    The file appears atomically: it is written under a temporary name and renamed, so an
    interrupted generation never leaves a file that looks complete.
    """
    import h5py

    if rows < 1 or features < 1:
        raise MpigdError(f"--rows and --features must be >= 1 (got {rows} and {features})")
    if noise < 0 or not np.isfinite(noise):
        raise MpigdError(f"--noise must be a finite number >= 0 (got {noise})")
    dtype = np.dtype(dtype)
    step = block_rows(features)
    w_true = np.random.default_rng([seed, 0]).standard_normal(features)
    layout = {}
    if compression:
        layout = dict(chunks=(min(rows, max(1, 65536 // features)), features), compression=compression)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    started = time.perf_counter()
    try:
        with h5py.File(partial, "w", track_order=True) as f:
            X = f.create_dataset("X", (rows, features), dtype=dtype, track_times=False, **layout)
            y = f.create_dataset("y", (rows,), dtype=dtype, track_times=False,
                                 **({"compression": compression} if compression else {}))
            f.create_dataset("w_true", data=w_true.astype(dtype), track_times=False)
            for index, lo in enumerate(range(0, rows, step)):
                hi = min(rows, lo + step)
                rng = np.random.default_rng([seed, index + 1])
                block = rng.standard_normal((hi - lo, features))
                target = block @ w_true + noise * rng.standard_normal(hi - lo)
                X[lo:hi] = block.astype(dtype, copy=False)
                y[lo:hi] = target.astype(dtype, copy=False)
            f.attrs.update(
                generator=f"mpigd {__version__}", rows=rows, features=features, seed=seed,
                noise=noise, dtype=dtype.name, compression=compression or "none",
                model="y = X @ w_true + noise * N(0, 1); X ~ N(0, 1) i.i.d.",
            )
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return time.perf_counter() - started


def matches(path, rows, features, seed, noise, dtype):
    """True if `path` is a complete file that generate() made with these arguments."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            return (int(a["rows"]), int(a["features"]), int(a["seed"]), float(a["noise"]),
                    str(a["dtype"])) == (rows, features, seed, float(noise), np.dtype(dtype).name)
    except (OSError, KeyError):
        return False
