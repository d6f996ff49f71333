"""Where a run ran: BLAS threads, each rank's host, CPUs, memory peak, Slurm, the MPI library.

The per-rank facts are gathered to rank 0 once, after training, in one buffer Gather of
a structured array (named fields, no pickling) plus one Gather of host names.
"""

import os
import platform
import resource
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .comm import gather_text

# SLURM_TASKS_PER_NODE is always set ("2(x3),1"); SLURM_NTASKS_PER_NODE only when requested.
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_NNODES",
                   "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                   "SLURM_CPUS_PER_TASK", "SLURM_STEP_ID", "SLURM_JOB_PARTITION",
                   "SLURM_JOB_ACCOUNT", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                   "SLURM_CLUSTER_NAME")

_FACTS = np.dtype([("lo", np.int64), ("hi", np.int64), ("load_s", np.float64),
                   ("peak_rss_bytes", np.int64), ("cpus", np.int64)])


@contextmanager
def blas_threads(requested: int | None, ranks: int):
    """Limit BLAS threads for the block; yields what was asked, applied and found.

    One BLAS thread per rank by default when ranks > 1: oversubscribed BLAS ruins timing.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    threads = requested if requested is not None else (1 if ranks > 1 else None)
    limits = threadpool_limits(limits=threads, user_api="blas") if threads is not None else None
    blas = [{k: lib.get(k) for k in ("internal_api", "num_threads", "version")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]
    try:
        yield {"requested": requested, "applied": threads, "blas": blas}
    finally:
        if limits is not None:
            limits.restore_original_limits()


def peak_rss_bytes() -> int:
    """This process's peak resident memory.

    VmHWM counts this process only; ru_maxrss starts at the RSS of whatever process forked
    us (a big Python parent would be reported as our own peak). ru_maxrss where there is no /proc.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@dataclass
class RankFacts:
    """One rank's place in the job, as gathered to rank 0."""

    rank: int
    host: str
    row_range: tuple[int, int]
    load_s: float
    peak_rss_bytes: int
    cpus: int  # of the rank's host: more ranks than this on one host is oversubscription

    @property
    def rows(self) -> int:
        return self.row_range[1] - self.row_range[0]


def gather_rank_facts(comm, lo: int, hi: int, load_s: float) -> list[RankFacts] | None:
    """Collective: every rank's RankFacts on rank 0 (None elsewhere)."""
    mine = np.array([(lo, hi, load_s, peak_rss_bytes(), os.cpu_count() or 0)], dtype=_FACTS)
    table = np.empty(comm.size, dtype=_FACTS) if comm.rank == 0 else None
    comm.Gather(mine.view(np.uint8), None if table is None else table.view(np.uint8), root=0)
    hosts = gather_text(comm, platform.node())
    if table is None:
        return None
    return [RankFacts(rank=r, host=hosts[r], row_range=(int(f["lo"]), int(f["hi"])),
                      load_s=float(f["load_s"]), peak_rss_bytes=int(f["peak_rss_bytes"]),
                      cpus=int(f["cpus"])) for r, f in enumerate(table)]


def slurm_info() -> dict | None:
    """The job's SLURM_* variables (lower-case names without the prefix), or None."""
    found = {name[6:].lower(): os.environ[name] for name in SLURM_VARIABLES if name in os.environ}
    return found or None


def mpi_library() -> dict:
    """The MPI library's first version line and mpi4py's version (MPI must be running)."""
    import mpi4py
    from mpi4py import MPI

    # Open MPI's version string ends with a NUL byte; no JSON reader wants it.
    first = MPI.Get_library_version().replace("\x00", "").splitlines()[0].strip()
    return {"library": first, "mpi4py": mpi4py.__version__}
