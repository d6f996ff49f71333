"""--method momentum|cg|sgd (issue 14): real mpirun runs on a generated problem of known cond."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import mpirun
from mpigd import synthetic
from mpigd.launch import mpi_command

ROWS, FEATURES, KAPPA = 2003, 8, 100.0
TIGHT = ("--tol", "1e-10", "--iters", "4000", "--quiet")


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory):
    """(path, X, y, w*) of a cond(X^T X) ~ 100 problem, w* from numpy.linalg.lstsq."""
    path = str(tmp_path_factory.mktemp("data") / "cond.h5")
    synthetic.generate(path, ROWS, FEATURES, seed=5, noise=0.1, condition=KAPPA)
    with h5py.File(path, "r") as f:
        X, y = f["X"][()], f["y"][()]
    return path, X, y, np.linalg.lstsq(X, y, rcond=None)[0]


def _run(ranks, path, tmp_path, name, *args, env=None):
    run = mpirun(ranks, "--data", path, *args, out=str(tmp_path / name), env=env)
    assert run.returncode == 0, run
    return run


def _error(w, w_star):
    return np.linalg.norm(w - w_star) / np.linalg.norm(w_star)


@pytest.mark.parametrize("method", ["gd", "momentum", "cg"])
def test_methods_reach_the_least_squares_solution(conditioned, tmp_path, method):
    path, X, _, w_star = conditioned
    run = _run(2, path, tmp_path, method, "--method", method, *TIGHT)
    result = run.result
    assert result["converged"] and result["stop_reason"] == "converged"
    assert _error(run.weights[0], w_star) < 1e-7
    comm = result["communication"]
    assert comm["method"] == method and comm["rounds_to_tol"] == comm["rounds"]
    assert comm["bytes_per_rank"] == comm["rounds"] * comm["bytes_per_round_per_rank"] > 0
    kappa = np.linalg.cond(X.T @ X)
    if method == "cg":  # Krylov: d steps in exact arithmetic, + the first and the verifying gradient
        assert result["iterations"] <= FEATURES + 4, result["iterations"]
    if method == "momentum":
        assert result["iterations"] <= 3 * math.sqrt(kappa) * math.log(1e10), result["iterations"]


@pytest.mark.parametrize("method", ["momentum", "cg", "sgd"])
def test_ranks_and_modes_agree(conditioned, tmp_path, method):
    path = conditioned[0]
    args = ("--method", method, "--iters", "60", "--tol", "0", "--quiet") + (
        ("--batch-size", "300", "--epochs", "4") if method == "sgd" else ())
    runs = [_run(n, path, tmp_path, f"{n}-{mode}", *args, "--mode", mode)
            for n, mode in ((1, "server"), (2, "server"), (3, "allreduce"), (4, "server"))]
    ws = [r.weights[0] for r in runs]
    for w in ws[1:]:
        assert _error(w, ws[0]) < 1e-10
    again = _run(2, path, tmp_path, "again", *args, "--mode", "server")
    assert again.weights[0].tobytes() == ws[1].tobytes()  # deterministic for a seed


def test_gd_is_unchanged_and_full_batch_sgd_is_gd(conditioned, tmp_path):
    path, X, y, _ = conditioned
    lr = "0.00004"  # below 1/lambda_max ~ 1/(rows sqrt(cond)) = 1/2e4
    plain = _run(2, path, tmp_path, "plain", "--lr", lr, "--iters", "30", "--tol", "0", "--quiet")
    gd = _run(2, path, tmp_path, "gd", "--method", "gd", "--lr", lr, "--iters", "30",
              "--tol", "0", "--quiet")
    sgd = _run(2, path, tmp_path, "sgd", "--method", "sgd", "--lr", lr, "--epochs", "30",
               "--batch-size", str(ROWS), "--full-loss-every", "7", "--tol", "0", "--quiet")
    assert gd.weights[0].tobytes() == plain.weights[0].tobytes()
    assert sgd.weights[0].tobytes() == gd.weights[0].tobytes()
    w = np.zeros(FEATURES)
    for _ in range(30):
        w = w - float(lr) * (X.T @ (X @ w - y))
    assert _error(gd.weights[0], w) < 1e-12
    # full passes counted apart: at steps 0, 7, 14, 21, 28 and after the last (30)
    assert sgd.result["communication"]["full_passes"] == 6


def test_sgd_decreases_the_loss_and_depends_on_its_seed(conditioned, tmp_path):
    path = conditioned[0]
    args = ("--method", "sgd", "--batch-size", "200", "--epochs", "5", "--lr-decay", "0.5",
            "--tol", "0", "--quiet")
    a = _run(2, path, tmp_path, "a", *args)
    b = _run(2, path, tmp_path, "b", *args, "--seed", "1")
    result = a.result
    assert result["final_loss"] < 0.2 * result["initial_loss"]  # 50 steps at cond 100
    assert result["communication"]["steps"] == 5 * result["communication"]["steps_per_epoch"]
    assert a.weights[0].tobytes() != b.weights[0].tobytes()


@pytest.mark.parametrize("method", ["momentum", "cg", "sgd"])
def test_resume_after_a_crash_is_bitwise(conditioned, tmp_path, method):
    path = conditioned[0]
    args = ["--method", method, "--iters", "40", "--tol", "0", "--quiet"]
    if method == "sgd":
        args += ["--batch-size", "250", "--epochs", "3", "--lr-decay", "0.2", "--full-loss-every", "3"]
    whole = _run(2, path, tmp_path, "whole", *args)
    out = str(tmp_path / "crashed")
    crashed = mpirun(2, "--data", path, *args, "--checkpoint-every", "5", out=out,
                     env={"MPIGD_INJECT_FAULT": "1:loop:13"})
    assert crashed.returncode != 0 and not os.path.exists(os.path.join(out, "result.json"))
    resumed = mpirun(2, "--resume", out)
    assert resumed.returncode == 0, resumed
    resumed.out = out
    assert resumed.result["resumed_from"] == 10
    with h5py.File(os.path.join(out, "weights.h5"), "r") as f:
        assert f["w"][()].tobytes() == whole.weights[0].tobytes()


def test_sigterm_then_resume_cg_is_bitwise(conditioned, tmp_path):
    path = conditioned[0]
    args = ["--data", path, "--method", "cg", "--iters", "200000", "--tol", "0", "--quiet"]
    out = str(tmp_path / "term")
    job = subprocess.Popen(mpi_command(2, *args, "--checkpoint-every", "50", "--out", out),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           stdin=subprocess.DEVNULL)
    # A first checkpoint proves the loop runs (a fixed sleep raced the start-up in CI).
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(out, "checkpoint.h5")) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode != 0 and "received SIGTERM" in stderr, stderr
    with h5py.File(os.path.join(out, "checkpoint.h5"), "r") as f:
        stopped = int(f.attrs["iteration"])
        assert "p" in f["method"] and "s" in f["method"]
    resumed = mpirun(2, "--resume", out, "--iters", str(stopped + 30))
    assert resumed.returncode == 0, resumed
    whole = _run(2, path, tmp_path, "whole", *args[:4], "--iters", str(stopped + 30),
                 "--tol", "0", "--quiet")
    with h5py.File(os.path.join(out, "weights.h5"), "r") as f:
        assert f["w"][()].tobytes() == whole.weights[0].tobytes()


def test_sgd_options_need_sgd(conditioned, tmp_path):
    run = mpirun(1, "--data", conditioned[0], "--method", "cg", "--batch-size", "10",
                 out=str(tmp_path / "bad"))
    assert run.returncode == 2 and "only apply to --method sgd" in run.stderr


def test_compare_prints_the_table_and_draws_the_plot(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, "-m", "mpigd", "compare", "--methods", "gd,momentum,cg", "-n", "2",
         "--rows", "3000", "--features", "6", "--condition", "1e3", "--iters", "400",
         "--out", str(out), "--plots"], capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "w* = w_true (generated without noise)" in proc.stdout
    rows = {r["method"]: r for r in json.load(open(out / "compare.json"))["methods"]}
    assert rows["cg"]["stop"] == "converged" and rows["cg"]["error"] < 1e-6
    assert rows["gd"]["stop"] == "max_iters"  # cond 1e3 needs ~2e4 gd steps to 1e-8
    assert rows["cg"]["rounds"] < rows["momentum"]["rounds"] < rows["gd"]["rounds"]
    assert (out / "compare.png").stat().st_size > 10_000


def test_cg_in_float32_restarts_on_the_true_gradient(conditioned, tmp_path):
    path, _, _, w_star = conditioned
    run = _run(2, path, tmp_path, "f32", "--method", "cg", "--dtype", "float32", "--tol", "1e-4",
               "--iters", "400", "--quiet")
    facts = run.result["communication"]
    assert run.result["converged"] and facts["restart_every"] == FEATURES  # min(d, 20)
    assert facts["true_gradient_rounds"] >= 2  # the first one, and the one that confirmed
    assert _error(run.weights[0], w_star) < 1e-3


@pytest.mark.parametrize("method", ["momentum", "cg", "sgd"])
def test_a_dedicated_server_agrees(conditioned, tmp_path, method):
    path = conditioned[0]
    args = ("--method", method, "--iters", "30", "--tol", "0", "--quiet") + (
        ("--batch-size", "300", "--epochs", "2") if method == "sgd" else ())
    shared = _run(2, path, tmp_path, "shared", *args)
    dedicated = _run(3, path, tmp_path, "dedicated", *args, "--dedicated-server")
    assert _error(dedicated.weights[0], shared.weights[0]) < 1e-10
