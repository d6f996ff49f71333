"""The data generator: contents, determinism, and memory that does not grow with the file."""

import subprocess
import sys

import h5py
import numpy as np

from conftest import python_m


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


def test_compressed_layout(tmp_path):
    out = tmp_path / "z.h5"
    assert python_m("generate", "--rows", 2000, "--features", 4, "--compression", "gzip",
                    "--out", out).returncode == 0
    with h5py.File(out, "r") as f:
        assert f["X"].compression == "gzip" and f["X"].chunks is not None


def test_memory_stays_at_one_block(tmp_path):
    # 400 MB of data; a generator that held it all would peak far above this bound.
    out = tmp_path / "big.h5"
    # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss starts at the forking parent's RSS
    # (here the whole pytest process, numba and all), VmHWM only counts this program.
    code = ("from mpigd.synthetic import generate; "
            f"generate({str(out)!r}, 2_500_000, 20); "
            "print([int(f.split()[1]) // 1024 for f in open('/proc/self/status') "
            "if f.startswith('VmHWM')][0])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.strip())
    assert out.stat().st_size > 400e6
    assert peak_mb < 250, f"generator peaked at {peak_mb} MB for a 400 MB file"
