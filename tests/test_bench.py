"""`python -m mpigd bench` end to end on tiny shards: it runs, alone and under mpirun, and
its --json carries every measurement the table shows."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mpirun, python_m

TINY = ("--rows-mb", "2", "--features", "10,100", "--repeat", "1", "--comm-iters", "50",
        "--train-iters", "3", "--generate-rows", "20000")


def test_bench_alone_runs_everything_and_has_all_keys(tmp_path):
    proc = python_m("bench", *TINY, "--json", "--work-dir", tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("kernels", "comm", "clock_s", "clock_pct", "reference_iteration_s", "memory",
                "startup_s", "scaling", "load", "generate"):
        assert key in result, key
    assert [(c["dtype"], c["features"]) for c in result["kernels"]] == [
        ("float64", 10), ("float64", 100), ("float32", 10), ("float32", 100)]
    for case in result["kernels"]:
        assert case["probe_s"] > 0 and case["blas"]["pct_of_floor"] > 0
        # the floor is the faster of the two reads
        assert case["probe_s"] == min(case["probe_dot_s"], case["probe_or_s"])
    assert result["comm"]["ranks"] == 2 and result["comm"]["ratio"] > 0
    assert set(result["memory"]["runs"]) == {"1", "2"}
    assert result["scaling"]["ceiling"] > 0 and result["scaling"]["speedup"] > 0
    assert result["scaling"]["kernel"]["name"] in ("blas", "numba")
    load = result["load"]
    assert load["plain_s"] > 0 and load["mpigd_s"] > 0 and len(load["mpigd_all_s"]) >= 3
    assert load["ratio"] == pytest.approx(load["mpigd_s"] / load["plain_s"])


def test_bench_table_under_mpirun(tmp_path):
    run = mpirun(2, "bench", *TINY, "--dtype", "float64", timeout=120)
    assert run.returncode == 0, run
    assert "kernel blas" in run.stdout and "bare Bcast+Reduce (2 ranks" in run.stdout
    assert "start-up, tiny" not in run.stdout  # runs of its own are skipped under mpirun
    assert "mpigd load" not in run.stdout  # the load row is measured by the bench alone
    assert "skipped under mpirun" in run.stdout
    assert run.stdout.count("mpigd bench:") == 1  # rank 0 alone prints


@pytest.mark.parametrize("args,message", [
    (("--features", "10,x"), "--features must be a comma-separated list"),
    (("--dtype", "float16"), "--dtype takes float64 and/or float32"),
    (("--repeat", "0"), "must be positive"),
    (("--generate-rows", "-1"), "--generate-rows must be >= 0"),
    (("--part", "generate", "--generate-rows", "0"), "start it without mpirun, with --generate-rows >= 1"),
])
def test_bench_bad_arguments(args, message):
    proc = python_m("bench", *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_bench_generate_part_times_both_rank_counts_and_cleans_up(tmp_path):
    proc = python_m("bench", "--part", "generate", "--generate-rows", "30000", "--repeat", "2",
                    "--json", "--work-dir", tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    g = json.loads(proc.stdout)["generate"]
    assert (g["rows"], g["features"], g["bytes"]) == (30000, 40, 30000 * 40 * 8)
    for kind in ("new", "replace"):
        for ranks in (1, 2):
            times = g[f"{kind}_{ranks}_all_s"]
            assert len(times) == 2 and min(times) > 0
            assert g[f"{kind}_{ranks}_s"] == pytest.approx(sorted(times)[1] / 2 + sorted(times)[0] / 2)
        assert g[f"{kind}_speedup"] == pytest.approx(g[f"{kind}_1_s"] / g[f"{kind}_2_s"])
    assert len(g["remove_all_s"]) == 2  # the second round removes the first round's two files
    assert list(tmp_path.iterdir()) == []  # its files, parts directories and work dir are gone


def test_bench_generate_part_under_mpirun_is_refused():
    run = mpirun(2, "bench", "--part", "generate", "--generate-rows", "1000", timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("launches its own 1- and 2-rank runs") == 1, run.stderr


def test_bench_without_numba_falls_back_to_blas():
    # numba made unimportable: the numba rows say so, BLAS is measured, nothing fails.
    code = ("import sys; sys.modules['numba'] = None; from mpigd.cli import main; "
            "sys.exit(main(['bench', '--rows-mb', '1', '--features', '10', '--dtype', 'float64', "
            "'--repeat', '1', '--no-runs']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "numba not installed" in proc.stdout and "kernel blas" in proc.stdout
    assert "mpigd load (read+check+checksum)" in proc.stdout  # --no-runs keeps the load row
    assert "kernel numba" in proc.stdout and "not installed" in proc.stdout


def test_kernel_anatomy_script_prints_every_rate():
    pytest.importorskip("numba")
    script = Path(__file__).resolve().parents[1] / "scripts" / "kernel_anatomy.py"
    proc = subprocess.run([sys.executable, str(script), "100", "float32", "4"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    rates = dict(re.findall(r"^  (\S.*?\S)\s+([\d.]+) GB/s", proc.stdout, re.MULTILINE))
    assert set(rates) == {"floor (OR), memory", "kernel, memory", "floor (OR), L2", "kernel, L2",
                          "no-overlap estimate"}, proc.stdout
    assert all(float(v) > 0 for v in rates.values())
