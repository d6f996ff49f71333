"""A full disk is not a bug: one line, exit code 74, no torn file, the checkpoint kept.

Runs on a real 600 KB tmpfs (mount needs root: skips outside CI without it, fails with
CI=true), filled to the last byte by a filler file before the write that must fail.
"""

import json
import os
import subprocess

import numpy as np
import pytest

from conftest import mpirun, python_m, write_h5
from mpigd import checkpoint


def _need_root():
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("needs root to mount a small tmpfs")
    pytest.skip("needs root to mount a small tmpfs")


@pytest.fixture
def small_fs(tmp_path):
    _need_root()
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], check=True,
                   timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _fill(directory):
    """Write a filler file until the file system is full."""
    descriptor = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 1024)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _leftovers(directory):
    return [name for name in os.listdir(directory) if ".partial-" in name]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((1000, 6))
    return write_h5(tmp_path / "data.h5", X, X @ rng.standard_normal(6))


def _one_error_line(run, code=74):
    assert run.returncode == code, run
    errors = [line for line in run.stderr.splitlines() if line.startswith("mpigd: error")]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr and "bug" not in run.stderr, run.stderr
    return errors[0]


def test_a_full_disk_stops_with_one_line_and_keeps_the_checkpoint(small_fs, data):
    out = str(small_fs / "run")
    first = mpirun(2, "--data", data, "--iters", 1000, "--tol", 0, "--lr", 1e-4, "--quiet",
                   "--checkpoint-every", 50, env={"MPIGD_INJECT_FAULT": "1:loop:60"}, out=out)
    assert first.returncode != 0 and checkpoint.load(out).iteration == 50, first
    _fill(small_fs)

    # the next periodic checkpoint does not fit
    run = mpirun(2, "--resume", out, "--iters", 1000)
    line = _one_error_line(run)
    print(line)
    assert f"could not write {out}/checkpoint.h5: no space left on the device" in line, line
    assert "it needs at least" in line and "KB are free there" in line
    assert f"the previous checkpoint {out}/checkpoint.h5 (iteration 50) is intact" in line, line
    assert f"`mpirun -n 2 python -m mpigd --resume {out}`" in line
    assert checkpoint.load(out).iteration == 50 and not _leftovers(out)

    # the results do not fit (no periodic checkpoint: history.csv is the first file written)
    run = mpirun(2, "--resume", out, "--iters", 80, "--checkpoint-every", 0)
    line = _one_error_line(run)
    print(line)
    assert f"could not write {out}/history.csv: no space left on the device (it needs at least" in line
    assert "(iteration 50) is intact" in line
    assert not os.path.exists(os.path.join(out, "result.json")) and not _leftovers(out)

    os.remove(small_fs / "filler")  # space again: the same command now completes
    done = mpirun(2, "--resume", out, "--iters", 80)
    assert done.returncode == 0, done
    with open(os.path.join(out, "result.json")) as handle:
        assert json.load(handle)["iterations"] == 80


def test_generated_data_that_does_not_fit_leaves_nothing(small_fs):
    target = small_fs / "big.h5"
    run = python_m("generate", "--rows", 20_000, "--features", 10, "--out", target)
    line = _one_error_line(run)
    print(line)
    assert f"could not write {target}: no space left on the device" in line, line
    assert "nothing was left half-written" in line
    assert not target.exists() and not _leftovers(small_fs)
