"""The map-step kernel against a float64 numpy reference."""

import numpy as np
import pytest

from mpigd.objective import LeastSquaresShard


def reference(X, y, w):
    X, y = X.astype(np.float64), y.astype(np.float64)
    r = X @ w - y
    return X.T @ r, 0.5 * float(r @ r)


SHAPES = [(1, 1), (5, 1), (3, 7), (100, 10), (1000, 1), (2500, 33), (4099, 100), (300, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_gradient_and_loss_match_reference(shape, dtype, rtol):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    X = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(shape[0]).astype(dtype)
    w = rng.standard_normal(shape[1])
    shard = LeastSquaresShard(X, y)
    g = np.empty(shape[1])
    loss = shard.gradient(w, g)
    g_ref, loss_ref = reference(X, y, w)
    scale = np.abs(X.astype(np.float64)).T @ np.abs(X.astype(np.float64) @ w - y) + 1e-300
    assert np.all(np.abs(g - g_ref) <= rtol * scale * 4)
    assert loss == pytest.approx(loss_ref, rel=rtol * 10)


@pytest.mark.parametrize("block_bytes", [8, 1000, 1 << 30])
def test_block_size_does_not_change_the_result(block_bytes):
    rng = np.random.default_rng(1)
    X, y, w = rng.standard_normal((777, 13)), rng.standard_normal(777), rng.standard_normal(13)
    g = np.empty(13)
    loss = LeastSquaresShard(X, y, block_bytes=block_bytes).gradient(w, g)
    g_ref, loss_ref = reference(X, y, w)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(loss_ref, rel=1e-12)


def test_non_contiguous_input():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((500, 40))
    X = base[:, ::2]  # strided view: not C-contiguous
    y = rng.standard_normal(500)
    w = rng.standard_normal(20)
    g = np.empty(20)
    loss = LeastSquaresShard(X, y).gradient(w, g)
    g_ref, loss_ref = reference(np.ascontiguousarray(X), y, w)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12)
    assert loss == pytest.approx(loss_ref, rel=1e-12)


def test_empty_shard_gives_zero():
    shard = LeastSquaresShard(np.empty((0, 4)), np.empty(0))
    g = np.full(4, 7.0)
    assert shard.gradient(np.ones(4), g) == 0.0
    assert not g.any()


def test_normal_product_is_xtx_v():
    rng = np.random.default_rng(3)
    X, v = rng.standard_normal((321, 9)), rng.standard_normal(9)
    out = np.empty(9)
    LeastSquaresShard(X, np.zeros(321)).normal_product(v, out)
    np.testing.assert_allclose(out, X.T @ (X @ v), rtol=1e-12)
