"""The load's one-pass paths: numba's scan (scan_fused) and rows mapped from the file
(rawread) give the same rows, the same NaN/Inf verdict and the same checksum as the numpy
scan of an HDF5 read, whatever the layout, byte order, type or partition."""

import h5py
import numpy as np
import pytest

from mpigd import checkpoint, data, rawread, scan
from mpigd.errors import MpigdError

pytest.importorskip("numba")  # the `test` extra installs it; without it only numpy's scan runs
from mpigd import scan_fused  # noqa: E402


def _reference_checksum(X, y, lo):
    with np.errstate(over="ignore"):
        return int(checkpoint._weighted_sum(X.reshape(-1), lo * X.shape[1])
                   + checkpoint._weighted_sum(y, lo) * np.uint64(3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("size", [0, 1, 5, 255, 256, 257, 1000, 70001])
def test_fused_sums_equal_the_checkpoint_definition(dtype, size):
    rng = np.random.default_rng(size)
    values = (rng.standard_normal(size) * 1e3).astype(dtype)
    for first in (0, 7, 123_456_789_012):
        with np.errstate(over="ignore"):
            expected = checkpoint._weighted_sum(values, first)
        assert scan.checked_sum(values, first, fast=True) == (True, expected)
        copy = np.full_like(values, -1.0)
        assert scan.checked_copy(values, copy, first, fast=True) == (True, expected)
        np.testing.assert_array_equal(copy, values)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_fused_scan_flags_every_bad_value_and_no_finite_one(dtype, bad):
    values = np.linspace(-5, 5, 1000).astype(dtype)
    for where in (0, 255, 256, 511, 999):  # first, lane ends, a row start, the tail
        spoiled = values.copy()
        spoiled[where] = bad
        assert scan.checked_sum(spoiled, 0, fast=True)[0] is False
        assert scan.checked_copy(spoiled, np.empty_like(spoiled), 0, fast=True)[0] is False
    extreme = values.copy()
    extreme[::3] = np.finfo(dtype).max  # finite, and their float sum overflows
    extreme[1::3] = -np.finfo(dtype).tiny / 2  # subnormal
    assert scan.checked_sum(extreme, 0, fast=True)[0] is True


def test_sums_refuse_a_destination_of_another_size():
    with pytest.raises(ValueError):
        scan_fused.sums(np.ones(10), np.empty(9))


def _write(path, X, y, userblock=0, **kw):
    with h5py.File(path, "w", userblock_size=userblock) as f:
        f.create_dataset("X", data=X, **kw)
        f.create_dataset("y", data=y)


LAYOUTS = {  # name: (stored dtype, computed dtype, create_dataset options, userblock, raw?)
    "contiguous f64": (np.float64, np.float64, {}, 0, True),
    "contiguous f32": (np.float32, np.float32, {}, 0, True),
    "userblock": (np.float64, np.float64, {}, 1024, True),
    "big-endian": (">f8", np.float64, {}, 0, False),
    "f32 read as f64": (np.float32, np.float64, {}, 0, False),
    "chunked": (np.float64, np.float64, {"chunks": (7, 13)}, 0, False),
    "compressed": (np.float32, np.float32, {"chunks": (64, 13), "compression": "gzip"}, 0, False),
}


@pytest.mark.parametrize("fast", [False, True], ids=["numpy", "numba"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_path_gives_the_same_rows_and_checksum(tmp_path, monkeypatch, layout, fast):
    stored, computed, options, userblock, raw = LAYOUTS[layout]
    for name in ("_BLOCK_BYTES", "_SCAN_PART_BYTES", "_FAST_PART_BYTES", "_MAPPED_PART_BYTES"):
        monkeypatch.setattr(data, name, 4096)  # many parts, a short last one
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((1001, 13)) * 100).astype(stored)
    y = rng.standard_normal(1001).astype(stored)
    path = tmp_path / "d.h5"
    _write(path, X, y, userblock, **options)
    with h5py.File(path, "r") as f:
        assert (rawread.source(f, f["X"], np.dtype(computed)) is not None) == raw
        info = data.inspect(f, "X", "y")
        for lo, hi in ((0, 1001), (333, 998), (5, 6)):
            Xs, ys, local = data.load_shard(f, info, lo, hi, np.dtype(computed), fast)
            np.testing.assert_array_equal(Xs, X[lo:hi].astype(computed))
            np.testing.assert_array_equal(ys, y[lo:hi].astype(computed))
            assert Xs.flags.c_contiguous and Xs.dtype == computed
            assert local == _reference_checksum(Xs, ys, lo)


@pytest.mark.parametrize("fast", [False, True], ids=["numpy", "numba"])
def test_a_bad_value_in_a_mapped_file_names_its_global_row(tmp_path, monkeypatch, fast):
    for name in ("_SCAN_PART_BYTES", "_FAST_PART_BYTES", "_MAPPED_PART_BYTES"):
        monkeypatch.setattr(data, name, 1024)
    X = np.ones((400, 8))
    X[377, 5] = np.nan
    _write(tmp_path / "d.h5", X, np.ones(400))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        info = data.inspect(f, "X", "y")
        with pytest.raises(MpigdError, match="NaN or Inf in the data at X row 377"):
            data.load_shard(f, info, 100, 400, np.float64, fast)
        data.load_shard(f, info, 0, 377, np.float64, fast)  # the rows before it are clean


def test_a_file_cut_short_is_an_error_not_a_crash(tmp_path):
    """Mapping past a file's end would end the process with SIGBUS: it is refused first."""
    path = tmp_path / "d.h5"
    _write(path, np.ones((1000, 10)), np.ones(1000))
    with h5py.File(path, "r") as f:
        source = rawread.source(f, f["X"], np.float64)
    with open(path, "r+b") as fh:
        fh.truncate(source[0].offset + 500 * 80)  # half of X's bytes remain
    with pytest.raises(MpigdError, match="ends before its data set does"):
        next(rawread.parts(source, 0, (1000, 10), np.float64, 100))
    for _, rows in rawread.parts(source, 0, (400, 10), np.float64, 64):  # what is there reads
        np.testing.assert_array_equal(rows, 1.0)


LOAD_AND_REPORT_RSS = """
import sys, h5py, numpy as np
from mpigd import data, scan


def status(field):  # this process image's own figures: ru_maxrss would carry the forking
    # parent's peak across exec (pytest's, late in the suite: hundreds of MB)
    return next(int(line.split()[1]) << 10 for line in open("/proc/self/status")
                if line.startswith(field + ":"))


scan.warm_up()
before = status("VmRSS")  # not the peak so far: compiling may have peaked higher
with h5py.File(sys.argv[1], "r") as f:
    info = data.inspect(f, "X", "y")
    X, y, _ = data.load_shard(f, info, 0, info.rows, np.float64, sys.argv[2] == "fast")
print(status("VmHWM") - before, X.nbytes + y.nbytes)
"""


@pytest.mark.parametrize("mode", ["numpy", "fast"])
def test_the_mapped_file_does_not_add_to_the_resident_set(tmp_path, mode):
    """Mapped pages count in RSS: the load gives them back part by part, so the shard is
    all it adds (a mapping kept whole would double the peak)."""
    import subprocess
    import sys

    path = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    _write(path, rng.standard_normal((200_000, 63)), rng.standard_normal(200_000))  # 102 MB
    out = subprocess.run([sys.executable, "-c", LOAD_AND_REPORT_RSS, str(path), mode],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    growth, shard = map(int, out.split())
    # Most of the shard at least (memory a compile freed may be reused), and not a second
    # copy of it (a mapping kept whole: ~2x). The slack: a first compile, with numba's
    # cache empty, leaves ~20 MB more behind than loading the cache does.
    assert 0.9 * shard <= growth <= 1.1 * shard + (32 << 20), (growth, shard)


def _virtual(tmp_path, splits, chunked=False, gap=False, sliced=False):
    """A virtual X over part files of `splits` rows each (as a parallel generate writes)."""
    rng = np.random.default_rng(4)
    rows, d = sum(splits), 11
    X, y = rng.standard_normal((rows, d)), rng.standard_normal(rows)
    layout = h5py.VirtualLayout((rows, d), np.float64)
    lo = 0
    (tmp_path / "parts").mkdir()
    for k, n in enumerate(splits):
        name = f"parts/p{k}.h5"
        with h5py.File(tmp_path / name, "w") as part:
            # sliced: the part holds 3 extra rows first, and the mapping skips them
            stored = np.vstack([np.zeros((3, d)), X[lo : lo + n]]) if sliced else X[lo : lo + n]
            part.create_dataset("X", data=stored, chunks=(1, d) if chunked else None)
        source = h5py.VirtualSource(name, "X", shape=stored.shape)
        if not (gap and k == 1):
            layout[lo : lo + n] = source[3:] if sliced else source
        lo += n
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_virtual_dataset("X", layout, fillvalue=0.0)
        f.create_dataset("y", data=y)
    if gap:
        X[splits[0] : splits[0] + splits[1]] = 0.0
    return tmp_path / "v.h5", X, y


@pytest.mark.parametrize("fast", [False, True], ids=["numpy", "numba"])
@pytest.mark.parametrize("case", ["parts", "sliced", "chunked parts", "a gap"])
def test_a_virtual_dataset_of_contiguous_parts_is_mapped_part_by_part(tmp_path, monkeypatch,
                                                                      case, fast):
    monkeypatch.setattr(data, "_MAPPED_PART_BYTES", 1000)  # parts that straddle the pieces
    monkeypatch.setattr(data, "_SCAN_PART_BYTES", 1000)
    path, X, y = _virtual(tmp_path, [300, 1, 250, 449], chunked=case == "chunked parts",
                          gap=case == "a gap", sliced=case == "sliced")
    with h5py.File(path, "r") as f:
        pieces = rawread.source(f, f["X"], np.float64)
        assert (pieces is not None) == (case in ("parts", "sliced"))
        if pieces:
            assert [(p.lo, p.hi) for p in pieces] == [(0, 300), (300, 301), (301, 551), (551, 1000)]
        info = data.inspect(f, "X", "y")
        for lo, hi in ((0, 1000), (299, 552), (300, 301), (700, 1000)):
            Xs, ys, local = data.load_shard(f, info, lo, hi, np.float64, fast)
            np.testing.assert_array_equal(Xs, X[lo:hi])
            assert local == _reference_checksum(Xs, ys, lo)
