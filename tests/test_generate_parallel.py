"""`mpirun -n P python -m mpigd generate`: the serial command's values, every rank its blocks.

With `--parallel-io parts` (the default without an MPI-enabled h5py) the ranks write part
files that the named file joins as HDF5 virtual datasets; the file then trains and resumes
like any other, and a failure on any rank leaves neither the file nor any part behind. With
an MPI-enabled h5py (`.ci/run`'s third venv, MPIGD_EXPECT_MPIO=1) the ranks write the one
file with parallel HDF5 (`mpio`), and these tests check that path too; without it they
check that `--parallel-io mpio` is refused with the reason.
"""

import glob
import os

import h5py
import numpy as np
import pytest

from conftest import mpirun, python_m
from mpigd import synthetic

# 1000 features: blocks of 4194 rows; 10485 rows are 2.5 blocks (the last one partial).
FEATURES, ROWS = 1000, 10485
MPIO = bool(h5py.get_config().mpi)
# the parallel-I/O modes this h5py can write; "mpio" only where it was built with MPI
LAYOUTS = ["parts", "mpio"] if MPIO else ["parts"]


def test_the_h5py_is_the_one_this_run_expects():
    # .ci/run's parallel-HDF5 step sets MPIGD_EXPECT_MPIO=1: it must not test the VDS path only
    assert MPIO == (os.environ.get("MPIGD_EXPECT_MPIO") == "1"), h5py.get_config().mpi


