"""Synthetic least-squares data: y = X w_true + noise, written to HDF5 in row blocks.

Rows are generated block by block, each block from its own seed (seed, block index), so
memory stays at one block whatever the size of the file and the same arguments give
byte-identical datasets.
"""

import os
import time

import numpy as np

from . import __version__, rundir
from .errors import MpigdError, launcher_rank

# Rows per generation block: ~32 MB of float64 per block. It depends only on the number of
# features, so it is part of "the same arguments" and results do not depend on memory.
_BLOCK_VALUES = 4 << 20


def block_rows(features: int) -> int:
    return max(1, _BLOCK_VALUES // features)


NOISE = 0.1


def file_name(rows: int, features: int, seed: int, condition: float | None = None) -> str:
    """The name generated data go by in a data directory (default data, sweeps, Slurm)."""
    suffix = "" if condition is None else f"-cond{condition:g}"
    return f"synthetic-{rows}x{features}-seed{seed}{suffix}.h5"


def ensure(directory: str, rows: int, features: int, seed: int = 0,
           condition: float | None = None) -> tuple[str, bool]:
    """(path, generated): the float64 data set of these arguments in `directory`, made if absent."""
    path = os.path.join(directory, file_name(rows, features, seed, condition))
    if matches(path, rows, features, seed, NOISE, "float64", condition):
        return path, False
    generate(path, rows, features, seed, condition=condition)
    return path, True


def mixing(features: int, seed: int, condition: float | None) -> np.ndarray | None:
    """The d x d matrix M = Q diag(s) Q^T that every block of rows is multiplied by, or None.

    X = Z M with Z i.i.d. N(0, 1) gives X^T X ~ rows * Q diag(s^2) Q^T, so s spaced
    geometrically over [K^-1/4, K^1/4] makes cond(X^T X) ~ K (times cond(Z^T Z), which is
    close to 1 when rows >> features). Q is random (from the seed alone), so the
    ill-conditioning mixes all features, as correlated real features do. It is fixed for the
    whole file, so block-wise (and parallel) generation stays exact.
    """
    if condition is None:
        return None
    if not (condition >= 1 and np.isfinite(condition)):
        raise MpigdError(f"--condition must be a finite number >= 1 (got {condition})")
    rng = np.random.default_rng([seed, 0, 1])  # a stream no block (seed, i) nor w_true uses
    Q, R = np.linalg.qr(rng.standard_normal((features, features)))
    Q *= np.sign(np.diag(R))  # the QR's sign convention would otherwise depend on LAPACK
    s = condition ** (np.linspace(-0.25, 0.25, features) if features > 1 else np.zeros(1))
    return (Q * s) @ Q.T


def generate(path: str, rows: int, features: int, seed: int = 0, noise: float = NOISE,
             dtype: str = "float64", compression: str | None = None,
             condition: float | None = None) -> float:
    """Write X (rows x features), y (rows) and w_true (features) to `path`; return seconds.

    The file appears atomically (rundir.atomic_write), so an interrupted generation never
    leaves a file that looks complete.
    """
    import h5py

    if rows < 1 or features < 1:
        raise MpigdError(f"--rows and --features must be >= 1 (got {rows} and {features})")
    if noise < 0 or not np.isfinite(noise):
        raise MpigdError(f"--noise must be a finite number >= 0 (got {noise})")
    dtype = np.dtype(dtype)
    step = block_rows(features)
    mix = mixing(features, seed, condition)
    w_true = np.random.default_rng([seed, 0]).standard_normal(features)
    layout = {}
    if compression:
        layout = dict(chunks=(min(rows, max(1, 65536 // features)), features), compression=compression)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    started = time.perf_counter()

    def write(partial):
        with h5py.File(partial, "w", track_order=True) as f:
            X = f.create_dataset("X", (rows, features), dtype=dtype, track_times=False, **layout)
            y = f.create_dataset("y", (rows,), dtype=dtype, track_times=False,
                                 **({"compression": compression} if compression else {}))
            f.create_dataset("w_true", data=w_true.astype(dtype), track_times=False)
            for index, lo in enumerate(range(0, rows, step)):
                hi = min(rows, lo + step)
                rng = np.random.default_rng([seed, index + 1])
                block = rng.standard_normal((hi - lo, features))
                if mix is not None:
                    block = block @ mix
                target = block @ w_true + noise * rng.standard_normal(hi - lo)
                X[lo:hi] = block.astype(dtype, copy=False)
                y[lo:hi] = target.astype(dtype, copy=False)
            f.attrs.update(
                generator=f"mpigd {__version__}", rows=rows, features=features, seed=seed,
                noise=noise, dtype=dtype.name, compression=compression or "none",
                model="y = X @ w_true + noise * N(0, 1); X ~ N(0, 1) i.i.d." if mix is None
                else "y = X @ w_true + noise * N(0, 1); X = Z @ M, Z ~ N(0, 1) i.i.d., "
                     "M = Q diag(s) Q^T, s geometric over [K^-1/4, K^1/4], cond(X^T X) ~ K",
            )
            if mix is not None:
                f.attrs["condition"] = float(condition)

    rundir.atomic_write(path, write)
    return time.perf_counter() - started


def matches(path: str, rows: int, features: int, seed: int, noise: float, dtype: str,
            condition: float | None = None) -> bool:
    """True if `path` is a complete file that generate() made with these arguments."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            made = float(a["condition"]) if "condition" in a else None
            return (int(a["rows"]), int(a["features"]), int(a["seed"]), float(a["noise"]),
                    str(a["dtype"]), made) == (rows, features, seed, float(noise),
                                               np.dtype(dtype).name, condition)
    except (OSError, KeyError):
        return False


def command(args) -> int:
    """`python -m mpigd generate`: --out FILE, or --out-dir DIR (prints the file's path)."""
    if launcher_rank() != 0:
        return 0  # one writer: under mpirun the other ranks have nothing to do
    if args.out_dir is not None:
        if (args.noise, args.dtype, args.compression) != (NOISE, "float64", None):
            raise MpigdError("--out-dir names files by rows, features and seed alone; use --out "
                             "FILE.h5 for another --noise, --dtype or --compression")
        path, _ = ensure(args.out_dir, args.rows, args.features, args.seed, args.condition)
        print(path, flush=True)  # for scripts: `file=$(python -m mpigd generate ... --out-dir D)`
        return 0
    seconds = generate(args.out, args.rows, args.features, args.seed, args.noise,
                       args.dtype, args.compression, args.condition)
    size_gb = args.rows * args.features * np.dtype(args.dtype).itemsize / 1e9
    print(f"mpigd: wrote {args.out}: X {args.rows} x {args.features} {args.dtype} "
          f"({size_gb:.3f} GB), y, w_true in {seconds:.2f} s")
    return 0
