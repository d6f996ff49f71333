"""Fault injection for the failure tests: make one chosen rank raise at a chosen place.

Set MPIGD_INJECT_FAULT=RANK:PLACE[:ITERATION], PLACE being `load` (while reading the
data) or `loop` (after the given iteration of training, default 0); `power` makes the
rank hang (sleep) in the given pass of the power iteration (stepsize.py). Unset, this costs a
dictionary lookup at start-up and nothing in the loop.
"""

import os


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
