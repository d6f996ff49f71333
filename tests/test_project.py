"""`python -m mpigd project`: the model's terms, its estimator, and the command on real runs."""

import json
import os

import numpy as np
import pytest

from conftest import mpirun, needs_hydra, python_m
from mpigd.studies.hockney import message_hops
from mpigd.studies.project import parse_quantity
from mpigd.studies.projection import Baseline, Network, expected_max_excess, peak, project


def _baseline(compute=0.01, sd=0.0, n=2000, seed=0):
    noise = np.random.default_rng(seed).standard_normal(n) * sd
    return Baseline(ranks=1, workers=1, rows=10**6, features=100, s_per_iter=compute,
                    compute_s=compute,
                    update_s=1e-5, deviations_s=noise - noise.mean(), deviations_from="test",
                    source="test")


def test_expected_maximum_matches_monte_carlo():
    rng = np.random.default_rng(1)
    draws = rng.exponential(1e-3, 20000)
    deviations = draws - draws.mean()
    for m in (2, 8, 64, 512):
        simulated = np.mean(rng.exponential(1e-3, (4000, m)).max(axis=1)) - 1e-3
        assert expected_max_excess(deviations, m) == pytest.approx(simulated, rel=0.12), m
    assert expected_max_excess(deviations, 1) == 0.0
    # past the samples: a normal tail, growing with m
    few = deviations[:50]
    assert expected_max_excess(few, 1000) > expected_max_excess(few, 100) > 0


def test_terms_follow_the_stated_model():
    base = _baseline()
    net = Network(alpha_s=1.5e-6, beta_s_per_byte=1 / 12e9)
    rows = {r["ranks"]: r for r in project(base, net, [1, 2, 4, 1024], "strong")}
    assert rows[1]["comm_s"] == 0 and rows[1]["speedup"] == pytest.approx(1.0)
    assert rows[4]["compute_s"] == pytest.approx(0.01 / 4)
    hop = 1.5e-6 + 808 / 12e9
    assert rows[4]["comm_s"] == pytest.approx(message_hops("iteration", 4) * hop)
    assert rows[2]["comm_s"] == pytest.approx(2 * hop)  # Barrier + Reduce share a step at p = 2
    assert rows[1024]["comm_s"] == pytest.approx(30 * hop)
    weak = {r["ranks"]: r for r in project(base, net, [1, 1024], "weak")}
    assert weak[1024]["compute_s"] == pytest.approx(0.01)
    assert weak[1024]["efficiency"] == pytest.approx(weak[1]["t_iter_s"] / weak[1024]["t_iter_s"])


def test_relative_noise_shrinks_with_the_compute_absolute_does_not():
    base = _baseline(compute=0.01, sd=1e-3)
    net = Network(alpha_s=1e-6, beta_s_per_byte=1e-10)
    relative = project(base, net, [64], "strong")[0]["sync_s"]
    base.noise = "absolute"
    absolute = project(base, net, [64], "strong")[0]["sync_s"]
    assert relative == pytest.approx(absolute / 64)
    assert project(base, net, [64], "weak")[0]["sync_s"] == pytest.approx(absolute)


def test_a_slower_network_peaks_earlier_and_says_why():
    base = _baseline(compute=0.01, sd=2e-5)
    ranks = [2**k for k in range(13)]
    fast = peak(base, Network(alpha_s=1.5e-6, beta_s_per_byte=1 / 12e9),
                project(base, Network(alpha_s=1.5e-6, beta_s_per_byte=1 / 12e9), ranks, "strong"))
    slow_net = Network(alpha_s=50e-6, beta_s_per_byte=1 / 1.2e9)
    slow = peak(base, slow_net, project(base, slow_net, ranks, "strong"))
    assert slow["ranks"] < fast["ranks"] <= 4096
    assert slow["bound_by"] == "communication"
    assert slow["doubling_saves_compute_s"] < slow["doubling_adds_comm_s"] + slow["doubling_adds_sync_s"]


@pytest.mark.parametrize("text, expected", [("1.5us", 1.5e-6), ("50us", 5e-5), ("2ms", 2e-3),
                                            ("1e-6", 1e-6)])
def test_latency_units(text, expected):
    assert parse_quantity(text, {"s": 1, "ms": 1e-3, "us": 1e-6}, "--latency", "") == pytest.approx(expected)


