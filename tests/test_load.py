"""The load's fused pass (data.load_shard): the rows, the NaN/Inf check and the checksum
of a block-by-block read equal what separate passes over the whole shard give."""

import h5py
import numpy as np
import pytest

from mpigd import checkpoint, data, scan
from mpigd.errors import MpigdError


def _reference_checksum(X, y, lo):
    with np.errstate(over="ignore"):
        return int(checkpoint._weighted_sum(X.reshape(-1), lo * X.shape[1])
                   + checkpoint._weighted_sum(y, lo) * np.uint64(3))


def _write(path, X, y, **kw):
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X, **kw)
        f.create_dataset("y", data=y)


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 5000, 3 * 1024 + 7])
def test_weighted_sum_equals_the_checkpoint_definition(size):
    rng = np.random.default_rng(size)
    for dtype in (np.float64, np.float32):
        values = rng.standard_normal(size).astype(dtype)
        with np.errstate(over="ignore"):
            assert scan.weighted_sum(values, 12345) == checkpoint._weighted_sum(values, 12345)


@pytest.mark.parametrize("stored,computed,chunks", [
    (np.float64, np.float64, None), (np.float32, np.float64, None),
    (np.float64, np.float32, (7, 13)), (np.int32, np.float64, (64, 13))])
def test_load_shard_equals_separate_passes(tmp_path, monkeypatch, stored, computed, chunks):
    monkeypatch.setattr(data, "_BLOCK_BYTES", 4096)  # many blocks, a short last one
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((1001, 13)) * 100).astype(stored)
    y = rng.standard_normal(1001).astype(stored)
    path = tmp_path / "d.h5"
    _write(path, X, y, chunks=chunks)
    with h5py.File(path, "r") as f:
        info = data.inspect(f, "X", "y")
        for lo, hi in ((0, 1001), (333, 998), (5, 6)):
            Xs, ys, local = data.load_shard(f, info, lo, hi, np.dtype(computed))
            np.testing.assert_array_equal(Xs, X[lo:hi].astype(computed))
            np.testing.assert_array_equal(ys, y[lo:hi].astype(computed))
            assert Xs.flags.c_contiguous and Xs.dtype == computed
            assert local == _reference_checksum(Xs, ys, lo)


def test_checksum_is_partition_independent(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_BLOCK_BYTES", 2048)
    rng = np.random.default_rng(2)
    _write(tmp_path / "d.h5", rng.standard_normal((500, 9)), rng.standard_normal(500))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        info = data.inspect(f, "X", "y")
        whole = data.load_shard(f, info, 0, 500, np.float64)[2]
        for parts in (2, 3, 7):
            locals_ = [data.load_shard(f, info, *data.block_range(500, parts, k), np.float64)[2]
                       for k in range(parts)]
            assert sum(locals_) % 2**64 == whole


@pytest.mark.parametrize("where", ["X", "y"])
def test_a_bad_value_in_a_later_block_names_its_global_row(tmp_path, monkeypatch, where):
    monkeypatch.setattr(data, "_BLOCK_BYTES", 1024)
    X, y = np.ones((400, 8)), np.ones(400)
    if where == "X":
        X[377, 5] = np.inf
    else:
        y[377] = np.nan
    _write(tmp_path / "d.h5", X, y)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        info = data.inspect(f, "X", "y")
        with pytest.raises(MpigdError, match=f"NaN or Inf in the data at {where} row 377"):
            data.load_shard(f, info, 100, 400, np.float64)
        data.load_shard(f, info, 0, 377, np.float64)  # the rows before it are clean


def test_finite_values_whose_sum_overflows_are_not_reported():
    block = np.full((4, 3), 1e308)
    with np.errstate(over="ignore"):
        assert not np.isfinite(block.sum())
    assert scan.all_finite(block)
    block[2, 1] = np.nan
    assert not scan.all_finite(block)


def test_read_shard_reads_bad_values_without_judging_them(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_BLOCK_BYTES", 1024)
    X = np.arange(600.0).reshape(200, 3)
    X[150, 1] = np.nan
    _write(tmp_path / "d.h5", X, np.ones(200))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        Xs, ys = data.read_shard(f, data.inspect(f, "X", "y"), 10, 200, np.float64)
    np.testing.assert_array_equal(Xs, X[10:])
