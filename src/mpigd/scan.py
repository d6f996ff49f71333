"""What the load computes over every value it reads: finiteness and the data's checksum.

Both are done right after each block is read (see data.load_shard), in parts small enough
to stay in L2 between the two, so the shard comes from memory once more, not twice.

Finiteness: the float sum of a block is finite only if every value is (an Inf or a NaN
makes any sum Inf or NaN), so one fast reduction clears a clean block; only a block whose
sum is not finite (a bad value, or finite values overflowing) is scanned value by value.

With numba, scan_fused does both in one compiled pass (`fast=True`), and where the data's
bytes can be mapped from the file (rawread.py) in the same pass as the copy into the
shard: the load then reads each value once, as a plain read does.

The checksum is sum_k bits(v_k) * (k + 1) * GOLDEN mod 2^64 over the global flat index k
(checkpoint.data_checksum's definition; the same value). Split sum_k bits_k * k as
k = q*L + c over the block viewed as rows of L values: L * sum_q q * rowsum_q +
sum_c c * colsum_c, two plain integer reductions instead of a multiply and a sum over
64-bit temporaries of the block's size.
"""

import time

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_L = 1024  # values per row of the checksum's view: long enough for fast row sums


def bits_of(values: np.ndarray) -> np.ndarray:
    """The values' bit patterns as unsigned integers (a view, no copy) of a C-contiguous array."""
    flat = values.reshape(-1)
    return flat.view(np.uint32 if flat.itemsize == 4 else np.uint64)


def weighted_sum(values: np.ndarray, first_index: int) -> np.uint64:
    """sum(bits(v_i) * (first_index + i + 1) * GOLDEN) mod 2^64 over a C-contiguous array."""
    bits = bits_of(values)
    m = bits.size
    if m == 0:
        return np.uint64(0)
    body = m - m % _L
    with np.errstate(over="ignore"):
        plain = np.uint64(0)   # sum bits_i
        moment = np.uint64(0)  # sum bits_i * i
        if body:
            grid = bits[:body].reshape(-1, _L)
            colsum = grid.sum(axis=0, dtype=np.uint64)
            rowsum = grid.sum(axis=1, dtype=np.uint64)
            plain += colsum.sum(dtype=np.uint64)
            moment += np.uint64(_L) * np.dot(rowsum, np.arange(len(rowsum), dtype=np.uint64))
            moment += np.dot(colsum, np.arange(_L, dtype=np.uint64))
        if body < m:
            tail = bits[body:].astype(np.uint64)
            plain += tail.sum(dtype=np.uint64)
            moment += np.dot(tail, np.arange(body, m, dtype=np.uint64))
        return (np.uint64(first_index + 1) * plain + moment) * GOLDEN


def all_finite(block: np.ndarray) -> bool:
    """True if every value of `block` is finite (one float sum; an exact scan if it is not)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(block.sum()):
            return True
    return bool(np.isfinite(block).all())  # the sum overflowed, or there is a bad value


def checked_sum(values: np.ndarray, first_index: int, fast: bool = False) -> tuple[bool, np.uint64]:
    """(all finite, weighted_sum) of a C-contiguous array: one compiled pass if `fast`."""
    if not fast:
        return all_finite(values), weighted_sum(values, first_index)
    from . import scan_fused

    return _weighted(*scan_fused.sums(values), first_index)


def checked_copy(source: np.ndarray, into: np.ndarray, first_index: int,
                 fast: bool = False) -> tuple[bool, np.uint64]:
    """into[:] = source, and (all finite, weighted_sum) of the values: one pass if `fast`."""
    if not fast:
        np.copyto(into, source)
        return checked_sum(into, first_index)
    from . import scan_fused

    return _weighted(*scan_fused.sums(source, into), first_index)


def _weighted(plain, moment, finite, first_index):
    """scan_fused's sums as (finite, weighted_sum): sum bits_i * (first_index + i + 1) * GOLDEN."""
    with np.errstate(over="ignore"):
        return finite, (np.uint64(first_index + 1) * plain + moment) * GOLDEN


def warm_up(dtype=np.float64) -> float:
    """Import numba and compile (or load the cached) fast scan of `dtype`; the seconds it took."""
    started = time.perf_counter()
    from . import scan_fused

    scan_fused.warm_up(dtype)
    return time.perf_counter() - started
