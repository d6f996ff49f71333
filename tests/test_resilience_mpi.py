"""Checkpoints, resume, kills and SIGTERM, determinism, and the peer-to-peer mode."""

import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import mpirun, serial_gd, write_h5
from mpigd.checkpoint import load
from mpigd.launch import mpi_command

FIXED = ["--lr", 2e-4, "--tol", 0, "--quiet"]


def resume(ranks, out, *args):
    run = mpirun(ranks, "--resume", out, *args)
    run.out = out
    return run


def rank_pids(marker):
    """PIDs of the ranks whose command line contains `marker`, by rank (from PMI_RANK)."""
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
            if b"mpigd" not in cmdline or marker.encode() not in cmdline:
                continue
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = dict(v.split(b"=", 1) for v in handle.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"PMI_RANK" in env:
            pids[int(env[b"PMI_RANK"])] = int(entry)
    return pids


def start(ranks, *args):
    return subprocess.Popen(mpi_command(ranks, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def reference(problem, tmp_path):
    """An uninterrupted 40-iteration run on 2 ranks."""
    _, _, path = problem
    run = mpirun(2, "--data", path, "--iters", 40, *FIXED, out=str(tmp_path / "reference"))
    assert run.returncode == 0, run
    return run.weights[0]


def test_resume_after_a_crash_is_bitwise_identical(problem, tmp_path, reference):
    _, _, path = problem
    out = str(tmp_path / "crashed")
    crashed = mpirun(2, "--data", path, "--iters", 40, *FIXED, "--checkpoint-every", 5, out=out,
                     env={"MPIGD_INJECT_FAULT": "1:loop:13"})
    assert crashed.returncode != 0 and not os.path.exists(os.path.join(out, "result.json"))
    assert load(out).iteration == 10
    resumed = resume(2, out)
    assert resumed.returncode == 0, resumed
    w = resumed.weights[0]
    assert w.tobytes() == reference.tobytes()
    result = resumed.result
    assert result["resumed_from"] == 10 and result["iterations"] == 40
    assert not os.path.exists(os.path.join(out, "checkpoint.h5"))  # superseded by the result
    with open(os.path.join(out, "history.csv")) as handle:
        rows = handle.read().splitlines()
    assert len(rows) == 1 + 41  # header + iterations 0..40, the first 10 from the checkpoint


@pytest.mark.parametrize("ranks", [1, 3])
def test_resume_on_another_rank_count_agrees_to_rounding(problem, tmp_path, reference, ranks):
    _, _, path = problem
    out = str(tmp_path / "crashed")
    mpirun(2, "--data", path, "--iters", 40, *FIXED, "--checkpoint-every", 7, out=out,
           env={"MPIGD_INJECT_FAULT": "0:loop:20"})
    assert load(out).iteration == 21  # written after iteration 20, just before the fault
    resumed = resume(ranks, out)
    assert resumed.returncode == 0, resumed
    w = resumed.weights[0]
    assert np.linalg.norm(w - reference) <= 1e-12 * np.linalg.norm(reference)


def test_sigkill_of_a_worker_ends_the_job_then_resume_is_bitwise(problem, tmp_path, reference):
    _, _, path = problem
    out = str(tmp_path / "killed")
    job = start(2, "--data", path, "--iters", 40, *FIXED, "--checkpoint-every", 5,
                "--straggler", "1:0.05", "--out", out)
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(out, "checkpoint.h5"))), "no checkpoint"
        pids = rank_pids(out)
        assert set(pids) == {0, 1}
        killed = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        job.wait(timeout=10)
        assert time.monotonic() - killed < 10
        assert job.returncode != 0
    finally:
        job.kill()
        job.communicate()
    assert not os.path.exists(os.path.join(out, "result.json"))
    assert 0 < load(out).iteration < 40
    resumed = resume(2, out, "--straggler", "1:0")
    assert resumed.returncode == 0, resumed
    assert resumed.weights[0].tobytes() == reference.tobytes()


def test_sigterm_stops_at_an_iteration_boundary_with_a_checkpoint(problem, tmp_path, reference):
    _, _, path = problem
    out = str(tmp_path / "terminated")
    job = start(2, "--data", path, "--iters", 40, *FIXED, "--straggler", "0:0.05",
                "--checkpoint-every", 5, "--out", out)
    try:
        # A first checkpoint proves the loop runs (and the handler is in place): a fixed
        # sleep after the ranks appear raced their start-up on a loaded machine.
        assert wait_for(lambda: os.path.exists(os.path.join(out, "checkpoint.h5"))), "no checkpoint"
        job.send_signal(signal.SIGTERM)  # to the launcher, which forwards it to the ranks
        _, stderr = job.communicate(timeout=10)
    finally:
        job.kill()
    assert job.returncode == 143, stderr
    assert stderr.count("received SIGTERM") == 1 and "--resume" in stderr, stderr
    state = load(out)
    assert 0 < state.iteration < 40 and len(state.loss) == state.iteration
    assert not os.path.exists(os.path.join(out, "result.json"))
    resumed = resume(2, out, "--straggler", "0:0")
    assert resumed.returncode == 0, resumed
    assert resumed.weights[0].tobytes() == reference.tobytes()


def test_random_kills_never_leave_a_torn_checkpoint(tmp_path):
    # Checkpoints of a wide w written every iteration: a kill often lands mid-write.
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 100_000))
    y = rng.standard_normal(50)
    path = write_h5(tmp_path / "wide.h5", X, y)
    out = str(tmp_path / "run")
    chance = random.Random(1)
    trials = torn_writes = 0
    # At least 20 kills, and more until some landed inside a write (~1 in 5 do here).
    while trials < 20 or (torn_writes < 3 and trials < 100):
        job = start(2, "--data", path, "--iters", 100_000, "--lr", 1e-9, "--tol", 0, "--quiet",
                    "--checkpoint-every", 1, "--out", out, "--force")
        try:
            first = os.path.join(out, "checkpoint.h5")
            assert wait_for(lambda f=first, j=job: os.path.exists(f) or j.poll() is not None), "no checkpoint"
            time.sleep(chance.uniform(0.0, 0.3))
            pids = rank_pids(out)
            if 0 in pids:  # the writer; killing any rank ends the job
                os.kill(pids[0], signal.SIGKILL)
            job.wait(timeout=10)
        finally:
            job.kill()
            job.communicate()
        state = load(out)  # raises if torn
        assert state.w.shape == (100_000,) and state.iteration >= 1
        leftovers = [name for name in os.listdir(out) if ".partial" in name]
        torn_writes += bool(leftovers)
        for name in leftovers:  # a killed writer may leave its temporary file; never the real one
            os.remove(os.path.join(out, name))
        os.remove(first)
        trials += 1
    print(f"{torn_writes} of {trials} kills interrupted a checkpoint write")
    assert torn_writes >= 1, "no kill landed inside a checkpoint write: the test proved nothing"


