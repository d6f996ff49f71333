"""The one exception type users see, the job's exit codes, and which rank should speak.

Kept free of mpi4py so that argument errors and `generate` never start MPI.
"""

import os
import sys
from enum import IntEnum


class ExitCode(IntEnum):
    """What `python -m mpigd` exits with (the README's table lists the same)."""

    OK = 0
    BUG = 1            # an unexpected exception on some rank: traceback, then MPI_Abort
    USAGE = 2          # one `mpigd: error:` line: fix the input or the options
    DISK = 74          # a write failed: disk full, quota, I/O error (EX_IOERR of sysexits.h)
    STALLED = 124      # the stall watchdog: some rank stopped answering (like timeout(1))
    TERMINATED = 143   # SIGTERM: stopped at an iteration boundary, checkpoint written


class MpigdError(Exception):
    """A failure the user can fix: printed once as `mpigd: error: ...`.

    `collective` is True when every rank raised it together (see comm.agreed), so all
    ranks can exit normally. A non-collective MpigdError on a multi-rank job means the
    other ranks may be waiting in a collective: the entry point aborts the job then.
    """

    def __init__(self, message: str, *, collective: bool = False,
                 exit_code: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.collective = collective
        self.exit_code = int(exit_code)


_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    """This process's rank as told by the launcher, without initializing MPI (0 if none)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


# Set by launchers in every process of a parallel job (not by sbatch's batch shell, which
# sets SLURM_NTASKS without starting the tasks).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def launcher_size() -> int:
    """The number of processes the launcher started, without initializing MPI (1 if none)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def _live_mpi():
    """mpi4py.MPI if this process imported it and MPI is running, else None."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi
    return None


def world_rank() -> int:
    """The MPI rank when MPI is already initialized, else the launcher's word for it."""
    mpi = _live_mpi()
    return mpi.COMM_WORLD.Get_rank() if mpi else launcher_rank()


def world_size() -> int:
    """The number of ranks of a running MPI job; 1 when MPI is not initialized."""
    mpi = _live_mpi()
    return mpi.COMM_WORLD.Get_size() if mpi else 1
