import json
"""The trainer under real `mpirun`: numbers against serial numpy, outputs, attribution."""

import csv
import os

import h5py
import numpy as np
import pytest

from conftest import mpirun, serial_gd, write_h5

RANKS_AND_SERVER = [(1, False), (2, False), (3, False), (4, False), (2, True), (3, True), (4, True)]


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("ranks,dedicated", RANKS_AND_SERVER)
def test_fixed_lr_equals_serial_gd(problem, tmp_path, ranks, dedicated):
    X, y, path = problem
    lr, iters = 2e-4, 25
    args = ["--data", path, "--lr", lr, "--iters", iters, "--tol", 0, "--quiet"]
    run = mpirun(ranks, *args, *(["--dedicated-server"] if dedicated else []), out=str(tmp_path / "r"))
    assert run.returncode == 0, run
    w, intercept = run.weights
    assert intercept is None
    assert relative_error(w, serial_gd(X, y, lr, iters)) <= 1e-12
    result = run.result
    assert result["iterations"] == iters and result["stop_reason"] == "max_iters"
    assert result["ranks"] == ranks and result["workers"] == ranks - dedicated
    rows = [entry["rows"] for entry in result["per_rank"]]
    assert sum(rows) == 1003 and (rows[0] == 0) == dedicated
    r = X @ w - y
    assert result["final_loss"] == pytest.approx(0.5 * r @ r, rel=1e-12)


def test_auto_lr_converges_to_lstsq(problem, tmp_path):
    X, y, path = problem
    run = mpirun(2, "--data", path, "--iters", 500, "--tol", 1e-13, "--quiet", out=str(tmp_path / "r"))
    assert run.returncode == 0, run
    assert run.result["stop_reason"] == "converged" and run.result["lr_mode"] == "auto"
    lmax = np.linalg.eigvalsh(X.T @ X).max()
    assert run.result["lambda_max"] == pytest.approx(lmax, rel=1e-3)
    assert relative_error(run.weights[0], np.linalg.lstsq(X, y, rcond=None)[0]) <= 1e-8


def test_standardize_intercept_fits_unscaled_data_like_lstsq(tmp_path):
    # House-like features: bedrooms, square feet, age - wildly different scales and means.
    rng = np.random.default_rng(11)
    n = 2001
    X = np.column_stack([rng.integers(1, 6, n), rng.normal(1800, 600, n), rng.uniform(0, 80, n)])
    y = 50_000 + 20_000 * X[:, 0] + 150 * X[:, 1] - 900 * X[:, 2] + rng.normal(0, 10_000, n)
    path = write_h5(tmp_path / "houses.h5", X, y)
    run = mpirun(3, "--data", path, "--standardize", "--intercept", "--iters", 1000, "--tol", 1e-13,
                 "--quiet", out=str(tmp_path / "r"))
    assert run.returncode == 0, run
    w, b = run.weights
    coef = np.linalg.lstsq(np.column_stack([X, np.ones(n)]), y, rcond=None)[0]
    assert relative_error(w, coef[:3]) <= 1e-8
    assert b == pytest.approx(coef[3], rel=1e-8)


def test_standardize_without_intercept_keeps_the_model(problem, tmp_path):
    X, y, path = problem
    run = mpirun(2, "--data", path, "--standardize", "--iters", 500, "--tol", 1e-13, "--quiet",
                 out=str(tmp_path / "r"))
    assert run.returncode == 0, run
    assert relative_error(run.weights[0], np.linalg.lstsq(X, y, rcond=None)[0]) <= 1e-8