def test_repeated_runs_are_bitwise_identical(problem, tmp_path):
    _, _, path = problem
    runs = [mpirun(3, "--data", path, "--iters", 30, "--tol", 0, "--quiet", out=str(tmp_path / f"r{i}"))
            for i in range(2)]
    assert runs[0].weights[0].tobytes() == runs[1].weights[0].tobytes()


def test_rank_counts_agree(problem, tmp_path):
    X, y, path = problem
    weights = [mpirun(n, "--data", path, "--iters", 30, *FIXED, out=str(tmp_path / f"n{n}")).weights[0]
               for n in (1, 2, 3, 4)]
    for w in weights[1:]:
        assert np.linalg.norm(w - weights[0]) <= 1e-12 * np.linalg.norm(weights[0])
    assert np.linalg.norm(weights[0] - serial_gd(X, y, 2e-4, 30)) <= 1e-12 * np.linalg.norm(weights[0])


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_allreduce_mode_equals_server_mode(problem, tmp_path, ranks):
    _, _, path = problem
    server = mpirun(ranks, "--data", path, "--iters", 25, *FIXED, out=str(tmp_path / "s"))
    peer = mpirun(ranks, "--data", path, "--iters", 25, *FIXED, "--mode", "allreduce",
                  out=str(tmp_path / "p"))
    assert server.returncode == 0 and peer.returncode == 0, peer
    ws, wp = server.weights[0], peer.weights[0]
    assert np.linalg.norm(ws - wp) <= 1e-12 * np.linalg.norm(ws)
    assert peer.result["mode"] == "allreduce" and peer.result["iterations"] == 25
    assert peer.result["phases"]["bcast"]["max_s"] == 0.0


def test_trace_json_is_valid_trace_event_format(problem, tmp_path):
    _, _, path = problem
    out = str(tmp_path / "t")
    run = mpirun(3, "--data", path, "--iters", 8, *FIXED, "--trace", out=out)
    assert run.returncode == 0, run
    with open(os.path.join(out, "trace.json")) as handle:
        events = json.load(handle)["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    for event in spans:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(event)
        assert event["dur"] >= 0 and event["ts"] >= 0
    assert {e["tid"] for e in spans} == {0, 1, 2}  # one track per rank
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"rank 0", "rank 1", "rank 2"}
    for rank in range(3):
        compute = [e for e in spans if e["tid"] == rank and e["name"] == "compute"]
        assert len(compute) == run.result["evaluations"] == 9
        mine = sorted((e for e in spans if e["tid"] == rank), key=lambda e: e["ts"])
        for a, b in zip(mine, mine[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-3  # spans of one rank never overlap
    assert any(e["name"] == "update" and e["tid"] == 0 for e in spans)
    assert not any(e["name"] == "update" and e["tid"] != 0 for e in spans)


def test_resume_refuses_other_data_and_other_options(problem, tmp_path):
    X, y, path = problem
    out = str(tmp_path / "crashed")
    mpirun(2, "--data", path, "--iters", 40, *FIXED, "--checkpoint-every", 5, out=out,
           env={"MPIGD_INJECT_FAULT": "1:loop:7"})
    changed = resume(2, out, "--lr", 0.1)
    assert changed.returncode == 2 and "--lr cannot change" in changed.stderr, changed
    X[500, 3] += 1e-9  # the same shape, one value different
    write_h5(path, X, y)
    other = resume(2, out)
    assert other.returncode == 2 and "content checksum" in other.stderr, other
    assert mpirun(2, "--resume", str(tmp_path / "nothing")).stderr.count("no checkpoint") == 1
