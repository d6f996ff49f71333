"""Per-rank, per-iteration phase clocks, and their summaries.

Each rank stores perf_counter_ns differences into a preallocated int64 array during the
loop (no allocation, no communication), and the arrays are gathered to rank 0 once at
the end with one buffer Gather.
"""

import numpy as np

PHASES = ("compute", "bcast", "reduce", "update", "sync")
COMPUTE, BCAST, REDUCE, UPDATE, SYNC = range(len(PHASES))


class PhaseClock:
    """An (iterations x phases) table of nanoseconds, filled row by row."""

    def __init__(self, max_rows):
        self.ns = np.zeros((max_rows, len(PHASES)), dtype=np.int64)
        self.rows = 0

    def gather(self, comm):
        """Collective: on rank 0, seconds as an array (ranks x iterations x phases)."""
        mine = np.ascontiguousarray(self.ns[: self.rows])
        table = np.empty((comm.size,) + mine.shape, dtype=np.int64) if comm.rank == 0 else None
        comm.Gather(mine, table, root=0)
        return None if table is None else table * 1e-9


def phase_stats(seconds, ranks_mask=None):
    """Per-phase totals per rank, and mean/min/max of those totals over ranks."""
    totals = seconds.sum(axis=1)  # ranks x phases
    stats = {}
    for index, name in enumerate(PHASES):
        column = totals[:, index]
        if name == "update":
            column = column[:1]  # only the server updates
        elif name == "compute" and ranks_mask is not None and ranks_mask.any():
            column = column[ranks_mask]  # a dedicated server computes nothing
        stats[name] = {
            "mean_s": float(column.mean()), "min_s": float(column.min()), "max_s": float(column.max()),
        }
    return totals, stats


def imbalance(totals, workers_mask):
    """max/mean of compute time over the ranks that hold rows (1.0 = perfectly even)."""
    compute = totals[workers_mask, COMPUTE]
    mean = compute.mean() if compute.size else 0.0
    return float(compute.max() / mean) if mean > 0 else 1.0