def test_project_a_measured_run(tmp_path):
    data = tmp_path / "d.h5"
    assert python_m("generate", "--rows", 20000, "--features", 20, "--out", data).returncode == 0
    run = mpirun(1, "--data", data, "--iters", 30, "--tol", 0, "--quiet", "--trace",
                 out=str(tmp_path / "run"))
    assert run.returncode == 0, run
    proc = python_m("project", tmp_path / "run", "--latency", "1.5us", "--bandwidth", "12GB/s",
                    "--ranks", "1,2,4,8,1024,4096", "--out", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    assert "speedup peaks at" in proc.stdout and "trace.json" in proc.stdout
    payload = json.loads((tmp_path / "p" / "projection.json").read_text())
    strong = payload["series"]["strong"]
    assert [r["ranks"] for r in strong] == [1, 2, 4, 8, 1024, 4096]
    assert strong[0]["speedup"] == pytest.approx(1.0)
    assert all(r["t_iter_s"] > 0 and 0 < r["efficiency"] <= 1.0 + 1e-9 for r in strong)
    # the model at the baseline's rank count is the measurement (the fixed term closes it)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert strong[0]["t_iter_s"] == pytest.approx(result["s_per_iter"], rel=1e-9)
    assert strong[0]["compute_s"] + strong[0]["overhead_s"] <= result["s_per_iter"] + 1e-12


@pytest.mark.parametrize("args, message", [
    (["--latency", "1.5us"], "give --latency and --bandwidth together"),
    (["--latency", "fast", "--bandwidth", "1GB/s"], "--latency must be a positive quantity"),
    ([], "no communication model"),
])
def test_bad_options_are_one_message(tmp_path, args, message):
    data = tmp_path / "d.h5"
    assert python_m("generate", "--rows", 500, "--features", 3, "--out", data).returncode == 0
    assert mpirun(1, "--data", data, "--iters", 3, "--quiet", out=str(tmp_path / "run")).returncode == 0
    proc = python_m("project", tmp_path / "run", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_the_sync_term_predicts_a_jittered_run(tmp_path):
    # Every rank sleeps an exponential 5 ms per iteration (--jitter, seeded): from the
    # 1-rank run's trace the model predicts the 2-rank run's wait for the slower rank.
    data = tmp_path / "d.h5"
    assert python_m("generate", "--rows", 4000, "--features", 10, "--out", data).returncode == 0
    common = ("--data", data, "--iters", 150, "--tol", 0, "--jitter", 0.005, "--quiet")
    one = mpirun(1, *common, "--trace", out=str(tmp_path / "one"))
    two = mpirun(2, *common, out=str(tmp_path / "two"))
    assert one.returncode == 0 and two.returncode == 0, (one, two)
    assert two.result["config"]["jitter"] == 0.005
    proc = python_m("project", tmp_path / "one", "--latency", "1us", "--bandwidth", "10GB/s",
                    "--noise", "absolute", "--ranks", "1,2", "--kind", "strong", "--out", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    predicted = json.loads((tmp_path / "p" / "projection.json").read_text())["series"]["strong"][1]
    from mpigd.studies.results import summarize_run

    measured = summarize_run(str(tmp_path / "two" / "result.json"))["sync_s"]
    # E[max of 2] - mean of Exp(5 ms) = 2.5 ms, plus the machine's own noise
    assert predicted["sync_s"] == pytest.approx(measured, rel=0.35)
    assert measured > 0.0015


@needs_hydra
def test_four_emulated_hosts_predicted_from_a_one_and_two_host_fit(tmp_path):
    """The projection's whole time per iteration at 4 hosts, from a fit without 4 hosts."""
    from test_across_hosts import _need_root, cluster_scale

    from mpigd.cluster import Cluster, down
    from mpigd.studies.results import summarize_run
    from mpigd.synthetic import generate

    _need_root()
    root, name = str(tmp_path / "clusters"), f"j{os.getpid() % 100000}"
    data = str(tmp_path / "data.h5")
    generate(data, 40_000, 50)
    cluster = Cluster.up(name, hosts=4, delay_ms=10.0, root=root)
    try:
        proc = cluster_scale(cluster, data, tmp_path / "sweep")
    finally:
        down(name, root)
    assert proc.returncode == 0, proc
    model = json.loads((tmp_path / "sweep" / "comm_model.json").read_text())
    del model["fits"]["4"]
    (tmp_path / "fit-1-2.json").write_text(json.dumps(model))
    proc = python_m("project", tmp_path / "sweep", "--comm-model", tmp_path / "fit-1-2.json",
                    "--ranks", "1,2,4", "--kind", "strong", "--out", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    predicted = json.loads((tmp_path / "p" / "projection.json").read_text())["series"]["strong"][2]
    measured = summarize_run(str(tmp_path / "sweep" / "p004-r1" / "result.json"))["s_per_iter"]
    assert predicted["ranks"] == 4 and predicted["t_iter_s"] == pytest.approx(measured, rel=0.25)
