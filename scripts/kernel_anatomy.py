"""Why the fused kernel sits where it does against the read floor, on this CPU, one core.

    python scripts/kernel_anatomy.py [FEATURES [DTYPE [MB]]]      (defaults: 1000 float64 800)

Times, in rounds (medians of 7), one pass of
  * the bench's floor (an OR of X's words) over an MB-sized shard, from memory;
  * the fused kernel (mpigd.fused, this CPU's dot order) over the same shard;
  * both again over a 512 KB block of it, passed over and over, so it stays in L2;
and prints the rates next to what the kernel would reach if its compute and its memory
reads simply added up (no overlap): 1 / (1/floor + 1/kernel-in-L2). A kernel near that
line is bound by its in-cache work plus the stream, not by memory alone; one near the
floor overlaps them. Needs the `fast` extra (numba).
"""

import statistics
import sys

import numpy as np

from mpigd import fused
from mpigd.studies.probe import fill_random, interleaved_seconds, reads

# In L2 (1 MB a core on Zen 4), and big enough that a call's ~1.5 us of dispatch is ~10 %.
L2_BLOCK_BYTES = 512 * 1024
ROUNDS = 7


def kernel(X, y):
    w = np.full(X.shape[1], 1e-3, dtype=X.dtype)
    acc, out = np.zeros_like(w), np.zeros(X.shape[1])
    return lambda: fused.gradient_pass(X, y, w, acc, out)


def repeated(fn, times):
    def run():
        for _ in range(times):
            fn()
    return run


def main(features: int = 1000, dtype: str = "float64", megabytes: int = 800) -> None:
    dtype = np.dtype(dtype)
    rows = max(4, megabytes * 2**20 // (features * dtype.itemsize))
    X = fill_random(np.empty((rows, features), dtype=dtype))
    y = fill_random(np.empty(rows, dtype=dtype), seed=1)
    small = max(4, L2_BLOCK_BYTES // (features * dtype.itemsize))
    passes = max(1, X.nbytes // X[:small].nbytes)  # the L2 cases read as many bytes
    timed = {"floor (OR), memory": reads(X)["or"], "kernel, memory": kernel(X, y),
             "floor (OR), L2": repeated(reads(X[:small])["or"], passes),
             "kernel, L2": repeated(kernel(X[:small], y[:small]), passes)}
    fused.warm_up(dtype)
    for fn in timed.values():
        fn()
    seconds = interleaved_seconds(timed, ROUNDS)
    rate = {name: X.nbytes / statistics.median(s) / 1e9 for name, s in seconds.items()}
    floor = rate["floor (OR), memory"]
    no_overlap = 1.0 / (1.0 / floor + 1.0 / rate["kernel, L2"])
    print(f"{dtype.name} d={features}, {X.nbytes / 2**20:.0f} MB shard, L2 block {small} rows, "
          f"sequential dots: {fused.SEQUENTIAL_DOTS}, medians of {ROUNDS}")
    for name, gb_s in rate.items():
        print(f"  {name:<22} {gb_s:6.1f} GB/s  {100 * gb_s / floor:5.0f} % of the floor")
    print(f"  {'no-overlap estimate':<22} {no_overlap:6.1f} GB/s  "
          f"{100 * no_overlap / floor:5.0f} % of the floor (memory read + in-L2 kernel, added)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 1000, args[1] if len(args) > 1 else "float64",
         int(args[2]) if len(args) > 2 else 800)