def _contents(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ("X", "y", "w_true")}, dict(f.attrs), \
            f["X"].is_virtual


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "serial.h5"
    proc = python_m("generate", "--rows", ROWS, "--features", FEATURES, "--seed", 5,
                    "--dtype", "float32", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return _contents(out)


@pytest.mark.parametrize("layout", ["auto", *LAYOUTS])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_same_values_as_the_serial_command(serial, tmp_path, ranks, layout):
    out = tmp_path / "data.h5"
    run = mpirun(ranks, "generate", "--rows", ROWS, "--features", FEATURES, "--seed", 5,
                 "--dtype", "float32", "--out", out, "--parallel-io", layout)
    assert run.returncode == 0, run
    assert run.stdout.count("mpigd: wrote") == 1  # rank 0 speaks
    data, attrs, virtual = _contents(out)
    reference, reference_attrs, _ = serial
    for name in reference:
        assert data[name].dtype == np.float32
        assert data[name].tobytes() == reference[name].tobytes(), name
    assert {k: v for k, v in attrs.items() if k != "parts"} == reference_attrs
    joined = ranks > 1 and (layout == "parts" or (layout == "auto" and not MPIO))
    assert virtual == joined
    parts = glob.glob(str(tmp_path / ".data.h5.parts-*" / "part-*.h5"))
    assert len(parts) == (min(ranks, 3) if joined else 0)  # a part per rank (3 blocks)
    left = {"data.h5", *(os.path.basename(os.path.dirname(p)) for p in parts)}
    assert set(os.listdir(tmp_path)) == left  # no partial file, at most one parts directory


def test_parallel_hdf5_writes_one_plain_file_or_says_why_not(tmp_path):
    run = mpirun(2, "generate", "--rows", 100, "--features", 3, "--out", tmp_path / "d.h5",
                 "--parallel-io", "mpio")
    if MPIO:
        assert run.returncode == 0, run
        assert os.listdir(tmp_path) == ["d.h5"] and not _contents(tmp_path / "d.h5")[2]
    else:
        assert run.returncode == 2 and run.stderr.count("mpigd: error") == 1, run
        assert "h5py was built without MPI" in run.stderr and "--parallel-io parts" in run.stderr
        assert os.listdir(tmp_path) == []


def test_parallel_hdf5_does_not_compress_and_says_so(tmp_path):
    run = mpirun(2, "generate", "--rows", 100, "--features", 3, "--out", tmp_path / "d.h5",
                 "--parallel-io", "mpio", "--compression", "gzip")
    assert run.returncode == 2 and run.stderr.count("mpigd: error") == 1, run
    expected = "drop --compression gzip" if MPIO else "h5py was built without MPI"
    assert expected in run.stderr and os.listdir(tmp_path) == []


def test_more_ranks_than_blocks_and_regenerating_replaces_the_parts(tmp_path):
    out = tmp_path / "small.h5"
    args = ("generate", "--rows", 1001, "--features", 7, "--seed", 2, "--out", out,
            "--parallel-io", "parts")
    for _ in range(2):
        run = mpirun(3, *args)  # one block, the last rank's (split_rows): ranks 0 and 1 write nothing
        assert run.returncode == 0, run
    assert len(glob.glob(str(tmp_path / ".small.h5.parts-*"))) == 1  # the old parts are gone
    X, y = synthetic.rows_between(1001, 7, 2, 0, 1001)
    data, _, virtual = _contents(out)
    assert virtual and data["X"].tobytes() == X.tobytes() and data["y"].tobytes() == y.tobytes()


@pytest.mark.parametrize("replacement", ["serial", "mpio"] if MPIO else ["serial"])
def test_a_plain_file_written_over_a_joined_one_removes_its_parts(tmp_path, replacement):
    out = tmp_path / "d.h5"
    args = ("generate", "--rows", 1001, "--features", 7, "--seed", 2, "--out", out)
    assert mpirun(2, *args, "--parallel-io", "parts").returncode == 0
    assert len(glob.glob(str(tmp_path / ".d.h5.parts-*"))) == 1
    if replacement == "serial":
        run = python_m(*args)
    else:
        run = mpirun(2, *args, "--parallel-io", "mpio")
    assert run.returncode == 0, run
    assert os.listdir(tmp_path) == ["d.h5"]  # the old parts would be a copy of the data
    X, y = synthetic.rows_between(1001, 7, 2, 0, 1001)
    data, _, virtual = _contents(out)
    assert not virtual and data["X"].tobytes() == X.tobytes()


def _cached_fraction(path) -> float:
    """The fraction of `path`'s pages in the page cache (mincore on a private mapping)."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # writable: from_buffer
    pages = -(-size // mmap.PAGESIZE)
    resident = (ctypes.c_ubyte * pages)()
    start = ctypes.c_char.from_buffer(mapping)
    libc = ctypes.CDLL(None, use_errno=True)
    failed = libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), resident)
    del start
    mapping.close()
    assert failed == 0, os.strerror(ctypes.get_errno())
    return sum(page & 1 for page in resident) / pages


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_replaced_files_cached_pages_are_dropped_first(tmp_path, ranks):
    # Replacing a file, the generator drops the old file's (and parts') cached pages before
    # it writes, so that the new file reuses them. Hard links keep the old files alive past
    # the replace, so their pages can still be counted afterwards.
    out = tmp_path / "data.h5"
    args = ("generate", "--rows", 2 * synthetic.block_rows(FEATURES), "--features", FEATURES,
            "--out", out, "--parallel-io", "parts")  # two blocks: a part per rank
    assert mpirun(ranks, *args).returncode == 0
    old = [str(out), *sorted(glob.glob(str(tmp_path / ".data.h5.parts-*" / "part-*.h5")))]
    assert len(old) == (1 if ranks == 1 else 3)
    kept = []
    for i, name in enumerate(old):
        with open(name, "rb") as f:
            f.read()  # every page cached
        kept.append(str(tmp_path / f"kept-{i}"))
        os.link(name, kept[-1])
    data_files = kept[1:] or kept  # a joined file's own pages are few: its parts hold the rows
    assert min(_cached_fraction(k) for k in data_files) > 0.9
    assert mpirun(ranks, *args).returncode == 0
    assert max(_cached_fraction(k) for k in data_files) < 0.1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_failure_on_one_rank_leaves_no_file_and_no_parts(tmp_path, layout):
    out = tmp_path / "failed.h5"
    run = mpirun(3, "generate", "--rows", ROWS, "--features", FEATURES, "--dtype", "float32",
                 "--out", out, "--parallel-io", layout, env={"MPIGD_INJECT_FAULT": "2:generate"})
    assert run.returncode != 0
    assert "fault injected" in run.stderr and run.stderr.count("fault injected") == 1, run
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("layout", ["auto", *LAYOUTS])
def test_out_dir_is_reused_under_mpirun(tmp_path, layout):
    args = ("generate", "--rows", 500, "--features", 3, "--out-dir", tmp_path,
            "--parallel-io", layout)
    first, again = mpirun(2, *args), mpirun(2, *args)
    assert first.returncode == 0 and again.returncode == 0, (first, again)
    path = str(tmp_path / synthetic.file_name(500, 3, 0))
    assert first.stdout.strip() == again.stdout.strip() == path
    joined = layout == "parts" or (layout == "auto" and not MPIO)
    assert len(glob.glob(str(tmp_path / ".*.parts-*"))) == (1 if joined else 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", ["blas", "numba"])  # numba: the load's scan is numba's too
def test_a_joined_file_trains_and_resumes_like_any_other(tmp_path, kernel, layout):
    # 2 blocks of 4194 rows (1000 features), so both ranks wrote a part
    if kernel == "numba":
        pytest.importorskip("numba")
    data, plain = tmp_path / "joined.h5", tmp_path / "plain.h5"
    args = ("--rows", 4300, "--features", FEATURES, "--seed", 1, "--dtype", "float32")
    assert mpirun(2, "generate", *args, "--out", data, "--parallel-io", layout).returncode == 0
    assert python_m("generate", *args, "--out", plain).returncode == 0
    fixed = ("--iters", 12, "--tol", 0, "--quiet", "--kernel", kernel)
    reference = mpirun(2, "--data", plain, *fixed, out=str(tmp_path / "reference"))
    crashed = mpirun(2, "--data", data, *fixed, "--checkpoint-every", 4,
                     out=str(tmp_path / "crashed"), env={"MPIGD_INJECT_FAULT": "1:loop:6"})
    assert reference.returncode == 0 and crashed.returncode != 0, (reference, crashed)
    resumed = mpirun(2, "--resume", tmp_path / "crashed")
    resumed.out = str(tmp_path / "crashed")
    assert resumed.returncode == 0, resumed
    assert resumed.result["resumed_from"] == 4
    assert resumed.weights[0].tobytes() == reference.weights[0].tobytes()


def test_a_joined_file_without_its_parts_is_refused_with_the_reason(tmp_path):
    data = tmp_path / "joined.h5"
    assert mpirun(2, "generate", "--rows", 300, "--features", 3, "--out", data,
                  "--parallel-io", "parts").returncode == 0
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.rename(data, moved / "joined.h5")  # without its parts directory
    run = mpirun(2, "--data", moved / "joined.h5", "--iters", 2, "--quiet", out=str(tmp_path / "r"))
    assert run.returncode == 2 and "copy or move the file together with" in run.stderr, run
    assert run.stderr.count("mpigd: error") == 1


# --- in-place data: --data synthetic:ROWSxFEATURES[:SEED] --------------------------------

@pytest.mark.parametrize("ranks", [1, 2, 3, 7])
def test_rows_generated_in_memory_are_the_files_rows(serial, ranks):
    from mpigd.data import block_range

    reference = serial[0]
    for rank in range(ranks):
        lo, hi = block_range(ROWS, ranks, rank)  # the trainer's partition: not block-aligned
        X, y = synthetic.rows_between(ROWS, FEATURES, 5, lo, hi, dtype="float32")
        assert X.tobytes() == reference["X"][lo:hi].tobytes()
        assert y.tobytes() == reference["y"][lo:hi].tobytes()


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "small.h5"
    assert python_m("generate", "--rows", 1003, "--features", 6, "--seed", 4, "--out",
                    out).returncode == 0
    return str(out)


FIXED = ("--iters", 30, "--tol", 0, "--lr", 2e-4, "--quiet")


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_in_place_data_train_as_the_file_does(small_file, tmp_path, ranks):
    from_file = mpirun(ranks, "--data", small_file, *FIXED, out=str(tmp_path / "file"))
    in_place = mpirun(ranks, "--data", "synthetic:1003x6:4", *FIXED, out=str(tmp_path / "mem"))
    assert from_file.returncode == 0 and in_place.returncode == 0, (from_file, in_place)
    assert in_place.weights[0].tobytes() == from_file.weights[0].tobytes()
    assert in_place.result["data"]["path"] == "synthetic:1003x6:4"
    assert in_place.result["config"]["data"] == "synthetic:1003x6:4"
    assert in_place.result["final_loss"] == from_file.result["final_loss"]


def test_in_place_data_resume_bitwise(tmp_path):
    reference = mpirun(3, "--data", "synthetic:1003x6:4", *FIXED, out=str(tmp_path / "reference"))
    out = str(tmp_path / "crashed")
    crashed = mpirun(3, "--data", "synthetic:1003x6:4", *FIXED, "--checkpoint-every", 5, out=out,
                     env={"MPIGD_INJECT_FAULT": "2:loop:12"})
    assert reference.returncode == 0 and crashed.returncode != 0, (reference, crashed)
    resumed = mpirun(3, "--resume", out)
    resumed.out = out
    assert resumed.returncode == 0, resumed
    assert resumed.result["resumed_from"] == 10
    assert resumed.weights[0].tobytes() == reference.weights[0].tobytes()


@pytest.mark.parametrize("spec", ["synthetic:10x", "synthetic:0x5", "synthetic:10x5:-1",
                                  "synthetic:axb"])
def test_a_bad_in_place_spec_is_one_clear_message(tmp_path, spec):
    run = mpirun(2, "--data", spec, "--iters", 2, "--quiet", out=str(tmp_path / "r"))
    assert run.returncode == 2 and run.stderr.count("mpigd: error") == 1, run
    assert "synthetic:ROWSxFEATURES[:SEED]" in run.stderr
