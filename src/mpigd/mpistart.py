"""Starting MPI with a deadline: an MPI_Init that never returns ends the job, with one line.

MPI_Init waits for every rank (the launcher's PMI fence, the exchange of addresses). A
rank that never gets there, a PMI that loses a message (Slurm 22.05's pmi2 plugin and the
mpich wheel's long UCX addresses, seen here: "mpi/pmi2: invalid client request", then the
job sat in MPI_Init until its time limit) or a network that does not connect leaves the
others inside it forever, before the stall watchdog (watchdog.py) can start.

It starts when mpi4py.MPI is first imported, wherever that is (an import hook: MPI starts
where it always did, and errors found before it stay every rank's alike), and ends when the
import returns. It is kept by a forked child, not a thread: MPI_Init runs inside mpi4py's import
with the GIL held, so no Python thread of the waiting process would ever run. The child
waits on a pipe; the parent closes it once MPI is up (or the parent dies and it closes).
Past the deadline, rank 0's keeper writes the one message and both keepers kill their rank;
the launcher then ends the rest. The other ranks' keepers wait a few seconds longer, so
that rank 0 is the one that speaks.
"""

import importlib.abc
import importlib.util
import os
import select
import signal
import sys
from contextlib import contextmanager

from . import faults
from .errors import MpigdError, launcher_rank, launcher_size

DEFAULT_TIMEOUT_S = 300.0  # MPI_Init of thousands of ranks can take minutes
_LATER_RANKS_S = 5.0


def init_timeout(environ=os.environ) -> float:
    """Seconds MPI_Init may take: $MPIGD_INIT_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    text = environ.get("MPIGD_INIT_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise MpigdError(f"MPIGD_INIT_TIMEOUT must be a number of seconds > 0, got {text!r} "
                         f"(unset, it is {DEFAULT_TIMEOUT_S:g})")
    return value


def install() -> None:
    """Give MPI_Init a deadline, under a multi-rank launcher (elsewhere: nothing to wait for)."""
    if launcher_size() <= 1 or "mpi4py.MPI" in sys.modules:
        return
    if not any(isinstance(finder, _DeadlineFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeadlineFinder(init_timeout()))


class _DeadlineFinder(importlib.abc.MetaPathFinder):
    """Finds mpi4py.MPI as usual, once, and runs its import (MPI_Init) under deadline()."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def find_spec(self, name, path=None, target=None):
        if name != "mpi4py.MPI":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            # An extension module runs its code in create_module or exec_module (single- or
            # multi-phase init): MPI_Init is in one of them, so both get the deadline.
            create, load, timeout = spec.loader.create_module, spec.loader.exec_module, self.timeout

            def create_module(module_spec):
                with deadline(timeout):
                    faults.slow_init(launcher_rank())  # MPIGD_INJECT_FAULT=RANK:init (tests)
                    return create(module_spec)

            def exec_module(module):
                with deadline(timeout):
                    load(module)
            spec.loader.create_module, spec.loader.exec_module = create_module, exec_module
        return spec


@contextmanager
def deadline(timeout: float):
    """Kill this process if the block takes over `timeout` s (rank 0 saying why first)."""
    rank = launcher_rank()
    done_read, done_write = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        os.close(done_write)
        _keep_deadline(done_read, os.getppid(), rank, timeout)
    os.close(done_read)
    try:
        yield
    finally:
        os.close(done_write)
        os.waitpid(keeper, 0)


def _keep_deadline(done: int, parent: int, rank: int, timeout: float) -> None:
    """The forked keeper: never returns."""
    try:
        ready, _, _ = select.select([done], [], [], timeout + (0 if rank == 0 else _LATER_RANKS_S))
        if not ready:
            if rank == 0:
                os.write(2, (
                    f"mpigd: error: MPI did not start within {timeout:g} s "
                    "(MPIGD_INIT_TIMEOUT): some rank never reached MPI_Init, or the launcher's "
                    "PMI or the network failed (see the launcher's messages); every rank is "
                    "being killed. A job that only starts slowly needs a larger "
                    "MPIGD_INIT_TIMEOUT\n").encode())
            os.kill(parent, signal.SIGKILL)
    finally:
        os._exit(0)
