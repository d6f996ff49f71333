"""Fault injection for the failure tests: make one chosen rank raise at a chosen place.

Set MPIGD_INJECT_FAULT=RANK:PLACE[:ITERATION], PLACE being `load` (while reading the
data), `loop` (after the given iteration of training, default 0) or `generate`
(a rank of a parallel `generate`, after writing its part file); `power` makes the
rank hang (sleep) in the given pass of the power iteration (stepsize.py); `report` makes
the rank take a second longer to report an error every rank hit (__main__.py), as a rank
the scheduler kept waiting would; `init` makes it sleep instead of starting MPI, as a rank
that never arrives would (mpistart.py). Unset, this costs a dictionary lookup at start-up and
nothing in the loop.
"""

import os
import time

import numpy as np


class InjectedFault(RuntimeError):
    pass


def planned(rank):
    """(place, iteration) planned for this rank, or None."""
    spec = os.environ.get("MPIGD_INJECT_FAULT", "")
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0].isdigit() or int(parts[0]) != rank:
        return None
    return parts[1], int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0


def fail(place, rank):
    raise InjectedFault(f"fault injected by MPIGD_INJECT_FAULT at {place} on rank {rank}")


def _sleep_if_planned(rank: int, place: str, seconds: float) -> None:
    fault = planned(rank)
    if fault is not None and fault[0] == place:
        time.sleep(seconds)


def slow_report(rank: int) -> None:
    """`RANK:report`: this rank sleeps a second before it reports an agreed error."""
    _sleep_if_planned(rank, "report", 1.0)


def slow_init(rank: int) -> None:
    """`RANK:init`: this rank sleeps ten minutes before MPI_Init (the others' deadline ends it)."""
    _sleep_if_planned(rank, "init", 600.0)


class Jitter:
    """`--jitter MEAN`: a fixed delay plus an exponential sleep of mean MEAN per iteration.

    Seeded by (seed, rank): the same run sleeps the same sequence, and ranks draw
    independently (i.i.d. draws, as the projection's sync term assumes).
    """

    def __init__(self, fixed: float, mean: float, seed: int, rank: int) -> None:
        self.fixed, self.mean = fixed, mean
        self.rng = np.random.default_rng([seed, rank, 0x6A177E5])

    def __call__(self) -> float:
        return self.fixed + float(self.rng.exponential(self.mean))