def test_float32_input_and_compute(tmp_path, problem):
    X, y, _ = problem
    path = write_h5(tmp_path / "f32.h5", X.astype(np.float32), y.astype(np.float32))
    run = mpirun(2, "--data", path, "--iters", 300, "--tol", 1e-6, "--quiet", out=str(tmp_path / "r"))
    assert run.returncode == 0, run
    assert run.result["dtype"] == "float32"
    X32, y32 = X.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    assert relative_error(run.weights[0], np.linalg.lstsq(X32, y32, rcond=None)[0]) <= 1e-4
    run64 = mpirun(2, "--data", path, "--dtype", "float64", "--iters", 500, "--tol", 1e-13,
                   "--quiet", out=str(tmp_path / "r64"))
    assert run64.result["dtype"] == "float64"
    assert relative_error(run64.weights[0], np.linalg.lstsq(X32, y32, rcond=None)[0]) <= 1e-8


def test_chunked_gzip_and_column_y_give_the_same_w(tmp_path, problem):
    X, y, path = problem
    args = ["--lr", 2e-4, "--iters", 20, "--tol", 0, "--quiet"]
    plain = mpirun(3, "--data", path, *args, out=str(tmp_path / "a"))
    packed = str(tmp_path / "z.h5")
    with h5py.File(packed, "w") as f:
        f.create_dataset("X", data=X, chunks=(100, 6), compression="gzip")
        f.create_dataset("y", data=y.reshape(-1, 1), chunks=(64, 1), compression="gzip")
    zipped = mpirun(3, "--data", packed, *args, out=str(tmp_path / "b"))
    assert plain.returncode == 0 and zipped.returncode == 0, zipped
    np.testing.assert_array_equal(plain.weights[0], zipped.weights[0])


def test_outputs(problem, tmp_path):
    X, y, path = problem
    out = str(tmp_path / "r")
    run = mpirun(2, "--data", path, "--lr", 2e-4, "--iters", 12, "--tol", 0, "--straggler", "1:0",
                 out=out)
    assert run.returncode == 0, run
    result = run.result
    for key in ("version", "config", "ranks", "workers", "rows", "features", "dtype", "iterations",
                "stop_reason", "final_loss", "grad_norm_rel", "wall_s", "load_s", "phases",
                "per_rank", "imbalance", "slurm", "threads"):
        assert key in result, key
    assert result["config"]["iters"] == 12 and result["config"]["straggler"] == "1:0"
    assert result["threads"]["applied"] == 1  # one BLAS thread per rank when ranks > 1
    for phase in ("compute", "bcast", "reduce", "update", "sync", "comm_wait"):
        assert set(result["phases"][phase]) == {"mean_s", "min_s", "max_s"}
    assert [e["row_range"] for e in result["per_rank"]] == [[0, 502], [502, 1003]]
    with open(os.path.join(out, "history.csv")) as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == result["evaluations"] == 13
    assert float(history[-1]["loss"]) == pytest.approx(result["final_loss"], rel=1e-15)
    assert list(history[0]) == ["iteration", "loss", "grad_norm", "compute_max_s", "bcast_max_s",
                                "reduce_max_s", "update_max_s", "sync_max_s", "comm_wait_max_s"]
    with h5py.File(os.path.join(out, "weights.h5"), "r") as f:
        assert f["w"].shape == (6,) and f.attrs["iters"] == 12
    # The console summary, printed once.
    assert run.stdout.count("phase") == 1 and "imbalance" in run.stdout and out in run.stdout


def test_existing_result_needs_force(problem, tmp_path):
    _, _, path = problem
    out = str(tmp_path / "r")
    args = ["--data", path, "--iters", 3, "--quiet"]
    assert mpirun(2, *args, out=out).returncode == 0
    again = mpirun(2, *args, out=out)
    assert again.returncode != 0 and "--force" in again.stderr
    assert mpirun(2, *args, "--force", out=out).returncode == 0


