"""Never hang: a failure on one rank ends every rank promptly, with one clear message."""

import os

import numpy as np
import pytest

from conftest import mpirun, write_h5

DEADLINE_S = 10


def assert_one_clean_error(run, *fragments):
    assert run.returncode != 0, run
    assert run.seconds < DEADLINE_S, f"took {run.seconds:.1f} s"
    assert run.stderr.count("mpigd: error") == 1, run
    for fragment in fragments:
        assert fragment in run.stderr, run
    assert "Traceback" not in run.stderr, run
    if run.out:
        assert not os.path.exists(os.path.join(run.out, "result.json"))


@pytest.mark.parametrize("iteration", [0, 3])
def test_exception_in_the_loop_on_one_rank_ends_the_job(problem, tmp_path, iteration):
    _, _, path = problem
    run = mpirun(3, "--data", path, "--iters", 50, "--tol", 0, "--quiet", out=str(tmp_path / "r"),
                 env={"MPIGD_INJECT_FAULT": f"1:loop:{iteration}"})
    assert run.returncode != 0 and run.seconds < DEADLINE_S, run
    assert "unexpected error on rank 1" in run.stderr and "InjectedFault" in run.stderr
    assert not os.path.exists(tmp_path / "r" / "result.json")


def test_exception_while_loading_on_one_rank_is_agreed(problem, tmp_path):
    _, _, path = problem
    run = mpirun(3, "--data", path, "--quiet", out=str(tmp_path / "r"),
                 env={"MPIGD_INJECT_FAULT": "2:load"})
    assert_one_clean_error(run, "rank 2:", "InjectedFault")
    assert run.returncode == 2
    assert not os.path.exists(tmp_path / "r")  # nothing written, no empty directory left


def test_missing_file(tmp_path):
    run = mpirun(3, "--data", str(tmp_path / "absent.h5"), out=str(tmp_path / "r"))
    assert_one_clean_error(run, "does not exist", "mpigd generate")


def test_wrong_dataset_name(problem, tmp_path):
    _, _, path = problem
    run = mpirun(2, "--data", path, "--x-dataset", "features", out=str(tmp_path / "r"))
    assert_one_clean_error(run, "'features' not found", "datasets there: X, y")


def test_nan_names_the_row(tmp_path):
    X, y = np.ones((40, 3)), np.arange(40.0)
    X[33, 2] = np.nan
    run = mpirun(2, "--data", write_h5(tmp_path / "nan.h5", X, y), out=str(tmp_path / "r"))
    assert_one_clean_error(run, "rank 1:", "X row 33")


def test_fewer_rows_than_workers(tmp_path):
    path = write_h5(tmp_path / "tiny.h5", np.ones((2, 3)), np.ones(2))
    run = mpirun(3, "--data", path, out=str(tmp_path / "r"))
    assert_one_clean_error(run, "2 rows cannot be shared by 3 workers")


def test_unwritable_output(problem, tmp_path):
    _, _, path = problem
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = mpirun(2, "--data", path, out=str(blocker / "sub"))
    assert_one_clean_error(run, "not writable", "--out")


def test_usage_error_is_printed_once(problem):
    _, _, path = problem
    run = mpirun(3, "--data", path, "--iters", "0")
    assert_one_clean_error(run, "--iters must be >= 1")
    run = mpirun(3, "--data", path, "--no-such-option")
    assert_one_clean_error(run, "unrecognized arguments")


@pytest.mark.parametrize("when", ["before MPI", "agreed under MPI"])
def test_silent_ranks_wait_until_rank_0_has_spoken(problem, tmp_path, when):
    # Open MPI ends the job at the first non-zero exit: a silent rank that left before a
    # slow rank 0 had written its line took the only message with it.
    late = {"MPIGD_INJECT_FAULT": "0:report"}
    if when == "before MPI":
        run = mpirun(3, "--data", problem[2], "--iters", "0", env=late)
        assert_one_clean_error(run, "--iters must be >= 1")
    else:
        run = mpirun(3, "--data", problem[2], "--iters", 2, out=str(tmp_path / "run"),
                     env={**late, "MPIGD_KERNEL": "bogus"})
        assert_one_clean_error(run, "MPIGD_KERNEL must be one of")
    assert run.returncode == 2, run


def test_a_rank_that_never_starts_mpi_ends_the_job_with_one_message(problem, tmp_path):
    # MPI_Init waits for every rank, before any watchdog runs: only its deadline ends this.
    run = mpirun(2, "--data", problem[2], "--iters", 2, out=str(tmp_path / "run"),
                 env={"MPIGD_INJECT_FAULT": "1:init", "MPIGD_INIT_TIMEOUT": "3"})
    assert_one_clean_error(run, "MPI did not start within 3 s", "MPIGD_INIT_TIMEOUT")
    assert 3 <= run.seconds < 20, run.seconds


def test_a_bad_init_timeout_is_one_message(problem):
    run = mpirun(2, "--data", problem[2], "--iters", 2, env={"MPIGD_INIT_TIMEOUT": "soon"})
    assert_one_clean_error(run, "MPIGD_INIT_TIMEOUT must be a number of seconds > 0, got 'soon'")
    assert run.returncode == 2, run


def test_dedicated_server_needs_two_ranks(problem, tmp_path):
    _, _, path = problem
    run = mpirun(1, "--data", path, "--dedicated-server", out=str(tmp_path / "r"))
    assert_one_clean_error(run, "at least 2 ranks")


def test_diverging_lr_stops_with_advice(problem, tmp_path):
    _, _, path = problem
    run = mpirun(2, "--data", path, "--lr", 0.5, "--iters", 100, out=str(tmp_path / "r"))
    assert_one_clean_error(run, "diverged", "--lr auto")
    assert os.path.exists(tmp_path / "r" / "history-diverged.csv")


def test_bad_kernel_choice_is_one_message(problem, tmp_path):
    # Every rank reads MPIGD_KERNEL: the error must be agreed, not one abort per rank.
    run = mpirun(2, "--data", problem[2], "--iters", 2, out=str(tmp_path / "run"),
                 env={"MPIGD_KERNEL": "bogus"})
    assert_one_clean_error(run, "MPIGD_KERNEL must be one of auto, blas, numba")
    assert "MPI_Abort" not in run.stderr + run.stdout, run


def test_dedicated_server_with_the_numba_kernel(problem, tmp_path):
    # The server holds no rows (an empty shard for the fused kernel) and records the kernel.
    pytest.importorskip("numba")
    run = mpirun(3, "--data", problem[2], "--iters", 2, "--dedicated-server", "--quiet",
                 out=str(tmp_path / "run"), env={"MPIGD_KERNEL": "numba"})
    assert run.returncode == 0, run
    assert run.result["kernel"]["name"] == "numba"
