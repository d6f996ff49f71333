"""The data generator: contents, determinism, and memory that does not grow with the file."""

import hashlib
import subprocess
import sys
import time

import h5py
import numpy as np

from conftest import python_m
from mpigd import synthetic


def _datasets(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ("X", "y", "w_true")}, dict(f.attrs)


def test_generate_writes_a_consistent_problem(tmp_path):
    out = tmp_path / "g.h5"
    proc = python_m("generate", "--rows", 5000, "--features", 7, "--seed", 3, "--noise", 0.5,
                    "--out", out)
    assert proc.returncode == 0, proc.stderr
    data, attrs = _datasets(out)
    assert data["X"].shape == (5000, 7) and data["y"].shape == (5000,) and data["w_true"].shape == (7,)
    assert attrs["rows"] == 5000 and attrs["seed"] == 3 and attrs["noise"] == 0.5
    residual = data["y"] - data["X"] @ data["w_true"]
    assert 0.45 < residual.std() < 0.55  # the noise level it was asked for


def test_same_arguments_same_bytes(tmp_path):
    args = ["generate", "--rows", 3000, "--features", 5, "--seed", 9, "--dtype", "float32"]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for path in (a, b):
        assert python_m(*args, "--out", path).returncode == 0
    (da, _), (db, _) = _datasets(a), _datasets(b)
    for name in da:
        assert da[name].dtype == np.float32
        assert da[name].tobytes() == db[name].tobytes()
    assert a.read_bytes() == b.read_bytes()
    other = tmp_path / "c.h5"
    assert python_m(*args[:-4], "--seed", 10, "--dtype", "float32", "--out", other).returncode == 0
    assert _datasets(other)[0]["X"].tobytes() != da["X"].tobytes()


# The values of earlier versions, bitwise (sha256 of X, y, w_true; then of rows 7..n-3 made
# in memory): datasets, sweeps and checkpoints made before a change to the generator (such
# as reusing its block buffers) must still be the ones it makes now.
GOLDEN = [((10485, 1000, 5, "float32", None), "7283a61496fc6d58", "4a6dcc3cb98c81a5"),
          ((9000, 1, 3, "float64", None), "f3a6a6ad77659e4d", "0c135086455f97e1"),
          ((70001, 40, 0, "float64", None), "ad54da28a24a9e53", "e2b965e2f2b35e66"),
          ((5000, 30, 2, "float64", 100.0), "d978e4bec8dd730f", "7a17b6d4f1cb7905")]


def test_the_values_are_those_of_earlier_versions(tmp_path):
    for (rows, features, seed, dtype, condition), in_file, in_memory in GOLDEN:
        path = str(tmp_path / f"{rows}x{features}.h5")
        synthetic.generate(path, rows, features, seed, dtype=dtype, condition=condition)
        data, _ = _datasets(path)
        digest = hashlib.sha256(b"".join(data[n].tobytes() for n in ("X", "y", "w_true")))
        assert digest.hexdigest()[:16] == in_file, (rows, features)
        X, y = synthetic.rows_between(rows, features, seed, 7, rows - 3, dtype=dtype,
                                      condition=condition)
        assert hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()[:16] == in_memory


def test_compressed_layout(tmp_path):
    out = tmp_path / "z.h5"
    assert python_m("generate", "--rows", 2000, "--features", 4, "--compression", "gzip",
                    "--out", out).returncode == 0
    with h5py.File(out, "r") as f:
        assert f["X"].compression == "gzip" and f["X"].chunks is not None


def test_memory_stays_at_one_block(tmp_path):
    # 640 MB of data; a generator that held it all would peak far above these bounds.
    # Two views: numpy reports its buffers to tracemalloc, so the traced peak is what the
    # generator holds; VmHWM is the process's own peak RSS (ru_maxrss would not do: after
    # fork + exec it starts at the forking parent's RSS, the whole pytest process).
    out = tmp_path / "big.h5"
    code = ("import tracemalloc; from mpigd.synthetic import generate; "
            "tracemalloc.start(); "
            f"generate({str(out)!r}, 4_000_000, 20); "
            "print(tracemalloc.get_traced_memory()[1] >> 20, "
            "[int(f.split()[1]) >> 10 for f in open('/proc/self/status') "
            "if f.startswith('VmHWM')][0])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    traced_mb, rss_mb = map(int, proc.stdout.split())
    file_mb = out.stat().st_size >> 20
    assert file_mb > 600
    assert traced_mb < 120, f"generator held {traced_mb} MB of arrays for a {file_mb} MB file"
    assert rss_mb < 250, f"generator peaked at {rss_mb} MB RSS for a {file_mb} MB file"


def test_condition_sets_the_condition_number_of_xtx(tmp_path):
    # --condition K: cond(X^T X) within a factor 2 of K (Z^T Z's own spread is ~(1+sqrt(d/n))^2 /
    # (1-sqrt(d/n))^2 ~ 1.3 here); blocks stay seeded by (seed, block), so the file is reproducible.
    for condition in (1e2, 1e4):
        out = tmp_path / f"c{condition:g}.h5"
        proc = python_m("generate", "--rows", 6000, "--features", 12, "--seed", 4, "--noise", 0,
                        "--condition", condition, "--out", out)
        assert proc.returncode == 0, proc.stderr
        data, attrs = _datasets(out)
        measured = np.linalg.cond(data["X"].T @ data["X"])
        assert condition / 2 < measured < condition * 2, (condition, measured)
        assert attrs["condition"] == condition
        assert np.allclose(data["X"] @ data["w_true"], data["y"])  # noise 0: y = X w_true
    plain = tmp_path / "plain.h5"
    assert python_m("generate", "--rows", 6000, "--features", 12, "--seed", 4, "--noise", 0,
                    "--out", plain).returncode == 0
    assert np.linalg.cond(_datasets(plain)[0]["X"].T @ _datasets(plain)[0]["X"]) < 2
    assert "condition" not in _datasets(plain)[1]
    bad = python_m("generate", "--rows", 10, "--features", 2, "--condition", 0.5,
                   "--out", tmp_path / "bad.h5")
    assert bad.returncode == 2 and "--condition must be" in bad.stderr


def _dirty_mb():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) >> 10
    raise AssertionError("no Dirty: in /proc/meminfo")


def test_start_writeback_sends_dirty_pages_to_disk_without_an_fsync(tmp_path):
    # 320 MB written and not fsynced stay dirty for vm.dirty_expire_centisecs (30 s) unless
    # something starts their writeback; rundir.start_writeback does (generate calls it after
    # every block of a file one process writes, so the final fsync has little left to do).
    # This checks the call itself, not that fill_rows makes it.
    from mpigd import rundir

    path = tmp_path / "dirty.bin"
    with open(path, "wb") as f:
        chunk = np.random.default_rng(0).bytes(32 << 20)  # not zero pages: really written
        for _ in range(10):
            f.write(chunk)
    written = _dirty_mb()
    rundir.start_writeback(str(path))
    deadline = time.monotonic() + 20
    while _dirty_mb() > written - 250 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dirty_mb() <= written - 250, (written, _dirty_mb())
