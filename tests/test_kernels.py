"""Every gradient kernel (blocked BLAS, fused numba) against a float64 numpy reference."""

import tracemalloc

import numpy as np
import pytest

from mpigd import objective
from mpigd.errors import MpigdError
from mpigd.objective import LeastSquaresShard, choose_kernel

pytest.importorskip("numba")  # the `test` extra installs it; without it only BLAS exists

KERNELS = ["blas", "numba"]
SHAPES = [(1, 1), (3, 1), (4, 1), (7, 5), (257, 1), (1000, 3), (4099, 100), (5001, 17), (9, 1000)]


# Each kernel once, and the fused one in both orders of its dot products, whichever this
# CPU's default (fused.SEQUENTIAL_DOTS) is: each must be right on every machine CI may run on.
KERNEL_CASES = [("blas", None), ("numba", False), ("numba", True)]
KERNEL_IDS = ["blas", "numba-interleaved-dots", "numba-sequential-dots"]


def use(kernel, sequential_dots, monkeypatch):
    """`kernel`, with the fused kernel's dot order set for this test (None: the default)."""
    if sequential_dots is not None:
        from mpigd import fused

        monkeypatch.setattr(fused, "SEQUENTIAL_DOTS", sequential_dots)
    return kernel


def reference(X, y, w):
    X, y = X.astype(np.float64), y.astype(np.float64)
    r = X @ w - y
    return X.T @ r, 0.5 * float(r @ r), np.abs(X).T @ np.abs(r)


def check(shard, X, y, w, rtol):
    g = np.full(X.shape[1], np.nan)
    loss = shard.gradient(w, g)
    g_ref, loss_ref, scale = reference(X, y, w)
    assert np.all(np.abs(g - g_ref) <= rtol * (scale + 1e-300)), np.abs(g - g_ref).max()
    assert loss == pytest.approx(loss_ref, rel=rtol)
    v = np.empty(X.shape[1])
    shard.normal_product(w, v)
    Xd = X.astype(np.float64)
    np.testing.assert_allclose(v, Xd.T @ (Xd @ w), rtol=rtol * 10, atol=rtol * float(np.abs(v).max() + 1))


@pytest.mark.parametrize("kernel,sequential_dots", KERNEL_CASES, ids=KERNEL_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_kernel_matches_reference(kernel, sequential_dots, shape, dtype, rtol, monkeypatch):
    kernel = use(kernel, sequential_dots, monkeypatch)
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    X = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(shape[0]).astype(dtype)
    w = rng.standard_normal(shape[1])
    shard = LeastSquaresShard(X, y, kernel=kernel)
    assert shard.kernel == kernel
    check(shard, X, y, w, rtol)


@pytest.mark.parametrize("kernel,sequential_dots", KERNEL_CASES, ids=KERNEL_IDS)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_non_contiguous_input(kernel, sequential_dots, dtype, rtol, monkeypatch):
    kernel = use(kernel, sequential_dots, monkeypatch)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((301, 24)).astype(dtype)[:, ::3]   # strided columns
    y = rng.standard_normal(301).astype(dtype)
    assert not X.flags.c_contiguous
    check(LeastSquaresShard(X, y, kernel=kernel), X, y, rng.standard_normal(8), rtol)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rows_fewer_than_a_block_and_empty(kernel):
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((2, 6)), rng.standard_normal(2)
    check(LeastSquaresShard(X, y, block_bytes=1 << 20, kernel=kernel), X, y, rng.standard_normal(6), 1e-12)
    g = np.full(6, 7.0)
    assert LeastSquaresShard(np.empty((0, 6)), np.empty(0), kernel=kernel).gradient(np.ones(6), g) == 0.0
    assert not g.any()


def test_float32_kernel_is_accurate_over_many_rows():
    # float32 data, 200k rows: the flushed float32 sums must stay close to float64 sums.
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200_000, 8)).astype(np.float32)
    y = rng.standard_normal(200_000).astype(np.float32)
    check(LeastSquaresShard(X, y, kernel="numba"), X, y, rng.standard_normal(8), 2e-4)


def test_kernels_agree_with_each_other():
    rng = np.random.default_rng(6)
    X, y, w = rng.standard_normal((10_001, 50)), rng.standard_normal(10_001), rng.standard_normal(50)
    g = {k: np.empty(50) for k in KERNELS}
    loss = {k: LeastSquaresShard(X, y, kernel=k).gradient(w, g[k]) for k in KERNELS}
    np.testing.assert_allclose(g["numba"], g["blas"], rtol=1e-11, atol=1e-9)
    assert loss["numba"] == pytest.approx(loss["blas"], rel=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_hot_loop_allocates_nothing_shard_sized(kernel):
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((50_000, 40)), rng.standard_normal(50_000)   # 16 MB shard
    shard = LeastSquaresShard(X, y, kernel=kernel)
    w, g = rng.standard_normal(40), np.empty(40)
    shard.gradient(w, g)  # first call outside: lazy imports, caches
    tracemalloc.start()
    try:
        for _ in range(5):
            shard.gradient(w, g)
            shard.normal_product(w, g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10, f"{peak} bytes allocated by the hot loop"


def test_kernel_choice(monkeypatch):
    monkeypatch.setenv("MPIGD_KERNEL", "blas")
    assert choose_kernel(1 << 40) == "blas"
    monkeypatch.setenv("MPIGD_KERNEL", "numba")
    assert choose_kernel(10) == "numba"
    monkeypatch.setenv("MPIGD_KERNEL", "auto")
    assert choose_kernel(objective.NUMBA_MIN_BYTES - 1) == "blas"
    assert choose_kernel(objective.NUMBA_MIN_BYTES) == "numba"
    monkeypatch.delenv("MPIGD_KERNEL")
    assert choose_kernel(10) == "blas"
    monkeypatch.setenv("MPIGD_KERNEL", "fortran")
    with pytest.raises(MpigdError, match="MPIGD_KERNEL must be one of"):
        choose_kernel(10)


def test_numba_requested_but_missing(monkeypatch):
    monkeypatch.setattr(objective, "numba_available", lambda: False)
    monkeypatch.setenv("MPIGD_KERNEL", "numba")
    with pytest.raises(MpigdError, match=r"pip install '\.\[fast\]'"):
        choose_kernel(10)
    monkeypatch.setenv("MPIGD_KERNEL", "auto")
    assert choose_kernel(1 << 40) == "blas"   # falls back without numba
