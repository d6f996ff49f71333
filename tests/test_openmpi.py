"""What differs between MPI launchers (MPICH's hydra, Open MPI's mpirun), tested with whichever
this interpreter's mpi4py uses: jobs launched from an MPI process, the launcher lookup, and
the progress display when the launcher's output goes to a file.
"""

import os
import subprocess
import sys

import pytest

from conftest import MPI_TIMEOUT, write_h5
from mpigd.console import progress_style
from mpigd.launch import child_env, find_mpiexec, mpi_command, mpi_family


@pytest.fixture
def tiny(tmp_path):
    import numpy as np

    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 4))
    return write_h5(tmp_path / "tiny.h5", X, X @ np.ones(4))


def test_a_job_launched_from_a_process_that_started_mpi_runs(tiny, tmp_path):
    # Open MPI's singleton init puts its runtime's variables into the C environment (not
    # os.environ); a job started with them inherited exits 1 without a word (issue 17).
    code = ("from mpi4py import MPI; assert MPI.Is_initialized(); from mpigd.launch import run_mpigd; "
            f"run_mpigd(2, '--data', {tiny!r}, '--iters', 3, '--quiet', '--out', {str(tmp_path / 'r')!r}, "
            f"timeout={MPI_TIMEOUT})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=2 * MPI_TIMEOUT, stdin=subprocess.DEVNULL, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(tmp_path / "r" / "result.json")


def test_child_env_drops_the_job_state_and_keeps_user_settings():
    rank_env = {"OMPI_COMM_WORLD_RANK": "1", "PMIX_RANK": "1", "PMIX_SERVER_URI41": "x", "PMI_FD": "9",
                "OMPI_MCA_ess": "^singleton", "OMPI_MCA_orte_hnp_uri": "x", "MPI_LOCALRANKID": "1",
                "OMPI_MCA_btl": "self,vader", "OMPI_ALLOW_RUN_AS_ROOT": "1", "PMIX_MCA_gds": "hash",
                "MPIR_CVAR_CH4_NETMOD": "ofi", "HOME": "/root"}
    code = "import json; from mpigd.launch import child_env; print(json.dumps(child_env()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **rank_env}, stdin=subprocess.DEVNULL)
    import json

    kept = json.loads(proc.stdout)
    assert {k for k in rank_env if k in kept} == {"OMPI_MCA_btl", "OMPI_ALLOW_RUN_AS_ROOT", "PMIX_MCA_gds",
                                                  "MPIR_CVAR_CH4_NETMOD", "HOME"}


def test_a_launcher_of_another_mpi_is_refused_with_a_message():
    assert mpi_family() is not None, "mpi4py's library is one mpigd knows"
    code = "from mpigd.launch import default_launcher; default_launcher()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**child_env(), "MPIEXEC": sys.executable}, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert f"$MPIEXEC: {sys.executable} is not a launcher of the MPI that mpi4py uses" in proc.stderr
    # and $MPIEXEC wins over the mpiexec next to sys.executable
    code = "from mpigd.launch import find_mpiexec; print(find_mpiexec())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**child_env(), "MPIEXEC": find_mpiexec()}, stdin=subprocess.DEVNULL)
    assert proc.stdout.strip() == find_mpiexec(), proc.stderr


@pytest.mark.parametrize("style, bar, lines", [("auto", False, True), ("lines", False, True),
                                               ("bar", True, False), ("none", False, False)])
def test_progress_in_a_log_file(tiny, tmp_path, style, bar, lines):
    # Open MPI gives each rank a pseudo-terminal even with `mpirun ... > log`: auto must look
    # at where the launcher writes, not at the rank's own stdout.
    log = tmp_path / "log"
    argv = mpi_command(2, "--data", tiny, "--iters", 20, "--tol", 0, "--lr", 1e-3,
                       "--progress", style, "--out", tmp_path / "r")
    with open(log, "w") as handle:
        proc = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, timeout=MPI_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=child_env({"CI": "", "SLURM_JOB_ID": ""}))
    text = log.read_bytes().decode()  # read_text would turn the bar's \r into \n
    assert proc.returncode == 0, text
    assert ("\r  [" in text) == bar and ("  iter     20/20" in text) == lines, text


def test_progress_auto_on_a_terminal_is_a_bar_unless_batch_or_ci():
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal:
            assert progress_style(terminal, environ={}) == "bar"
            assert progress_style(terminal, environ={"CI": "true"}) == "lines"
            assert progress_style(terminal, environ={"SLURM_JOB_ID": "7"}) == "lines"
            assert progress_style(terminal, environ={"SLURM_JOB_ID": "7", "SLURM_PTY_PORT": "1"}) == "bar"
    finally:
        os.close(leader)
        os.close(follower)
