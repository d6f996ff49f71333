"""Per-rank, per-iteration phase clocks, and their summaries.

Each rank stores perf_counter_ns differences into a preallocated int64 table during the
loop (no allocation, no communication), and the tables are gathered to rank 0 once at the
end with one buffer Gather. Each row also keeps the iteration's start on the rank's own
clock, so that with the clock offsets of clocks.py the spans of all ranks can be laid on
one timeline.

The loop measures the wait at the Barrier before the Reduce as one span. After the
gather, `attribute_waits` splits it in two (see the README, "What the numbers mean"):
`sync`, the part that other ranks' longer compute explains (a straggler), and
`comm_wait`, the rest: waiting for messages in flight (another rank received w late, the
Barrier's own latency). No extra communication, nothing in the loop.
"""

import numpy as np

MEASURED = ("compute", "bcast", "reduce", "update", "sync")  # what the loop's clock records
PHASES = MEASURED + ("comm_wait",)                            # after attribute_waits
COMPUTE, BCAST, REDUCE, UPDATE, SYNC, COMM_WAIT = range(len(PHASES))
_START = len(MEASURED)  # extra column of the clock's table: the iteration's start (ns)


class PhaseClock:
    """An (iterations x phases) table of nanoseconds, filled row by row."""

    def __init__(self, max_rows, comm):
        self.table = np.zeros((max_rows, len(MEASURED) + 1), dtype=np.int64)
        self.rows = 0
        comm.Barrier()  # every rank's first iteration starts together

    def record(self, start, compute, bcast, reduce, update, sync):
        self.table[self.rows] = (compute, bcast, reduce, update, sync, start)
        self.rows += 1

    def gather(self, comm):
        """Collective. On rank 0: (seconds ranks x rows x PHASES, starts ranks x rows).

        `seconds` is already split by attribute_waits; `starts` are on each rank's own clock.
        """
        mine = np.ascontiguousarray(self.table[: self.rows])
        table = np.empty((comm.size,) + mine.shape, dtype=np.int64) if comm.rank == 0 else None
        comm.Gather(mine, table, root=0)
        if table is None:
            return None, None
        return attribute_waits(table[:, :, :_START] * 1e-9), table[:, :, _START] * 1e-9


def attribute_waits(measured: np.ndarray) -> np.ndarray:
    """(ranks x iterations x MEASURED) -> (... x PHASES): the Barrier wait as sync + comm_wait.

    In iteration i rank k waits W_k at the Barrier. Had every rank received w at the same
    moment, k would have waited exactly max_j C_j - C_k for the slowest compute: that much
    of W_k (never more than W_k) is `sync`; the rest is `comm_wait`.
    """
    compute, barrier = measured[:, :, COMPUTE], measured[:, :, SYNC]
    slowest = compute.max(axis=0, keepdims=True) if len(compute) else compute
    sync = np.minimum(barrier, slowest - compute)
    split = np.concatenate([measured, (barrier - sync)[:, :, None]], axis=2)
    split[:, :, SYNC] = sync
    return split


def phase_stats(seconds: np.ndarray, ranks_mask=None, update_ranks: int = 1):
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
