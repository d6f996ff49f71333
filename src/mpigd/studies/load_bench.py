"""The bench's load row: mpigd's load of a shard vs a plain h5py slice read of the same rows.

Both run in this process on the same file (page cache warm after one untimed read each),
in turn round by round so that a passing load on the machine hits both alike. mpigd's side
is what every rank does in train._load: open and validate the file, then data.load_shard
(the read, the NaN/Inf check and the resume checksum in one pass; numba's pass where the
job's kernel is numba, as train._load decides; its import and compile are paid in the
untimed warm-up, as the trainer counts them in the kernel's set-up). The plain side is
`X[a:b]`, `y[a:b]` and nothing else.
"""

import functools
import os
import statistics

import h5py

from .. import data
from ..objective import fast_scan
from ..synthetic import generate
from .probe import interleaved_seconds


def _plain(path, lo, hi):
    with h5py.File(path, "r") as f:
        return f["X"][lo:hi], f["y"][lo:hi]


def _mpigd(path, lo, hi, fast):
    with data.open_input(path) as f:
        info = data.inspect(f, "X", "y")
        dtype = data.compute_dtype(info.x_dtype)
        return data.load_shard(f, info, lo, hi, dtype, fast)


def load_case(work, rows_bytes, features, repeat):
    """Median seconds of both loads of a rows_bytes float64 file, and their ratio."""
    rows = max(8, rows_bytes // (features * 8))
    path = os.path.join(work, f"load-{rows}x{features}.h5")
    generate(path, rows, features)
    fast = fast_scan(rows, features, 8, 1)  # as train._load decides it
    timed = {"plain": functools.partial(_plain, path, 0, rows),
             "mpigd": functools.partial(_mpigd, path, 0, rows, fast=fast)}
    try:
        for fn in timed.values():
            fn()  # warm: page cache, imports
        # a read is short and noisy: at least 5 rounds; each result is freed before the next
        # read, so both start from the same memory state
        seconds = interleaved_seconds(timed, max(5, repeat))
    finally:
        os.remove(path)
    plain, mine = (statistics.median(seconds[k]) for k in ("plain", "mpigd"))
    return {"rows": rows, "features": features, "scan": "numba" if fast else "numpy",
            "bytes": rows * (features + 1) * 8,
            "plain_s": plain, "mpigd_s": mine, "ratio": mine / plain,
            "plain_all_s": seconds["plain"], "mpigd_all_s": seconds["mpigd"]}


