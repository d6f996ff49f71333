"""One timeline across hosts: each rank's clock offset to rank 0, and converting to it.

Hosts have their own monotonic clocks (other epochs, slightly other rates). Before and
after the training loop, rank 0 plays a short ping-pong with every other rank in turn
(Cristian's method): rank 0 notes t_a, sends; rank k replies with its clock t_b; rank 0
notes t_c. If the two directions take equally long, rank k's clock reads
t_b - (t_a + t_c) / 2 ahead of rank 0's. The sample with the smallest round trip is kept
(least queueing), and its half round trip bounds the error: no two-party measurement can
tell an asymmetric link (say 5 ms one way, 0 back) from an offset of 2.5 ms, so the stated
uncertainty is rtt_min / 2. Drift is the change between the two estimates, interpolated
linearly over the run.

Both measurements happen outside the timed loop, so they cost nothing per iteration:
2 x ROUNDS x (ranks - 1) round trips per run.
"""

import time
from dataclasses import dataclass

import numpy as np

ROUNDS = 12


def _ping_pong(comm, peer: int, rounds: int) -> tuple[float, float]:
    """On rank 0: (offset of peer's clock, round trip) of the minimum-round-trip sample."""
    now = time.perf_counter_ns
    stamp = np.zeros(1, dtype=np.int64)
    best = (0.0, float("inf"))
    for _ in range(rounds):
        t_a = now()
        comm.Send(stamp, dest=peer, tag=71)
        comm.Recv(stamp, source=peer, tag=72)
        t_c = now()
        rtt = (t_c - t_a) * 1e-9
        if rtt < best[1]:
            best = (stamp[0] * 1e-9 - (t_a + t_c) * 0.5e-9, rtt)
    return best


def _answer(comm, rounds: int) -> None:
    stamp = np.zeros(1, dtype=np.int64)
    for _ in range(rounds):
        comm.Recv(stamp, source=0, tag=71)
        stamp[0] = time.perf_counter_ns()
        comm.Send(stamp, dest=0, tag=72)


def measure(comm, rounds: int = ROUNDS) -> np.ndarray | None:
    """Collective. On rank 0: (ranks x 3) [offset_s, rtt_s, at_s on rank 0's clock]; else None."""
    comm.Barrier()
    if comm.rank != 0:
        _answer(comm, rounds)  # waits until rank 0 gets to this rank: peers go one by one
        return None
    table = np.zeros((comm.size, 3))
    table[0] = (0.0, 0.0, time.perf_counter_ns() * 1e-9)
    for peer in range(1, comm.size):
        offset, rtt = _ping_pong(comm, peer, rounds)
        table[peer] = (offset, rtt, time.perf_counter_ns() * 1e-9)
    return table


@dataclass
class Alignment:
    """Rank k's clock = rank 0's clock + offset(t); offset interpolated between two estimates."""

    before: np.ndarray   # measure() before the loop (rank 0)
    after: np.ndarray    # measure() after the loop (rank 0)

    def offset(self, rank: int, t_root: np.ndarray | float) -> np.ndarray:
        """Offset of `rank`'s clock at rank-0 time(s) `t_root` (seconds)."""
        (o1, _, t1), (o2, _, t2) = self.before[rank], self.after[rank]
        if t2 <= t1:
            return np.full_like(np.asarray(t_root, dtype=float), o1)
        return o1 + (o2 - o1) * (np.asarray(t_root, dtype=float) - t1) / (t2 - t1)

    def to_root(self, rank: int, t_rank: np.ndarray) -> np.ndarray:
        """Times read on `rank`'s clock, as rank 0's clock would have read them."""
        t_rank = np.asarray(t_rank, dtype=float)
        t_root = t_rank - self.before[rank, 0]
        for _ in range(2):  # the offset depends on t_root itself (drift): two fixed-point steps
            t_root = t_rank - self.offset(rank, t_root)
        return t_root

    def uncertainty_s(self, rank: int) -> float:
        """Half the smallest round trip: what an asymmetric link can hide."""
        return 0.5 * max(self.before[rank, 1], self.after[rank, 1])

    def summary(self) -> list[dict]:
        """Per rank: offsets at start and end, drift (ppm), uncertainty; for result.json."""
        out = []
        for rank in range(len(self.before)):
            (o1, _, t1), (o2, _, t2) = self.before[rank], self.after[rank]
            drift = (o2 - o1) / (t2 - t1) * 1e6 if t2 > t1 else 0.0
            out.append({"rank": rank, "offset_s_start": float(o1), "offset_s_end": float(o2),
                        "drift_ppm": float(drift), "uncertainty_s": self.uncertainty_s(rank)})
        return out


def aligned_starts(alignment: "Alignment", starts: np.ndarray) -> np.ndarray:
    """(ranks x iterations) starts on each rank's clock -> rank 0's clock, from the earliest.

    The earliest start of any rank, not rank 0's: a worker may enter the first Bcast before
    the server does (seen under Open MPI), and a trace's timestamps must not be negative.
    """
    aligned = np.array([alignment.to_root(rank, starts[rank]) for rank in range(len(starts))])
    return aligned - aligned.min() if aligned.size else aligned
