"""Finding and calling the MPI launcher from Python (tests, sweeps, benchmarks)."""

import os
import shutil
import sys


def find_mpiexec():
    """mpiexec next to sys.executable (the mpich wheel puts it there), then $MPIEXEC, then PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    explicit = os.environ.get("MPIEXEC")
    if explicit:
        return explicit
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found:
        return found
    raise FileNotFoundError(
        "no mpiexec found: install one with `pip install mpich` (or `pip install .[mpich]`), "
        "set $MPIEXEC, or load your site's MPI module"
    )


def mpi_command(ranks, *args, python=sys.executable):
    """argv that runs `python -m mpigd ARGS` on `ranks` ranks."""
    return [find_mpiexec(), "-n", str(ranks), python, "-m", "mpigd", *map(str, args)]
