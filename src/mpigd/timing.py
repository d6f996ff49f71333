"""Per-rank, per-iteration phase clocks, and their summaries.

Each rank stores perf_counter_ns differences into a preallocated int64 table during the
loop (no allocation, no communication), and the tables are gathered to rank 0 once at the
end with one buffer Gather. Each row also keeps the iteration's start, relative to an
origin taken right after a Barrier, so the spans of all ranks can be laid on one timeline.
"""

import time

import numpy as np

PHASES = ("compute", "bcast", "reduce", "update", "sync")
COMPUTE, BCAST, REDUCE, UPDATE, SYNC = range(len(PHASES))
_START = len(PHASES)  # extra column: start of the iteration, ns after the origin


class PhaseClock:
    """An (iterations x phases) table of nanoseconds, filled row by row."""

    def __init__(self, max_rows, comm):
        self.table = np.zeros((max_rows, len(PHASES) + 1), dtype=np.int64)
        self.rows = 0
        comm.Barrier()  # a common origin for every rank's timeline
        self.origin = time.perf_counter_ns()

    def record(self, start, compute, bcast, reduce, update, sync):
        self.table[self.rows] = (compute, bcast, reduce, update, sync, start - self.origin)
        self.rows += 1

    def gather(self, comm):
        """Collective. On rank 0: (seconds ranks x rows x phases, starts ranks x rows)."""
        mine = np.ascontiguousarray(self.table[: self.rows])
        table = np.empty((comm.size,) + mine.shape, dtype=np.int64) if comm.rank == 0 else None
        comm.Gather(mine, table, root=0)
        if table is None:
            return None, None
        return table[:, :, :_START] * 1e-9, table[:, :, _START] * 1e-9


def phase_stats(seconds, ranks_mask=None, update_ranks=1):
    """Per-phase totals per rank, and mean/min/max of those totals over ranks.

    `update` is summarized over the ranks that update (rank 0 in server mode, all in
    allreduce mode), `compute` over the ranks that hold rows.
    """
    totals = seconds.sum(axis=1)  # ranks x phases
    stats = {}
    for index, name in enumerate(PHASES):
        column = totals[:, index]
        if name == "update":
            column = column[:update_ranks]
        elif name == "compute" and ranks_mask is not None and ranks_mask.any():
            column = column[ranks_mask]
        stats[name] = {
            "mean_s": float(column.mean()), "min_s": float(column.min()), "max_s": float(column.max()),
        }
    return totals, stats


def imbalance(totals, workers_mask):
    """max/mean of compute time over the ranks that hold rows (1.0 = perfectly even)."""
    compute = totals[workers_mask, COMPUTE]
    mean = compute.mean() if compute.size else 0.0
    return float(compute.max() / mean) if mean > 0 else 1.0
