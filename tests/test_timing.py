"""Attribution of the Barrier's wait, and the clock alignment, on tables with known answers."""

import json
import os

import numpy as np
import pytest

from conftest import mpirun
from mpigd.clocks import Alignment, aligned_starts
from mpigd.timing import BCAST, COMM_WAIT, COMPUTE, MEASURED, PHASES, REDUCE, SYNC, attribute_waits


def table(compute, barrier):
    """(ranks x 1 iteration x MEASURED) with the given compute and Barrier wait per rank."""
    t = np.zeros((len(compute), 1, len(MEASURED)))
    t[:, 0, COMPUTE], t[:, 0, SYNC] = compute, barrier
    return t


def test_a_straggler_is_sync():
    # Rank 1 computes 50 ms longer; rank 0 waits 50 ms (+0.1 ms of Barrier latency).
    split = attribute_waits(table([0.010, 0.060], [0.0501, 0.0001]))
    assert split.shape[2] == len(PHASES)
    assert split[0, 0, SYNC] == pytest.approx(0.050) and split[0, 0, COMM_WAIT] == pytest.approx(1e-4)
    assert split[1, 0, SYNC] == 0 and split[1, 0, COMM_WAIT] == pytest.approx(1e-4)


def test_a_late_message_is_comm_wait():
    # Equal compute; rank 1 received w 5 ms late, so rank 0 waits 5 ms: network, not a straggler.
    split = attribute_waits(table([0.010, 0.010], [0.005, 0.0]))
    assert split[0, 0, SYNC] == 0 and split[0, 0, COMM_WAIT] == pytest.approx(0.005)


def test_both_causes_split_and_sum_to_the_wait():
    rng = np.random.default_rng(1)
    measured = np.zeros((4, 50, len(MEASURED)))
    measured[:, :, COMPUTE] = rng.uniform(0.01, 0.02, (4, 50))
    measured[:, :, SYNC] = rng.uniform(0, 0.02, (4, 50))
    split = attribute_waits(measured)
    assert np.all(split[:, :, SYNC] >= 0) and np.all(split[:, :, COMM_WAIT] >= 0)
    np.testing.assert_allclose(split[:, :, SYNC] + split[:, :, COMM_WAIT], measured[:, :, SYNC])
    slowest = measured[:, :, COMPUTE].max(axis=0)
    assert np.all(split[:, :, SYNC] <= slowest - measured[:, :, COMPUTE] + 1e-15)
    for phase in (COMPUTE, BCAST, REDUCE):
        np.testing.assert_array_equal(split[:, :, phase], measured[:, :, phase])


def test_alignment_removes_an_offset_and_a_drift():
    # Rank 1's clock is 7 s ahead at t=100 and gains 10 ppm; round trips of 40 us.
    offset = lambda t: 7.0 + 10e-6 * (t - 100.0)  # noqa: E731
    before = np.array([[0.0, 0.0, 100.0], [offset(100.0), 40e-6, 100.0]])
    after = np.array([[0.0, 0.0, 200.0], [offset(200.0), 40e-6, 200.0]])
    alignment = Alignment(before, after)
    t_root = np.array([120.0, 150.0, 199.0])
    np.testing.assert_allclose(alignment.to_root(1, t_root + offset(t_root)), t_root, atol=1e-9)
    assert alignment.uncertainty_s(1) == pytest.approx(20e-6)
    [_, rank1] = alignment.summary()
    assert rank1["drift_ppm"] == pytest.approx(10.0) and rank1["offset_s_start"] == 7.0
    starts = np.vstack([t_root, t_root + offset(t_root)])
    np.testing.assert_allclose(aligned_starts(alignment, starts), [t_root - 120, t_root - 120],
                               atol=1e-9)


def test_trace_orders_every_receive_after_its_send(problem, tmp_path):
    """On one timeline, a worker's Bcast ends after the server's began, and the server's
    Reduce ends after every worker's began (within the recorded clock uncertainty)."""
    _, _, path = problem
    out = str(tmp_path / "r")
    run = mpirun(3, "--data", path, "--iters", 15, "--tol", 0, "--lr", 1e-4, "--trace", "--quiet",
                 out=out)
    assert run.returncode == 0, run
    with open(os.path.join(out, "trace.json")) as handle:
        trace = json.load(handle)
    slack = {c["rank"]: c["uncertainty_s"] * 1e6 for c in trace["otherData"]["clocks"]}
    spans = {}
    for e in trace["traceEvents"]:
        if e.get("ph") == "X":
            spans[(e["tid"], e["args"]["iteration"], e["name"])] = (e["ts"], e["ts"] + e["dur"])
    iterations = {key[1] for key in spans}
    for i in iterations:
        sent = spans[(0, i, "bcast")][0] if (0, i, "bcast") in spans else None
        for rank in (1, 2):
            if sent is not None and (rank, i, "bcast") in spans:
                assert spans[(rank, i, "bcast")][1] >= sent - slack[rank], (rank, i)
            if (0, i, "reduce") in spans and (rank, i, "reduce") in spans:
                assert spans[(0, i, "reduce")][1] >= spans[(rank, i, "reduce")][0] - slack[rank]
    assert len(iterations) == 16
    result = run.result
    assert [c["rank"] for c in result["clocks"]["per_rank"]] == [0, 1, 2]
