"""bench-comm: the Hockney fit on timings with known constants, and the real benchmark under mpirun."""

import json

import numpy as np
import pytest

from conftest import mpirun
from mpigd.studies.commbench import message_sizes, parse_size
from mpigd.studies.hockney import fit_hockney, fit_segments, iteration_comm, predict, tree_factor

SIZES = [8 << k for k in range(24)]  # 8 B ... 64 MB, as the benchmark's default range


def timings(sizes, alpha, beta, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    exact = alpha + np.asarray(sizes, dtype=float) * beta
    return exact * (1 + noise * rng.uniform(-1, 1, len(sizes)))


@pytest.mark.parametrize("alpha,beta", [(2e-6, 1e-10), (5e-5, 2e-9), (3e-7, 5e-11)])
def test_fit_recovers_alpha_and_beta_exactly_without_noise(alpha, beta):
    a, b = fit_hockney(SIZES, timings(SIZES, alpha, beta))
    assert a == pytest.approx(alpha, rel=1e-9) and b == pytest.approx(beta, rel=1e-9)


def test_fit_recovers_alpha_and_beta_from_noisy_timings():
    alpha, beta = 2e-6, 1e-10  # 2 us latency, 10 GB/s
    a, b = fit_hockney(SIZES, timings(SIZES, alpha, beta, noise=0.05, seed=3))
    assert a == pytest.approx(alpha, rel=0.05) and b == pytest.approx(beta, rel=0.05)


def test_latency_is_not_swamped_by_large_messages():
    # Unweighted least squares would get alpha wrong by far more than alpha itself here.
    sizes = [8, 64, 512, 4096, 1 << 20, 16 << 20, 64 << 20]
    a, _ = fit_hockney(sizes, timings(sizes, 1e-6, 2e-10, noise=0.02, seed=1))
    assert a == pytest.approx(1e-6, rel=0.05)


def test_a_protocol_switch_gives_two_lines_each_recovered():
    small = [s for s in SIZES if s <= 32768]
    large = [s for s in SIZES if s > 32768]
    t = np.concatenate([timings(small, 1e-6, 1e-10), timings(large, 30e-6, 3e-10)])
    segments = fit_segments(SIZES, t)
    assert len(segments) == 2
    (f1, l1, a1, b1), (f2, l2, a2, b2) = segments
    assert (f1, l1, f2, l2) == (8, 32768, 65536, 64 << 20)
    assert a1 == pytest.approx(1e-6, rel=1e-6) and b1 == pytest.approx(1e-10, rel=1e-6)
    assert a2 == pytest.approx(30e-6, rel=1e-6) and b2 == pytest.approx(3e-10, rel=1e-6)


def test_one_line_is_kept_when_it_fits():
    assert len(fit_segments(SIZES, timings(SIZES, 2e-6, 1e-10, noise=0.05))) == 1


def test_one_noisy_size_is_not_taken_for_a_protocol_switch():
    sizes = [8 << k for k in range(9)]                      # 8 B ... 2 KB, as the sweep measures
    t = timings(sizes, 1e-6, 7e-11, noise=0.03, seed=2)
    t[0] *= 1.9                                             # one round hit by the scheduler
    [(first, last, alpha, beta)] = fit_segments(sizes, t)
    assert (first, last) == (8, 2048) and alpha == pytest.approx(1e-6, rel=0.25)


def test_tree_factor_is_ceil_log2():
    assert [tree_factor(p) for p in (1, 2, 3, 4, 5, 8, 9, 64, 65)] == [0, 1, 2, 2, 3, 3, 4, 6, 7]


def _model(fits):
    segment = {"first_bytes": 8, "last_bytes": 1 << 20}
    return {"kind": "mpigd comm model", "fits": {
        str(p): {"collectives": {name: {"segments": [{**segment, "alpha_s": a, "beta_s_per_byte": b}]}
                                 for name, (a, b) in fits[p].items()}} for p in fits}}


def test_prediction_uses_the_measured_rank_count_and_the_tree_factor_elsewhere():
    model = _model({2: {"bcast": (4e-6, 1e-9), "reduce": (6e-6, 2e-9), "barrier": (1e-6, 0.0)}})
    n = 1000
    at2 = 4e-6 + n * 1e-9
    assert predict(model, "bcast", 2, n) == (pytest.approx(at2), "measured")
    assert predict(model, "bcast", 8, n) == (pytest.approx(3 * at2), "tree")      # log2 8 = 3 steps
    assert predict(model, "bcast", 5, n) == (pytest.approx(3 * at2), "tree")      # ceil(log2 5) = 3
    assert predict(model, "bcast", 1, n) == (0.0, "tree")
    assert predict(model, "allreduce", 2, n) == (None, None)
    comm, source = iteration_comm(model, 2, features=9)  # d+1 = 10 doubles = 80 bytes
    assert source == "measured"
    assert comm == pytest.approx((4e-6 + 80e-9) + 1e-6 + (6e-6 + 160e-9))
    assert iteration_comm(model, 2, 9, mode="allreduce") == (None, None)


def test_sizes_and_units():
    sizes = [parse_size(t) for t in ("8", "8B", "4K", "4kb", "64M", "1G")]
    assert sizes == [8, 8, 4096, 4096, 64 << 20, 1 << 30]
    assert message_sizes(8, 1024) == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert message_sizes(100, 1000) == [128, 256, 512]


def test_bench_comm_under_mpirun_writes_a_valid_model_and_merges_rank_counts(tmp_path):
    path = str(tmp_path / "comm_model.json")
    quick = ["--max-size", "1K", "--iters", 50, "--iters-large", 5, "--warmup", 5, "--out", path]
    run = mpirun(2, "bench-comm", *quick)
    assert run.returncode == 0, run
    assert "# mpigd bench-comm: MPI_Bcast, 2 ranks" in run.stdout
    assert "Avg Latency(us)" in run.stdout and "Hockney fit" in run.stdout
    with open(path) as handle:
        model = json.load(handle)
    entry = model["fits"]["2"]
    assert entry["ranks"] == 2 and len(entry["hosts"]) == 2
    assert set(entry["collectives"]) == {"bcast", "reduce", "allreduce", "barrier", "iteration",
                                         "iteration-allreduce"}
    for name, fit in entry["collectives"].items():
        expected = [0] if name == "barrier" else [8, 16, 32, 64, 128, 256, 512, 1024]
        assert [s["bytes"] for s in fit["samples"]] == expected
        for s in fit["samples"]:
            assert 0 < s["min_s"] <= s["avg_s"] <= s["max_s"] < 0.1 and s["iterations"] == 50
        assert fit["segments"] and all(seg["alpha_s"] >= 0 and seg["beta_s_per_byte"] >= 0
                                       for seg in fit["segments"])
        assert fit["segments"][0]["alpha_s"] > 0
    assert iteration_comm(model, 2, 32)[1] == "measured"

    again = mpirun(1, "bench-comm", *quick, "--quiet")
    assert again.returncode == 0, again
    with open(path) as handle:
        merged = json.load(handle)
    assert list(merged["fits"]) == ["1", "2"] and merged["fits"]["2"] == entry


@pytest.mark.parametrize("args,message", [
    (["--min-size", "1K", "--max-size", "8"], "--min-size <= --max-size"),
    (["--max-size", "12 parsecs"], "message size must look like"),
    (["--collectives", "bcast,gather"], "--collectives must name some of"),
    (["--iters", "0"], "--iters must be >= 1"),
])
def test_bad_arguments_give_one_message(args, message):
    run = mpirun(2, "bench-comm", *args)
    assert run.returncode == 2 and run.stderr.count("mpigd: error") == 1, run
    assert message in run.stderr


def test_a_corrupt_model_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "comm_model.json"
    path.write_text("{ not json")
    run = mpirun(2, "bench-comm", "--max-size", "64", "--iters", 5, "--out", str(path))
    assert run.returncode == 2 and run.stderr.count("mpigd: error") == 1, run
    assert "not valid JSON" in run.stderr
    assert path.read_text() == "{ not json"
