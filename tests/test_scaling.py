"""Scaling sweeps and reports, with real mpirun runs (small data, few iterations)."""

import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import h5py
import pytest

from conftest import mpirun
from mpigd.launch import find_mpiexec, launcher_argv
from mpigd.studies.scaling import infer_kind, speedups

SWEEP_TIMEOUT = 240


def scale(*args, timeout=SWEEP_TIMEOUT):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mpigd", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    proc.seconds = time.perf_counter() - started
    return proc


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


STRONG = ["--ranks", "1,2,3", "--rows", 3000, "--features", 6, "--iters", 5, "--repeat", 2]


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    out = tmp_path_factory.mktemp("strong") / "sweep"
    proc = scale("scale", *STRONG, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_strong_sweep_writes_consistent_files(strong):
    out, proc = strong
    rows = read_csv(out / "scaling.csv")
    report = read_json(out / "scaling.json")
    assert [int(r["ranks"]) for r in rows] == [1, 2, 3]
    [series] = report["series"]
    assert series["kind"] == "strong" and series["mode"] == "server" and series["baseline_ranks"] == 1
    points = series["points"]
    for row, point in zip(rows, points):
        assert float(row["s_per_iter"]) == point["s_per_iter"]
        assert float(row["speedup"]) == point["speedup"]
        assert point["repeats"] == 2 and len(point["run_dirs"]) == 2
        results = [read_json(os.path.join(d, "result.json")) for d in point["run_dirs"]]
        assert all(r["ranks"] == point["ranks"] and r["rows"] == 3000 and r["iterations"] == 5
                   for r in results)
        assert point["s_per_iter"] == statistics.median(r["s_per_iter"] for r in results)
    assert points[0]["speedup"] == 1.0 and rows[0]["speedup"] == "1.0"   # exactly, by definition
    assert points[0]["efficiency"] == 1.0
    for p in points:
        assert p["speedup"] == pytest.approx(points[0]["s_per_iter"] / p["s_per_iter"], rel=1e-15)
        assert p["efficiency"] == pytest.approx(p["speedup"] / p["ranks"], rel=1e-15)
        # every rank count was benchmarked, so every point has a prediction from measured fits
        assert p["predicted_s"] > 0 and p["model_source"] == "measured"
        assert p["error"] == pytest.approx(p["predicted_s"] / p["s_per_iter"] - 1)
    assert sorted(read_json(out / "comm_model.json")["fits"]) == ["1", "2", "3"]
    assert read_json(out / "sweep.json")["ranks"] == [1, 2, 3]
    table = (out / "scaling.txt").read_text()
    assert table in proc.stdout and "predicted" in table and "speedup" in table
    flagged = [line for line in table.splitlines() if "oversubscribed (" in line]
    assert [line.split()[0] for line in flagged] == [str(m) for m in (1, 2, 3) if m > os.cpu_count()]


def test_rerunning_a_sweep_reuses_its_runs_and_a_different_one_is_refused(strong):
    out, _ = strong
    before = os.path.getmtime(out / "p002-r1" / "result.json")
    again = scale("scale", *STRONG, "--out", out)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reusing") == 6 and "bench-comm:" not in again.stdout
    assert os.path.getmtime(out / "p002-r1" / "result.json") == before
    other = scale("scale", *STRONG[:-2], "--repeat", 3, "--out", out)
    assert other.returncode == 2 and "holds a different sweep (repeat: 2 -> 3)" in other.stderr


def test_scale_report_on_a_directory_of_runs(problem, tmp_path, strong):
    _, _, path = problem
    runs = tmp_path / "collected"
    for ranks, where in ((1, "job-1"), (2, "deep/job-2"), (2, "deep/job-2b")):
        run = mpirun(ranks, "--data", path, "--iters", 4, "--tol", 0, "--quiet", out=str(runs / where))
        assert run.returncode == 0, run
    report_dir = tmp_path / "report"
    proc = scale("scale-report", runs, "--out", report_dir)
    assert proc.returncode == 0, proc.stderr
    assert "no comm_model.json" in proc.stdout
    [series] = read_json(report_dir / "scaling.json")["series"]
    assert [(p["ranks"], p["repeats"]) for p in series["points"]] == [(1, 1), (2, 2)]
    assert series["points"][0]["speedup"] == 1.0 and series["points"][0]["predicted_s"] is None
    assert len(read_csv(report_dir / "scaling.csv")) == 2 and (report_dir / "scaling.txt").exists()

    model = strong[0] / "comm_model.json"
    proc = scale("scale-report", runs, "--model", model)          # default --out: the runs dir
    assert proc.returncode == 0, proc.stderr
    points = read_json(runs / "scaling.json")["series"][0]["points"]
    assert all(p["predicted_s"] > 0 for p in points) and "no comm_model.json" not in proc.stdout


def test_scale_report_groups_by_trainer_mode(strong, tmp_path):
    # Runs of the peer-to-peer mode carry "mode": "allreduce" in result.json; a copy of real
    # runs relabelled that way must become its own curve, predicted with Allreduce.
    out, _ = strong
    for mode in ("server", "allreduce"):
        for name in ("p001-r1", "p002-r1"):
            target = tmp_path / "runs" / mode / name
            shutil.copytree(out / name, target)
            result = read_json(target / "result.json")
            if mode == "allreduce":
                result["mode"] = "allreduce"
            (target / "result.json").write_text(json.dumps(result))
    proc = scale("scale-report", tmp_path / "runs", "--model", out / "comm_model.json")
    assert proc.returncode == 0, proc.stderr
    series = read_json(tmp_path / "runs" / "scaling.json")["series"]
    assert sorted(s["mode"] for s in series) == ["allreduce", "server"]
    by_mode = {s["mode"]: s["points"] for s in series}
    assert [p["ranks"] for p in by_mode["allreduce"]] == [1, 2]
    assert by_mode["allreduce"][1]["predicted_comm_s"] != by_mode["server"][1]["predicted_comm_s"]
    assert "allreduce mode" in proc.stdout and "server mode" in proc.stdout


def test_scale_report_needs_runs(tmp_path):
    proc = scale("scale-report", tmp_path)
    assert proc.returncode == 2 and "no result.json below" in proc.stderr


def test_weak_sweep_keeps_rows_per_rank(tmp_path):
    out = tmp_path / "weak"
    proc = scale("scale", "--mode", "weak", "--ranks", "1,2", "--rows", 1500, "--features", 5, "--iters", 4,
                 "--repeat", 1, "--comm-model", "none", "--out", out)
    assert proc.returncode == 0, proc.stderr
    for rows in (1500, 3000):
        with h5py.File(out / "data" / f"synthetic-{rows}x5-seed0.h5") as f:
            assert f["X"].shape == (rows, 5)
    [series] = read_json(out / "scaling.json")["series"]
    assert series["kind"] == "weak" and series["problem"] == "1500 rows/worker"
    one, two = series["points"]
    assert (one["rows"], two["rows"]) == (1500, 3000) and one["speedup"] == 1.0
    assert two["efficiency"] == pytest.approx(one["s_per_iter"] / two["s_per_iter"])
    assert two["speedup"] == pytest.approx(2 * one["s_per_iter"] / two["s_per_iter"])
    assert infer_kind([{"rows": 1500, "workers": 1, "ranks": 1},
                       {"rows": 3000, "workers": 2, "ranks": 2}]) == "weak"


def test_straggler_study_shows_the_wall_following_the_slowest_rank(tmp_path):
    out = tmp_path / "straggler"
    delay = 0.05  # large next to a loaded machine's scheduling noise (0.01 failed once under load)
    proc = scale("scale", "--ranks", "2", "--rows", 2000, "--features", 4, "--iters", 6, "--repeat", 1,
                 "--straggler-delays", f"0,{delay}", "--comm-model", "none", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "straggler study, server mode, 2 ranks" in proc.stdout
    assert "the wall follows the slowest rank" in proc.stdout
    report = read_json(out / "scaling.json")
    [effect] = report["stragglers"]
    assert effect["follows_slowest"]
    assert effect["wall_slope"] == pytest.approx(1.0, abs=0.3)       # every ms of delay is paid
    assert effect["slowest_slope"] == pytest.approx(1.0, abs=0.3)
    assert effect["mean_compute_slope"] == pytest.approx(0.5, abs=0.2)  # the mean would hide it
    slow = next(s for s in report["series"] if s["straggle_s"] == delay)
    [point] = slow["points"]
    result = read_json(os.path.join(point["run_dirs"][0], "result.json"))
    assert result["config"]["straggler"] == f"1:{delay}"
    # The fast rank 0 spends the delay waiting in sync, the straggler does not.
    waits = [r["sync_s"] / result["evaluations"] for r in result["per_rank"]]
    assert waits[0] == pytest.approx(delay, rel=0.3) and waits[1] < 0.3 * delay


def test_a_failed_run_fails_the_sweep_with_its_stderr_once(tmp_path):
    proc = scale("scale", "--ranks", "1,2", "--rows", 500, "--features", 3, "--iters", 3, "--repeat", 1,
                 "--train-args=--lr -1", "--comm-model", "none", "--out", tmp_path / "s")
    assert proc.returncode == 2
    assert proc.stderr.count("--lr must be > 0") == 1, proc.stderr
    assert "run " in proc.stderr and "p001-r1 failed (exit code 2)" in proc.stderr
    assert not (tmp_path / "s" / "scaling.csv").exists()


def _processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_a_run_past_its_timeout_is_killed_with_all_its_ranks(tmp_path):
    out = tmp_path / "slow"
    proc = scale("scale", "--ranks", "2", "--rows", 500, "--features", 3, "--iters", 3, "--repeat", 1,
                 "--straggler-delays", "5", "--timeout", 2, "--comm-model", "none", "--out", out)
    assert proc.returncode == 2 and "did not finish within --timeout 2 s" in proc.stderr, proc.stderr
    assert proc.seconds < 20
    time.sleep(0.5)
    assert _processes_mentioning(str(out)) == []


@pytest.mark.parametrize("args,message", [
    (["--ranks", "0,1"], "--ranks needs rank counts >= 1"),
    (["--ranks", "1,x"], "comma-separated list of integers"),
    (["--launcher", "mpirun -np 2"], "--launcher must contain {n}"),
    (["--launcher", "no-such-launcher -n {n}"], "is not an executable on PATH"),
    (["--train-args=--iters 3"], "--train-args may not set --iters"),
    (["--mode", "weak", "--data", "x.h5"], "--data is for strong scaling"),
    (["--straggler-delays", "0,-1"], "--straggler-delays must be finite seconds >= 0"),
    (["--straggler-rank", "2", "--ranks", "1,2"], "--straggler-rank 2 does not exist"),
    (["--train-args=--dedicated-server"], "--dedicated-server needs at least 2 ranks"),
    (["--comm-model", "missing.json"], "cannot read the communication model missing.json"),
])
def test_bad_sweep_options_give_one_message_and_run_nothing(tmp_path, args, message):
    proc = scale("scale", *args, "--out", tmp_path / "s")
    assert proc.returncode == 2 and proc.stderr.count("mpigd: error") == 1, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "s").exists()


def test_launcher_template():
    mpiexec = find_mpiexec()
    argv = launcher_argv(f'{shlex.quote(mpiexec)} -n {{n}} -genv MPIGD_NOTE "a b"', 4)
    assert argv == [mpiexec, "-n", "4", "-genv", "MPIGD_NOTE", "a b"]


def test_speedup_is_relative_to_the_smallest_rank_count():
    points = [{"ranks": m, "s_per_iter": t} for m, t in ((2, 0.3), (4, 0.2), (8, 0.1))]
    speedups(points, "strong")
    assert points[0]["speedup"] == 1.0 and points[0]["efficiency"] == 1.0
    assert [p["speedup"] for p in points] == pytest.approx([1.0, 1.5, 3.0], rel=1e-15)
    assert [p["efficiency"] for p in points] == pytest.approx([1.0, 0.75, 0.75], rel=1e-15)
    weak = [{"ranks": 1, "s_per_iter": 0.1}, {"ranks": 4, "s_per_iter": 0.125}]
    speedups(weak, "weak")
    assert [p["speedup"] for p in weak] == pytest.approx([1.0, 3.2]) and weak[1]["efficiency"] == 0.8


SCRIPTS = os.path.join(os.path.dirname(__file__), os.pardir, "scripts")


@pytest.mark.parametrize("script,extra", [("strong_scaling.sh", {}), ("weak_scaling.sh", {}),
                                          ("straggler_study.sh", {"DELAYS": "0,0.05", "ITERS": "5"})])
def test_scripts_run_as_documented(tmp_path, script, extra):
    # The straggler's delay must dwarf scheduling noise on a loaded 2-core machine: with 10 ms
    # over 3 iterations the fit once missed "follows the slowest rank".
    env = {**os.environ, "PYTHON": sys.executable, "RANKS": "1,2", "ROWS": "1000", "FEATURES": "3",
           "ITERS": "3", "REPEAT": "1", "OUT": str(tmp_path / "out"), **extra}
    proc = subprocess.run([os.path.join(SCRIPTS, script), "--comm-model", "none"], env=env, text=True,
                          capture_output=True, timeout=SWEEP_TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "scaling.csv").exists() and (tmp_path / "out" / "speedup.png").exists()
    assert ("the wall follows the slowest rank" in proc.stdout) == (script == "straggler_study.sh")


def test_comm_bench_script_merges_rank_counts(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "RANKS": "1,2", "MAX_SIZE": "64",
           "OUT": str(tmp_path / "comm_model.json")}
    proc = subprocess.run([os.path.join(SCRIPTS, "comm_bench.sh"), "--iters", "20", "--quiet"], env=env,
                          text=True, capture_output=True, timeout=SWEEP_TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert sorted(read_json(tmp_path / "comm_model.json")["fits"]) == ["1", "2"]


def test_every_run_of_a_sweep_uses_the_baseline_kernel(tmp_path):
    # MPIGD_KERNEL=auto chooses by shard size: left alone, a strong sweep would use numba at
    # 1 rank and BLAS at 2 (half the shard), and report the kernels' difference as scaling.
    # Here the threshold sits between the 1-rank shard (256 kB) and the 2-rank one (128 kB).
    pytest.importorskip("numba")
    out = tmp_path / "sweep"
    code = ("import sys; import mpigd.objective as o; o.NUMBA_MIN_BYTES = 200_000; "
            "from mpigd.__main__ import main; main(sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k != "MPIGD_KERNEL"}
    args = ["scale", "--ranks", "1,2", "--rows", 4000, "--features", 8, "--iters", 3, "--repeat", 1,
            "--comm-model", "none", "--out", out]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=SWEEP_TIMEOUT, stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "gradient kernel for every run: numba" in proc.stdout
    for run in ("p001-r1", "p002-r1"):
        assert read_json(out / run / "result.json")["kernel"]["name"] == "numba"
