"""The stall watchdog under real faults: real mpirun, real SIGSTOP, a real sleep in the map step.

Each test: every process gone within the stall limit + 10 s, exit code 124, one message that
names the right rank and host, and the last periodic checkpoint intact and resumable bitwise.
Leftovers (a stopped rank the launcher missed) are SIGCONT'ed and killed in a finally.
"""

import os
import signal
import socket
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import mpirun, needs_hydra, write_h5
from mpigd import checkpoint, watchdog
from mpigd.cluster.launch import JOB_TOKEN, tagged_processes
from mpigd.launch import mpi_command, mpi_family

STALL_S = 3
EVERY = 100
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2000, 8))
    y = X @ rng.standard_normal(8) + 0.1 * rng.standard_normal(2000)
    return write_h5(tmp_path_factory.mktemp("wd") / "data.h5", X, y)


def _rank_pid(token, rank):
    for pid in tagged_processes(token):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                env = handle.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmd = handle.read()
        except OSError:
            continue
        # hydra says PMI_RANK, Open MPI's mpirun OMPI_COMM_WORLD_RANK
        if {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()} & set(env) \
                and b"mpigd" in cmd:
            return pid
    return None


def _end(proc, token):
    for pid in tagged_processes(token):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Job:
    """One `python -m mpigd` under mpirun, its ranks tagged so that the test can find them."""

    def __init__(self, ranks, *args):
        self.token = os.urandom(8).hex()
        self.proc = subprocess.Popen(mpi_command(ranks, *args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True,
                                     env={**os.environ, JOB_TOKEN: self.token})

    def finish(self, timeout):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def close(self):
        _end(self.proc, self.token)


def _train_args(data, out, *extra):
    return ("--data", data, "--iters", 10**6, "--tol", 0, "--lr", 1e-4, "--quiet", "--out", out,
            "--checkpoint-every", EVERY, "--stall-timeout", STALL_S, *extra)


def _assert_stalled(code, err, seconds, rank, how, startup=0.0):
    """`startup`: how much of `seconds` went to starting and loading before the stall."""
    assert code == 124, err
    assert seconds - startup <= STALL_S + 10, (seconds, err)
    lines = [line for line in err.splitlines() if line.startswith("mpigd: error: stalled")]
    assert len(lines) == 1, err
    assert f"rank {rank} ({HOST}) did not arrive: {how}" in lines[0], lines[0]
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    print(f"\nfault-table | {test} | {seconds:.1f} s | {code} | {lines[0]}")
    return lines[0]


def _assert_resumes_bitwise(data, out, tmp_path, ranks, mode, periodic=True):
    saved = checkpoint.load(out)
    assert saved.iteration > 0 and (saved.iteration % EVERY == 0 or not periodic)
    target = saved.iteration + 15
    resumed = mpirun(ranks, "--resume", out, "--iters", target, "--stall-timeout", 0)
    assert resumed.returncode == 0, resumed
    fresh = mpirun(ranks, "--data", data, "--iters", target, "--tol", 0, "--lr", 1e-4, "--quiet",
                   "--mode", mode, out=str(tmp_path / "fresh"))
    assert fresh.returncode == 0, fresh
    with h5py.File(os.path.join(out, "weights.h5")) as a, \
            h5py.File(str(tmp_path / "fresh" / "weights.h5")) as b:
        assert np.array_equal(a["w"][()], b["w"][()])


@pytest.mark.parametrize("mode", ["server", "allreduce"])
@pytest.mark.parametrize("frozen", [1, 0], ids=["worker", "rank0"])
def test_a_frozen_rank_ends_the_job_with_one_message(data, tmp_path, mode, frozen):
    out = str(tmp_path / "run")
    job = Job(3, *_train_args(data, out, "--mode", mode))
    try:
        _wait_for(lambda: os.path.exists(os.path.join(out, "checkpoint.h5")), 60, "a checkpoint")
        pid = _wait_for(lambda: _rank_pid(job.token, frozen), 10, "the rank's pid")
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        code, _, err = job.finish(timeout=STALL_S + 30)
        seconds = time.monotonic() - stopped
        _wait_for(lambda: not tagged_processes(job.token), STALL_S + 10, "every rank to end")
        seconds = time.monotonic() - stopped
    finally:
        job.close()
    line = _assert_stalled(code, err, seconds, frozen, "silent for")
    assert "is intact; continue with `mpirun -n 3 python -m mpigd --resume" in line
    _assert_resumes_bitwise(data, out, tmp_path, 3, mode)


def test_a_frozen_worker_with_a_dedicated_server(data, tmp_path):
    out = str(tmp_path / "run")
    job = Job(3, *_train_args(data, out, "--dedicated-server"))
    try:
        _wait_for(lambda: os.path.exists(os.path.join(out, "checkpoint.h5")), 60, "a checkpoint")
        os.kill(_wait_for(lambda: _rank_pid(job.token, 2), 10, "rank 2"), signal.SIGSTOP)
        stopped = time.monotonic()
        code, _, err = job.finish(timeout=STALL_S + 30)
        _wait_for(lambda: not tagged_processes(job.token), STALL_S + 10, "every rank to end")
        seconds = time.monotonic() - stopped
    finally:
        job.close()
    line = _assert_stalled(code, err, seconds, 2, "silent for")
    assert "is intact; continue with `mpirun -n 3 python -m mpigd --resume" in line


@pytest.mark.parametrize("mode", ["server", "allreduce"])
@pytest.mark.parametrize("slow", [1, 0], ids=["worker", "rank0"])
def test_a_rank_asleep_in_its_map_step_is_named_as_alive_but_computing(data, tmp_path, mode, slow):
    out = str(tmp_path / "run")
    job = Job(2, *_train_args(data, out, "--mode", mode))
    try:  # a checkpoint first (SIGTERM: exit 143), then the resumed run's map step hangs
        _wait_for(lambda: os.path.exists(os.path.join(out, "checkpoint.h5")), 60, "a checkpoint")
        os.killpg(job.proc.pid, signal.SIGTERM)
        code, _, err = job.finish(timeout=30)
    finally:
        job.close()
    # Open MPI's mpirun passes SIGTERM on a second later and exits 1 (README: Launchers)
    assert code == (1 if mpi_family() == "Open MPI" else 143), err
    before = checkpoint.load(out).iteration
    started = time.monotonic()
    run = mpirun(2, "--resume", out, "--straggler", f"{slow}:600", "--stall-timeout", STALL_S,
                 timeout=STALL_S + 40)
    seconds = time.monotonic() - started
    line = _assert_stalled(run.returncode, run.stderr, seconds, slow,
                           "alive but still in its map step", startup=5.0)
    assert f"at iteration {before}, is intact" in line
    assert checkpoint.load(out).iteration == before
    _assert_resumes_bitwise(data, out, tmp_path, 2, mode, periodic=False)


@pytest.mark.parametrize("mode", ["server", "allreduce"])
def test_a_rank_stuck_in_the_power_iteration(data, tmp_path, mode):
    started = time.monotonic()
    run = mpirun(2, "--data", data, "--iters", 100, "--quiet", "--mode", mode, "--stall-timeout",
                 STALL_S, out=str(tmp_path / "p"), env={"MPIGD_INJECT_FAULT": "1:power:3"},
                 timeout=STALL_S + 40)
    line = _assert_stalled(run.returncode, run.stderr, time.monotonic() - started, 1,
                           "alive but still in its map step", startup=5.0)
    assert line.startswith("mpigd: error: stalled at power-iteration pass 3:"), line
    assert "no checkpoint was written" in line


def test_the_default_limit_cannot_fire_in_normal_work():
    assert watchdog.default_limit(0.05) == watchdog.FLOOR_S
    assert watchdog.default_limit(30.0) == 300.0
    assert watchdog.generous(3.0) == watchdog.GENEROUS_FLOOR_S
    assert watchdog.generous(60.0) == 600.0


def test_zero_turns_the_watchdog_off_and_a_normal_run_is_untouched(data, tmp_path):
    run = mpirun(2, "--data", data, "--iters", 50, "--tol", 0, "--quiet", "--stall-timeout", 0,
                 out=str(tmp_path / "off"))
    assert run.returncode == 0, run
    run = mpirun(2, "--data", data, "--iters", 50, "--tol", 0, "--quiet", "--stall-timeout", 1,
                 "--straggler", "1:0.3", out=str(tmp_path / "on"))
    assert run.returncode == 0, run  # 0.3 s per iteration: steady progress, never a stall


# --- across emulated hosts: a partition ------------------------------------------------------

def _need_root():
    import shutil

    if os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "iptables", "nsenter")):
        return
    reason = "needs root and ip, iptables, nsenter (apt-get install iproute2 iptables util-linux)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


