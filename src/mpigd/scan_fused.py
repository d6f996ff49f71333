"""The load's scan (finiteness and checksum, see scan.py) as one compiled pass, with numba.

numpy needs three passes over a part (a float sum, then row and column sums of the bit
patterns), so the load ran at ~1.7x a plain read even with the parts in L2. This kernel
reads each value once and does only vectorizable integer work on it:

- The checksum's moment sum_i i * b_i over the bit patterns b, viewed as Q rows of L:
  with i = q L + c it is L * sum_q q r_q + sum_c c col_c (r_q a row's sum, col_c a
  column's). The inner loop over a row adds b into r (a register) and into col[c] (L1);
  after each row, total += r_q and prefix += total, so that sum_q q r_q = Q * total -
  prefix (r_q is in the prefix Q - q times). Two adds per value and no multiply; every
  sum is modulo 2^64, as the checksum's definition is.
- A value is Inf or NaN exactly when its exponent bits are all ones; adding one unit of
  the exponent's lowest bit to them then carries into the sign bit, so OR-ing
  (bits & EXPONENT) + LOWEST over the values flags a bad one in the top bit.

Measured here on a 1 MB block in L2: 39 GB/s (a plain numpy float sum: 43 GB/s). The whole
load, copying 800 MB from a mapped file into the shard while summing, took 1.00x the time
of a plain h5py read of the same rows, which does the copy alone (`mpigd bench`'s load row;
README, Benchmarks).

Importing this module imports numba; warm_up compiles or loads the cached code.
"""

import time

import numpy as np
from numba import njit

L = 256  # values per row: long enough that a row's loop runs vectorized, col stays in L1

# (unsigned view, exponent mask, its lowest bit, the sign bit) per value width in bytes
_FORMATS = {
    8: (np.uint64, 0x7FF0000000000000, 1 << 52, 63),
    4: (np.uint32, 0x7F800000, 1 << 23, 31),
}


@njit(nogil=True, boundscheck=False, cache=True)
def _pass(src, dst, copy, exponent, lowest, sign):
    """(sum b_i, sum i b_i, any Inf/NaN) of 1-D bit patterns; also dst[:] = src if `copy`.

    The copy is the load's read from a mapped file: the values are summed on their way
    into the shard, so each is read once (see the module docstring for the sums).
    """
    rows = src.size // L
    col = np.zeros(L, np.uint64)
    flags = exponent & ~exponent  # zero of the bits' own type
    total = np.uint64(0)
    prefix = np.uint64(0)
    for q in range(rows):
        r = np.uint64(0)
        base = q * L
        for c in range(L):  # `copy` is the same for every value: LLVM unswitches the loop
            b = src[base + c]
            if copy:
                dst[base + c] = b
            r += b
            col[c] += b
            flags |= (b & exponent) + lowest
        total += r
        prefix += total
    moment = np.uint64(L) * (np.uint64(rows) * total - prefix)
    for c in range(L):
        moment += np.uint64(c) * col[c]
    for i in range(rows * L, src.size):  # the tail: fewer than L values
        b = src[i]
        if copy:
            dst[i] = b
        total += b
        moment += np.uint64(i) * b
        flags |= (b & exponent) + lowest
    return total, moment, (flags >> sign) != 0


def sums(values: np.ndarray, into: np.ndarray | None = None) -> tuple[np.uint64, np.uint64, bool]:
    """(sum bits_i, sum i * bits_i, all finite) of a C-contiguous float array, mod 2^64.

    With `into` (an array of the same size and type) the values are also copied into it.
    """
    kind, exponent, lowest, sign = _FORMATS[values.itemsize]
    bits = values.reshape(-1).view(kind)
    out = bits if into is None else into.reshape(-1).view(kind)
    if out.size != bits.size:
        raise ValueError("`into` must hold as many values as `values`")
    plain, moment, flagged = _pass(bits, out, into is not None, kind(exponent), kind(lowest),
                                   kind(sign))
    return np.uint64(plain), np.uint64(moment), not flagged


def warm_up(dtype=np.float64) -> float:
    """Compile (or load from numba's cache) the kernel for `dtype`; the seconds it took."""
    started = time.perf_counter()
    values = np.zeros(L + 1, dtype=dtype)
    sums(values)                        # a scan (the HDF5-read path)
    sums(values, np.empty_like(values))  # a scan that copies (the mapped path)
    return time.perf_counter() - started
