"""The map step as ONE pass over the shard, compiled with numba (optional: `pip install '.[fast]'`).

For every group of four rows x_i the kernel computes r_i = x_i . w - y_i and then
g += sum r_i x_i while those four rows are still in L1, so X is read from memory exactly
once per iteration. Four rows per pass over w and g keep four independent dot-product
chains in flight and amortize the loads and stores of g over four rows; the loops over
features are plain, unit-stride and vectorized by LLVM (fastmath lets it reassociate
the sums, which is what vectorizing a dot product needs).

The compute dtype is the shard's: a float32 shard is read as float32 (half the bytes),
its dot products run in float32 like BLAS sdot, and the float32 sum of g is flushed into
the float64 output every FLUSH_ROWS rows, so rounding error grows with FLUSH_ROWS, not
with the shard's length. The loss is accumulated in float64.

Importing this module imports numba (~0.3 s); the first call per dtype compiles (~0.6-1 s)
or loads the compiled code from numba's cache (cache=True; NUMBA_CACHE_DIR chooses where).
"""

import time

import numpy as np
from llvmlite import ir
from llvmlite.binding import get_host_cpu_name, llvm_version_info
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# reassoc: vectorize the reductions; contract: fused multiply-add. Not 'nnan'/'ninf':
# a diverging run must still see Inf/NaN in its loss.
FASTMATH = {"reassoc", "contract", "nsz"}
FLUSH_ROWS = 4096  # multiple of 4
# Software prefetch, for short rows only. The kernel computes about as fast as memory
# delivers, so the hardware prefetcher alone leaves gaps; asking for the rows ~4 KB ahead
# took d=100 from ~75 % to ~98 % of the read floor. With long rows (a group of 4 rows
# over PREFETCH_MAX_GROUP bytes) the burst of prefetches jams the line-fill buffers and
# costs ~10 %, while the hardware prefetcher already follows long rows well.
PREFETCH_AHEAD_BYTES = 4096
PREFETCH_MAX_GROUP = 4096
# The order of a group's four dot products depends on the CPU. On the Intel cores the
# kernel was tuned on, the four dots run in one loop (four interleaved streams) and the
# prefetch above pays. On AMD Zen ("znver*"), four interleaved streams read at about half
# the rate of one (measured on Zen 4: a one-row dot 26 GB/s, the four-row loop 9-16 GB/s,
# a plain read 25-28), so there the dots run one row after another, one sequential stream,
# and without the prefetches, which cost there (d=100: 14 GB/s with, 18-19 without).
SEQUENTIAL_DOTS = get_host_cpu_name().startswith("znver")


# The intrinsic's name is mangled by its pointer type: i8* while LLVM had typed pointers.
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_version_info[0] >= 16 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, row, index):
    """Hint the CPU to bring row[index]'s cache line into L1 (never faults)."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        byte_ptr = ir.IntType(8).as_pointer()
        address = builder.bitcast(builder.gep(array.data, [args[1]]), byte_ptr)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), _PREFETCH_NAME)
        # read, locality 3 (keep in all levels), data cache
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(row, index), codegen


@njit(fastmath=FASTMATH, inline="always")
def _dot(x, w):
    s = w.dtype.type(0)
    for j in range(w.size):
        s += x[j] * w[j]
    return s


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def _pass(X, y, use_y, w, acc, out, sequential):
    """out += sum_i r_i x_i with r_i = x_i.w - y_i (or x_i.w without y); return sum r_i^2 / 2.

    w and acc have X's dtype; out is float64. acc is scratch (overwritten). `sequential`
    chooses the order of a group's dot products (SEQUENTIAL_DOTS says why).
    """
    n, d = X.shape
    zero = w.dtype.type(0)
    loss = 0.0
    row_bytes = max(1, d * X.itemsize)
    prefetch = 4 * row_bytes <= PREFETCH_MAX_GROUP and not sequential
    ahead = max(4, PREFETCH_AHEAD_BYTES // row_bytes)
    line = max(1, 64 // X.itemsize)
    for lo in range(0, n, FLUSH_ROWS):
        hi = min(n, lo + FLUSH_ROWS)
        for j in range(d):
            acc[j] = zero
        i = lo
        while i + 4 <= hi:
            if prefetch and i + ahead + 4 <= n:
                for k in range(4):
                    later = X[i + ahead + k]
                    for j in range(0, d, line):
                        _prefetch(later, j)
            x0 = X[i]
            x1 = X[i + 1]
            x2 = X[i + 2]
            x3 = X[i + 3]
            if sequential:
                r0 = _dot(x0, w)
                r1 = _dot(x1, w)
                r2 = _dot(x2, w)
                r3 = _dot(x3, w)
            else:
                r0 = zero
                r1 = zero
                r2 = zero
                r3 = zero
                for j in range(d):
                    wj = w[j]
                    r0 += x0[j] * wj
                    r1 += x1[j] * wj
                    r2 += x2[j] * wj
                    r3 += x3[j] * wj
            if use_y:
                r0 -= y[i]
                r1 -= y[i + 1]
                r2 -= y[i + 2]
                r3 -= y[i + 3]
                loss += float(r0 * r0 + r1 * r1 + r2 * r2 + r3 * r3)
            for j in range(d):
                acc[j] += r0 * x0[j] + r1 * x1[j] + r2 * x2[j] + r3 * x3[j]
            i += 4
        while i < hi:  # the last 0-3 rows of the block
            x0 = X[i]
            r0 = _dot(x0, w)
            if use_y:
                r0 -= y[i]
                loss += float(r0 * r0)
            for j in range(d):
                acc[j] += r0 * x0[j]
            i += 1
        for j in range(d):
            out[j] += acc[j]
    return 0.5 * loss


def warm_up(dtype, contiguous=True):
    """Compile (or load from the cache) the kernel for `dtype`; return the seconds it took."""
    started = time.perf_counter()
    X = np.zeros((5, 2), dtype=dtype)
    if not contiguous:
        X = np.zeros((5, 4), dtype=dtype)[:, ::2]
    w, acc = np.zeros(2, dtype=dtype), np.zeros(2, dtype=dtype)
    _pass(X, np.zeros(5, dtype=dtype), True, w, acc, np.zeros(2), SEQUENTIAL_DOTS)
    return time.perf_counter() - started


def gradient_pass(X, y, w, acc, out):
    """out[:] = sum_i (x_i.w - y_i) x_i (y may be None: then r_i = x_i.w); return the loss."""
    out[:] = 0.0
    if y is None:
        return _pass(X, _NO_Y[X.dtype.char], False, w, acc, out, SEQUENTIAL_DOTS)
    return _pass(X, y, True, w, acc, out, SEQUENTIAL_DOTS)


# A stand-in y for the power iteration's passes, made once (same C layout as a real y, so
# no extra specialization is compiled).
_NO_Y = {np.dtype(t).char: np.zeros(0, dtype=t) for t in (np.float32, np.float64)}
