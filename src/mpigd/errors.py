"""The one exception type users see, and how to tell which rank should speak.

Kept free of mpi4py so that argument errors and `generate` never start MPI.
"""

import os


class MpigdError(Exception):
    """A failure the user can fix: printed once as `mpigd: error: ...`, exit code 2.

    `collective` is True when every rank raised it together (see comm.agreed), so all
    ranks can exit normally. A non-collective MpigdError on a multi-rank job means the
    other ranks may be waiting in a collective: the entry point aborts the job then.
    """

    def __init__(self, message, *, collective=False):
        super().__init__(message)
        self.collective = collective


_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def launcher_rank():
    """This process's rank as told by the launcher, without initializing MPI (0 if none)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def world_rank():
    """The MPI rank when MPI is already initialized, else the launcher's word for it."""
    import sys

    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_rank()
    return launcher_rank()
