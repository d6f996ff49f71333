"""Rows kept out of training: the --holdout rule, the split of a shard, the --test-data rows.

The rule depends on a row's global index in the file and a seed, never on who reads it:

    row i (0-based) is held out  <=>  splitmix64(i + (seed + 1) * 0x9E3779B97F4A7C15) / 2^64 < FRACTION

splitmix64 is the finalizer of Steele, Lea and Flood's SplittableRandom (well mixed: the
held-out rows are spread over the whole file, not a block of it). So 1 rank or 16, a run,
its resume, `solve --holdout` and a test's numpy reference all hold out the same rows.
"""

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from . import data
from .errors import MpigdError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def held_out(rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """True for the global row indices `rows` that the rule above keeps out of training."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64 by design
        z = rows.astype(np.uint64) + np.uint64(seed + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


@dataclass
class Rows:
    """Some rows of this rank, and how many such rows all ranks hold together."""

    X: np.ndarray
    y: np.ndarray
    total: int


def _global_count(comm, local: int) -> int:
    count = np.array([local], dtype=np.int64)
    total = np.zeros(1, dtype=np.int64)
    comm.Allreduce(count, total, op=MPI.SUM)
    return int(total[0])


def split(comm, X: np.ndarray, y: np.ndarray, lo: int, fraction: float,
          seed: int) -> "tuple[Rows, Rows | None]":
    """Collective: (training rows, held-out rows or None) of this rank's rows [lo, lo+len(X))."""
    if not fraction:
        return Rows(X, y, _global_count(comm, len(X))), None
    out = held_out(np.arange(lo, lo + len(X), dtype=np.int64), fraction, seed)
    train = Rows(np.ascontiguousarray(X[~out]), np.ascontiguousarray(y[~out]),
                 _global_count(comm, int((~out).sum())))
    hold = Rows(np.ascontiguousarray(X[out]), np.ascontiguousarray(y[out]),
                _global_count(comm, int(out.sum())))
    if hold.total == 0 or train.total == 0:
        which = "no row was held out" if hold.total == 0 else "every row was held out"
        raise MpigdError(f"--holdout {fraction:g} of {hold.total + train.total} rows: {which}; "
                         "use more data or another fraction", collective=True)
    return train, hold


def read_test_rows(comm, path: str, config, train_path: str, features: int, dtype) -> Rows:
    """Collective: this rank's block of --test-data, checked to hold the training features."""
    from .comm import agreed
    from .features import names_in

    with agreed(comm, f"reading --test-data {path}"), data.readable(path):
        with data.open_input(path) as h5file:
            info = data.inspect(h5file, config.x_dataset, config.y_dataset)
            theirs = names_in(h5file, config.x_dataset)
            names = _names_of(train_path, config.x_dataset)
            if info.features != features:
                raise MpigdError(f"--test-data {path} has {info.features} features but the training "
                                 f"data has {features}; give a file with the same features "
                                 "(import it with the same --features)")
            if names is not None and theirs is not None and list(theirs) != list(names):
                diff = next(i for i, (a, b) in enumerate(zip(names, theirs)) if a != b)
                raise MpigdError(f"--test-data {path} has other features than the training data: "
                                 f"feature {diff} is '{theirs[diff]}', not '{names[diff]}'; "
                                 "import both tables with the same --features and categories")
            lo, hi = data.block_range(info.rows, comm.size, comm.rank)
            X, y = data.read_shard(h5file, info, lo, hi, dtype)
        data.check_finite(X, y, first_row=lo)
    return Rows(X, y, info.rows)


def _names_of(path, x_dataset):
    import h5py

    from .features import names_in

    with h5py.File(path, "r") as h5file:
        return names_in(h5file, x_dataset)
