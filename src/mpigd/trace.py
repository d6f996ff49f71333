"""trace.json: every rank's phases on one timeline, in the Chrome trace event format.

Opens in Perfetto (ui.perfetto.dev) or chrome://tracing: one track per rank, one span
per phase and iteration ("X" complete events, microseconds). Within an iteration the
phases run in the order bcast, compute, (Barrier: sync, comm_wait), reduce, update, so
their start times follow from the iteration's start and the durations. Iteration starts
of other hosts are put on rank 0's clock with the offsets measured by clocks.py.
"""

import json

import numpy as np

from . import rundir
from .timing import BCAST, COMM_WAIT, COMPUTE, PHASES, REDUCE, SYNC, UPDATE

# The Barrier's wait is drawn as its sync part, then its comm_wait part (timing.py).
ORDER = (BCAST, COMPUTE, SYNC, COMM_WAIT, REDUCE, UPDATE)


def events(seconds: np.ndarray, starts: np.ndarray, first_iteration: int = 0) -> list[dict]:
    """Trace events for (ranks x iterations x phases) durations and (ranks x iterations) starts."""
    out = [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "mpigd"}}]
    ranks, iterations, _ = seconds.shape
    for rank in range(ranks):
        out.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rank,
                    "args": {"name": f"rank {rank}"}})
        out.append({"name": "thread_sort_index", "ph": "M", "pid": 0, "tid": rank,
                    "args": {"sort_index": rank}})
        for i in range(iterations):
            ts = starts[rank, i] * 1e6
            for phase in ORDER:
                dur = seconds[rank, i, phase] * 1e6
                if dur > 0:
                    out.append({"name": PHASES[phase], "cat": "phase", "ph": "X", "pid": 0,
                                "tid": rank, "ts": round(ts, 3), "dur": round(dur, 3),
                                "args": {"iteration": first_iteration + i}})
                ts += dur
    return out


def write(path: str, seconds: np.ndarray, starts: np.ndarray, first_iteration: int = 0,
          clocks: list[dict] | None = None) -> str:
    """trace.json, atomically; `starts` on rank 0's clock (clocks.aligned_starts)."""
    trace = {"traceEvents": events(seconds, starts, first_iteration), "displayTimeUnit": "ms",
             "otherData": {"clock_alignment": "ping-pong with rank 0 before and after the loop "
                           "(clocks.py); uncertainty per rank below", "clocks": clocks or []}}
    return rundir.write_text(path, json.dumps(trace))
