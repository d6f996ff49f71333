"""The cost model of one synchronous iteration at m ranks, from a measured baseline.

    t(m) = compute(m) + sync(m) + update + comm(m) + overhead

compute(m)  the mean per-rank compute: c0 * w0 / w (w workers hold the rows; strong
            scaling) or c0 (weak scaling: the rows per worker stay).
sync(m)     the wait for the slowest of the w workers each iteration: E[max of w draws]
            minus the mean. The draws are the baseline's per-rank, per-iteration compute
            deviations from their rank's mean, taken as i.i.d.: `absolute` seconds (OS
            daemons, injected jitter: they do not shrink with the rows) or `relative` to
            the compute (memory-system and time-sharing noise: they shrink with it). The estimator is the expected maximum of w draws from their
            empirical distribution (exact, = bootstrap in the limit); for w beyond the
            number of samples it continues with a normal tail (expected_max_excess).
update      rank 0's serial update of w, measured: the same at every m.
overhead    what the baseline's measured time per iteration holds beyond the four
            terms at its own rank count (the loop's Python and MPI call costs, the
            clocks): a constant per iteration.
comm(m)     hockney.message_hops('iteration', p) message steps of alpha + n * beta each,
            n = 8 (d + 1) bytes (Bcast of w, Barrier, Reduce of g); from a fitted
            comm_model.json (hockney.iteration_comm) or a given latency and bandwidth.

Pure numpy and the standard library: no MPI, no files.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .hockney import iteration_comm, message_hops


@dataclass
class Baseline:
    """What the model needs from a measured run."""

    ranks: int
    workers: int
    rows: int
    features: int
    s_per_iter: float         # measured time per iteration (wall_s / evaluations)
    compute_s: float          # mean per-rank compute per iteration
    update_s: float           # rank 0's update per iteration
    deviations_s: np.ndarray  # per-rank, per-iteration compute minus its rank's mean
    deviations_from: str      # where the draws came from (trace.json, history.csv)
    source: str               # the run directory
    noise: str = "relative"   # deviations scale with compute(m) (relative) or not (absolute)


@dataclass
class Network:
    """alpha (s per message step) and beta (s per byte), or a fitted comm_model.json."""

    alpha_s: float | None = None
    beta_s_per_byte: float | None = None
    model: dict | None = None
    label: str = ""

    def iteration_s(self, ranks: int, features: int) -> float:
        if ranks <= 1:
            return 0.0
        if self.model is not None:
            seconds, _ = iteration_comm(self.model, ranks, features)
            return float(seconds or 0.0)
        return message_hops("iteration", ranks) * (self.alpha_s + 8 * (features + 1) * self.beta_s_per_byte)


def expected_max_excess(deviations: np.ndarray, draws: int) -> float:
    """E[max of `draws` deviations] (seconds) by the estimator of the module docstring.

    The empirical distribution's exact expected maximum (the limit of bootstrapping w
    draws): sum_i x_(i) [(i/n)^w - ((i-1)/n)^w] over the n sorted samples. It cannot exceed
    the largest sample, so for w > n it is continued by a normal tail: + sd (z(1 - 1/(w+1))
    - z(1 - 1/(n+1))).
    """
    d = np.sort(np.asarray(deviations, dtype=np.float64).ravel())
    n = d.size
    if draws <= 1 or n < 2:
        return 0.0
    w = min(draws, n)
    grid = np.arange(n + 1) / n
    weights = np.diff(grid**w)
    value = float(np.dot(d, weights))
    if draws > n:
        z = NormalDist().inv_cdf
        value += float(d.std()) * (z(1 - 1 / (draws + 1)) - z(1 - 1 / (n + 1)))
    return max(0.0, value)


def overhead(base: Baseline, network: Network) -> float:
    """The baseline's measured time per iteration minus the model's four terms there (>= 0)."""
    here = terms(base, network, base.ranks, "strong", fixed=0.0)
    return max(0.0, base.s_per_iter - here["t_iter_s"])


def terms(base: Baseline, network: Network, ranks: int, kind: str,
          fixed: float | None = None) -> dict:
    """The terms and their sum at `ranks` ranks (kind: strong or weak)."""
    fixed = overhead(base, network) if fixed is None else fixed
    dedicated = base.ranks - base.workers
    workers = max(1, ranks - dedicated)
    compute = base.compute_s * base.workers / workers if kind == "strong" else base.compute_s
    scale = compute / base.compute_s if base.noise == "relative" and base.compute_s > 0 else 1.0
    sync = scale * expected_max_excess(base.deviations_s, workers)
    comm = network.iteration_s(ranks, base.features)
    total = compute + sync + base.update_s + comm + fixed
    return {"ranks": ranks, "workers": workers, "compute_s": compute, "sync_s": sync,
            "update_s": base.update_s, "comm_s": comm, "overhead_s": fixed, "t_iter_s": total}


def project(base: Baseline, network: Network, ranks: list[int], kind: str) -> list[dict]:
    """Predicted time per iteration, speedup and efficiency at every rank count.

    Strong: speedup T(1)/T(m), efficiency speedup/m. Weak: efficiency T(1)/T(m) and the
    scaled speedup m T(1)/T(m). T(1) is the model's own one-rank time.
    """
    one = terms(base, network, 1 + base.ranks - base.workers, kind)["t_iter_s"]
    rows = []
    for m in ranks:
        row = terms(base, network, m, kind)
        ratio = one / row["t_iter_s"]
        row["speedup"] = ratio if kind == "strong" else m * ratio
        row["efficiency"] = ratio / m if kind == "strong" else ratio
        rows.append(row)
    return rows


def peak(base: Baseline, network: Network, rows: list[dict]) -> dict:
    """Where strong-scaling speedup peaks among `rows`, and what one more doubling costs there.

    Doubling m saves half of compute(m) but adds message steps and the sync growth; the
    speedup peaks where the saving falls below the added cost.
    """
    best = max(rows, key=lambda r: r["speedup"])
    after = terms(base, network, 2 * best["ranks"], "strong")
    saved = best["compute_s"] - after["compute_s"]
    added_comm = after["comm_s"] - best["comm_s"]
    added_sync = after["sync_s"] - best["sync_s"]
    limited = "at the largest rank count asked for" if best is rows[-1] else "the peak"
    return {"ranks": best["ranks"], "speedup": best["speedup"], "where": limited,
            "doubling_saves_compute_s": saved, "doubling_adds_comm_s": added_comm,
            "doubling_adds_sync_s": added_sync,
            "bound_by": "not reached: one more doubling still pays" if saved > added_comm + added_sync
            else "communication" if added_comm >= added_sync else "synchronization"}


def powers_of_two(largest: int) -> list[int]:
    return [2**k for k in range(int(math.log2(largest)) + 1)]