_CUT = [["INPUT", "-i", "eth0"], ["OUTPUT", "-o", "eth0"]]


def _iptables(netns, action, rules):
    for rule in rules:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", action, *rule, "-j", "DROP"],
                       check=action == "-A", capture_output=True, timeout=30)


@needs_hydra
@pytest.mark.parametrize("mode", ["server", "allreduce"])
@pytest.mark.parametrize("fault", ["partition", "sigstop"])
def test_a_partitioned_or_frozen_host_is_named_and_the_job_ends(data, tmp_path, mode, fault):
    """Every packet from and to node1 dropped by iptables inside node1's namespace; or
    node1's rank frozen by SIGSTOP."""
    import sys

    from mpigd.cluster import Cluster, down

    _need_root()
    root, name = str(tmp_path / "clusters"), f"w{os.getpid() % 100000}"
    cluster = Cluster.up(name, hosts=2, root=root)
    out = str(tmp_path / "run")
    netns = cluster.host("node1").netns
    proc = token = None
    try:
        argv, env, token = cluster.job([sys.executable, "-m", "mpigd", *_train_args(data, out, "--mode", mode)],
                                       n=2, per_host=1)
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        _wait_for(lambda: os.path.exists(os.path.join(out, "checkpoint.h5")), 120, "a checkpoint")
        if fault == "partition":
            _iptables(netns, "-A", _CUT)
        else:
            os.kill(_wait_for(lambda: _rank_pid(token, 1), 10, "rank 1"), signal.SIGSTOP)
        cut = time.monotonic()
        _, err = proc.communicate(timeout=STALL_S + 40)
        _wait_for(lambda: not tagged_processes(token), STALL_S + 10, "every rank to end")
        seconds = time.monotonic() - cut
        lines = [line for line in err.splitlines() if line.startswith("mpigd: error: stalled")]
        assert proc.returncode == 124, err
        assert seconds <= STALL_S + 10, (seconds, err)
        assert lines and "rank 1 (node1) did not arrive: silent for" in lines[0], err
        print(f"\nfault-table | {fault}-node1-{mode} | {seconds:.1f} s | {proc.returncode} | {lines[0]}")
    finally:
        if fault == "partition":
            _iptables(netns, "-D", _CUT)
        if proc is not None:
            _end(proc, token)
        down(name, root)
    _assert_resumes_bitwise(data, out, tmp_path, 2, mode)


def test_a_killed_jobs_shm_segment_is_removed_and_no_other_is_touched(data, tmp_path):
    from conftest import mapped_segments, reap_segments, shm_segments

    before = shm_segments()
    run = mpirun(2, "--data", data, "--iters", 50, "--quiet", out=str(tmp_path / "r"),
                 env={"MPIGD_INJECT_FAULT": "1:loop:3"})
    assert run.returncode != 0
    if mpi_family() == "Open MPI":
        # Open MPI's mpirun removes its vader segments itself when a job aborts: none is
        # left for the reaper (it is only needed for ranks killed under srun).
        time.sleep(2)
        assert not shm_segments() - before - mapped_segments()
        return
    leaked = _wait_for(lambda: shm_segments() - before - mapped_segments(), 10,
                       "MPICH to leave the aborted job's segment behind")
    removed = reap_segments(before)
    assert set(removed) == leaked and not set(removed) & before
    assert not shm_segments() & leaked
