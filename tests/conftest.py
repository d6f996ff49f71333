"""Shared test helpers: real mpirun launches with a timeout, and small HDF5 inputs."""

import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mpigd.launch import child_env, mpi_command, mpi_family

MPI_TIMEOUT = 120  # seconds; no MPI launch may hang the suite

# The emulated cluster (mpigd.cluster) starts its ranks with MPICH's hydra, whose
# `-launcher ssh -launcher-exec` enters each host's network namespace; ranks must use the
# launcher's MPI, so these tests need an MPICH build of mpi4py (CI's first run has one).
needs_hydra = pytest.mark.skipif(
    mpi_family() == "Open MPI",
    reason="the emulated cluster launches ranks with MPICH's hydra (-launcher-exec into network "
           "namespaces) and this mpi4py is built against Open MPI: run these tests with the mpich wheel")


def pytest_collection_finish(session):
    """The pytest process itself never starts MPI: ranks are always launched, real jobs.

    Importing mpi4py.MPI (e.g. through an mpigd module at a test file's top) initialises
    MPI here, and Open MPI's singleton then hands its runtime's state to every later launch.
    """
    if "mpi4py.MPI" in sys.modules:
        raise pytest.UsageError("a test module imported mpi4py.MPI at collection (directly or through "
                                "an mpigd module): import it inside the launched job instead")


class Run:
    def __init__(self, proc, seconds, out):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.seconds, self.out = seconds, out

    @property
    def result(self):
        with open(os.path.join(self.out, "result.json")) as handle:
            return json.load(handle)

    @property
    def weights(self):
        with h5py.File(os.path.join(self.out, "weights.h5"), "r") as f:
            return f["w"][()], (f["intercept"][()] if "intercept" in f else None)

    def __repr__(self):
        return f"<Run rc={self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}>"


def mpirun(ranks, *args, out=None, timeout=MPI_TIMEOUT, cwd=None, env=None):
    """Launch `python -m mpigd` on `ranks` real MPI ranks; never waits past `timeout`."""
    if out is not None:
        args = (*args, "--out", out)
    started = time.perf_counter()
    proc = subprocess.run(mpi_command(ranks, *args), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL,
                          env=child_env(env))
    return Run(proc, time.perf_counter() - started, out)


def python_m(*args, timeout=MPI_TIMEOUT, cwd=None):
    return subprocess.run([sys.executable, "-m", "mpigd", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def write_h5(path, X, y, x_name="X", y_name="y", **dataset_options):
    with h5py.File(path, "w") as f:
        f.create_dataset(x_name, data=X, **dataset_options)
        f.create_dataset(y_name, data=y, **dataset_options)
    return str(path)


def serial_gd(X, y, lr, iters):
    """The seed's update, in float64 numpy: w <- w - lr * X^T (X w - y)."""
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        w = w - lr * (X.T @ (X @ w - y))
    return w


@pytest.fixture
def problem(tmp_path):
    """A small well-conditioned problem whose row count no rank count 2..4 divides."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((1003, 6))
    y = X @ rng.standard_normal(6) + 0.1 * rng.standard_normal(1003)
    return X, y, write_h5(tmp_path / "data.h5", X, y)


# --- /dev/shm: the MPI library's segments of the jobs these tests kill -----------------------------------
# MPICH unlinks its /dev/shm/mpich_shm_* segment in MPI_Finalize; a job that is aborted or
# killed (the failure and watchdog tests do that on purpose) never gets there, and the
# segment stays. After each test, the segments that appeared during it and that no live
# process maps any more are removed. Other jobs' segments (mapped, or older) are not touched.

SHM = "/dev/shm"
# MPICH's segments, Open MPI 4's shared-memory transport (vader) and Open MPI 5's (sm).
SEGMENT_PREFIXES = ("mpich_shm_", "vader_segment.", "sm_segment.")


def shm_segments() -> set[str]:
    try:
        return {name for name in os.listdir(SHM) if name.startswith(SEGMENT_PREFIXES)}
    except FileNotFoundError:
        return set()


def mapped_segments() -> set[str]:
    """Names of /dev/shm segments that some live process has mapped."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as handle:
                for line in handle:
                    if "/dev/shm/" in line:
                        name = line.rsplit("/", 1)[1].split()[0]
                        if name.startswith(SEGMENT_PREFIXES):
                            found.add(name)
        except OSError:
            continue
    return found


def reap_segments(before: set[str]) -> list[str]:
    """Remove segments created since `before` that nobody maps (a killed job's); their names."""
    removed = []
    for name in sorted(shm_segments() - before - mapped_segments()):
        try:
            os.remove(os.path.join(SHM, name))
            removed.append(name)
        except OSError:
            continue
    return removed


@pytest.fixture(scope="session")
def _session_shm():
    before = shm_segments()
    yield before
    # also those whose killed ranks were still exiting at a test's end; the last test's may
    # still be mapped for a moment (its aborted ranks exiting), so wait for them a little
    deadline = time.monotonic() + 5
    while True:
        reap_segments(before)
        if not (shm_segments() - before) or time.monotonic() > deadline:
            break
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def no_leftover_shm(_session_shm):
    before = shm_segments()
    yield
    reap_segments(before)