@pytest.mark.parametrize("slow_rank", [1, 0])
def test_straggler_time_shows_as_the_others_sync(problem, tmp_path, slow_rank):
    _, _, path = problem
    delay, iters = 0.05, 20
    run = mpirun(2, "--data", path, "--lr", 2e-4, "--iters", iters, "--tol", 0, "--quiet",
                 "--straggler", f"{slow_rank}:{delay}", out=str(tmp_path / "r"))
    assert run.returncode == 0, run
    result = run.result
    injected = delay * result["evaluations"]
    slow, other = result["per_rank"][slow_rank], result["per_rank"][1 - slow_rank]
    assert slow["compute_s"] >= injected
    assert abs(other["sync_s"] - injected) <= 0.1 * injected, other
    assert other["reduce_s"] <= 0.1 * injected and other["bcast_s"] <= 0.1 * injected, other
    assert slow["sync_s"] <= 0.1 * injected, slow
    assert result["imbalance"] > 1.5


def test_default_main_job(tmp_path):
    # `mpirun -n 2 python -m mpigd`, no options: embedded data, generated once, then reused.
    first = mpirun(2, cwd=tmp_path)
    assert first.returncode == 0, first
    assert "generated the default data set" in first.stdout and "results:" in first.stdout
    runs = [p for p in os.listdir(tmp_path / "runs") if p != "default-data"]
    assert len(runs) == 1
    # The demo must show training, not 4 iterations of a trivial problem, and converge at
    # the default --iters.
    with open(tmp_path / "runs" / runs[0] / "result.json") as handle:
        result = json.load(handle)
    assert result["stop_reason"] == "converged" and 300 < result["iterations"] < 1000, result
    second = mpirun(2, "--quiet", cwd=tmp_path)
    assert second.returncode == 0 and "generated" not in second.stdout, second
    assert len(os.listdir(tmp_path / "runs")) == 3


def test_each_rank_holds_only_its_shard_in_memory(tmp_path):
    # 176 MB of X and y over 4 ranks: 44 MB each. A rank that read the whole file (or a
    # second copy of its shard) would exceed the bound by far.
    from conftest import python_m

    big = tmp_path / "big.h5"
    assert python_m("generate", "--rows", 2_000_000, "--features", 10, "--out", big).returncode == 0
    tiny = tmp_path / "tiny.h5"
    assert python_m("generate", "--rows", 1000, "--features", 10, "--out", tiny).returncode == 0
    args = ["--iters", 3, "--quiet"]
    baseline = mpirun(4, "--data", tiny, *args, out=str(tmp_path / "a")).result
    loaded = mpirun(4, "--data", big, *args, out=str(tmp_path / "b")).result
    shard_mb = 500_000 * 11 * 8 / 2**20
    for base, entry in zip(baseline["per_rank"], loaded["per_rank"]):
        assert entry["rows"] == 500_000
        growth = entry["peak_rss_mb"] - base["peak_rss_mb"]
        assert growth <= 1.15 * shard_mb + 16, (entry["rank"], growth, shard_mb)


def test_a_run_that_stops_short_of_the_tolerance_says_so(tmp_path):
    # Features on very different scales: plain GD crawls, 20 iterations are far from 1e-6.
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.standard_normal(500), 1000 * rng.standard_normal(500)])
    y = X @ np.array([1.0, 0.001]) + 0.1 * rng.standard_normal(500)
    path = write_h5(tmp_path / "scales.h5", X, y)
    run = mpirun(2, "--data", path, "--iters", 20, out=str(tmp_path / "r"))
    assert run.returncode == 0, run
    assert run.result["converged"] is False and run.result["stop_reason"] == "max_iters"
    assert run.result["more_iterations_estimate"] is None or run.result["more_iterations_estimate"] > 0
    assert "NOT CONVERGED: |g|/|g0| =" in run.stdout and "asked <= 1e-06 (--tol)" in run.stdout, run
    assert "--standardize --intercept" in run.stdout
    done = mpirun(2, "--data", path, "--iters", 20, "--standardize", out=str(tmp_path / "s"))
    assert done.result["converged"] is True and "NOT CONVERGED" not in done.stdout, done
    timing = mpirun(2, "--data", path, "--iters", 5, "--tol", 0, out=str(tmp_path / "t"))
    assert timing.result["converged"] is False and "NOT CONVERGED" not in timing.stdout  # --tol 0
