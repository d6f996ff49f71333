"""Reading shards: validation messages, layouts and dtypes, and reading only one's rows."""

import io

import h5py
import numpy as np
import pytest

from conftest import write_h5
from mpigd.data import block_range, check_finite, inspect, open_input, read_shard
from mpigd.errors import MpigdError


class RecordingFile(io.RawIOBase):
    """A real file whose reads are logged (offset, length): what HDF5 actually fetched."""

    def __init__(self, path):
        self._f = open(path, "rb")
        self.reads = []

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def readinto(self, buffer):
        start = self._f.tell()
        n = self._f.readinto(buffer)
        self.reads.append((start, n))
        return n

    def close(self):
        self._f.close()
        super().close()


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_each_rank_reads_only_its_own_rows(tmp_path, ranks):
    n, d = 4000, 50  # X is 1.6 MB; a shard 400-800 KB
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    path = write_h5(tmp_path / "d.h5", X, y)
    with h5py.File(path, "r") as f:
        x_start = f["X"].id.get_offset()
        y_start = f["y"].id.get_offset()
    for rank in range(ranks):
        lo, hi = block_range(n, ranks, rank)
        recorder = RecordingFile(path)
        with h5py.File(recorder, "r") as f:
            info = inspect(f, "X", "y")
            recorder.reads.clear()  # metadata read while opening is not data
            Xs, ys = read_shard(f, info, lo, hi, np.float64)
        np.testing.assert_array_equal(Xs, X[lo:hi])
        np.testing.assert_array_equal(ys, y[lo:hi])
        x_lo, x_hi = x_start + lo * d * 8, x_start + hi * d * 8
        y_lo, y_hi = y_start + lo * 8, y_start + hi * 8
        data_bytes = 0
        for start, length in recorder.reads:
            in_x = x_lo <= start and start + length <= x_hi
            in_y = y_lo <= start and start + length <= y_hi
            outside_data = start + length <= x_start or start >= x_start + n * d * 8
            outside_data &= start + length <= y_start or start >= y_start + n * 8
            assert in_x or in_y or outside_data, f"rank {rank} read another rank's bytes {start}+{length}"
            data_bytes += length if (in_x or in_y) else 0
        assert data_bytes == (hi - lo) * (d + 1) * 8


def test_chunked_gzip_and_column_y_and_float32(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1000, 8)).astype(np.float32)
    y = rng.standard_normal((1000, 1)).astype(np.float32)
    path = write_h5(tmp_path / "z.h5", X, y, chunks=True, compression="gzip")
    with open_input(path) as f:
        info = inspect(f, "X", "y")
        assert info.y_shape == (1000, 1) and info.x_dtype == "float32"
        X64, y64 = read_shard(f, info, 123, 777, np.float64)
    assert X64.dtype == np.float64 and y64.shape == (654,)
    np.testing.assert_array_equal(X64, X[123:777].astype(np.float64))
    np.testing.assert_array_equal(y64, y[123:777, 0].astype(np.float64))


def _error(path, x="X", y="y"):
    with pytest.raises(MpigdError) as info:
        with open_input(path) as f:
            inspect(f, x, y)
    return str(info.value)


def test_missing_file_says_how_to_make_one(tmp_path):
    message = _error(str(tmp_path / "nope.h5"))
    assert "does not exist" in message and "mpigd generate" in message


def test_not_hdf5(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(bytes(range(256)))  # no kind sniff knows: HDF5's own words
    assert "not a readable HDF5 file" in _error(str(path))


def test_text_file_is_not_hdf5_and_the_hint_never_overwrites_it(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("hello")
    message = _error(str(path))
    assert "is a text file, not HDF5" in message and "python -m mpigd import" in message
    assert f"--out {tmp_path / 'text'}-table.h5" in message


def test_missing_dataset_lists_what_exists(tmp_path):
    path = write_h5(tmp_path / "d.h5", np.ones((4, 2)), np.ones(4), x_name="features", y_name="price")
    message = _error(path)
    assert "'X' not found" in message and "features" in message and "price" in message
    assert "--x-dataset" in message


@pytest.mark.parametrize("X,y,expected", [
    (np.ones(4), np.ones(4), "must be 2-D"),
    (np.ones((4, 2)), np.ones(5), "has 5 rows but X"),
    (np.ones((4, 2)), np.ones((4, 2)), "must have shape (n,) or (n, 1)"),
    (np.ones((4, 0)), np.ones(4), "zero features"),
    (np.array([[b"a"]] * 4), np.ones(4), "not a number type"),
])
def test_shape_and_dtype_errors(tmp_path, X, y, expected):
    assert expected in _error(write_h5(tmp_path / "d.h5", X, y))


def test_check_finite_names_global_rows():
    X, y = np.ones((100, 3)), np.ones(100)
    X[17, 1] = np.nan
    y[42] = np.inf
    with pytest.raises(MpigdError, match=r"X row 517, y row 542"):
        check_finite(X, y, first_row=500)
    check_finite(np.ones((3, 2)), np.ones(3), first_row=0)
