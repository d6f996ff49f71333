"""The Hockney (alpha-beta) model of a collective: fit it to timings, predict with it.

One collective of n bytes on p ranks costs t = alpha + n * beta, fitted per collective and
rank count from `bench-comm`'s measurements. Binomial-tree algorithms (MPICH's Bcast and
Reduce for short messages) take ceil(log2 p) steps of one message each, so the per-step
("link") costs are alpha / ceil(log2 p) and beta / ceil(log2 p); a rank count that was not
measured is predicted from the nearest measured one through that tree factor. One straight
line over 8 B - 64 MB is a compromise (MPI switches protocol and algorithm with the size,
so the curve bends): above a clear protocol switch a second line is fitted.

Pure numpy: the scaling report, the sweep and bench-comm share it, and none of it needs MPI.
The fits of several rank counts live in one comm_model.json (`load_model`).
"""

import json
import math

import numpy as np

from ..errors import MpigdError

MODEL_KIND = "mpigd comm model"


def tree_factor(ranks: int) -> int:
    """ceil(log2 p): the number of message steps of a binomial tree over p ranks."""
    return (int(ranks) - 1).bit_length()


# --- the fit --------------------------------------------------------------------------

def fit_hockney(nbytes, seconds) -> tuple[float, float]:
    """alpha, beta >= 0 of t = alpha + n * beta, minimizing the *relative* residuals.

    Plain least squares over sizes spanning seven decades would let the largest messages
    decide everything and leave alpha (the latency, which dominates the trainer's small
    messages) to chance; weighting each residual by 1/t fits both ends.
    """
    n = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if n.size == 0 or n.size != t.size or not np.all(t > 0):
        raise ValueError("need matching sizes and positive times")
    if np.ptp(n) == 0:  # one size (or a barrier): only a latency can be told
        return float(np.sum(1 / t) / np.sum(1 / t**2)), 0.0
    a = np.column_stack([1 / t, n / t])
    alpha, beta = np.linalg.lstsq(a, np.ones_like(t), rcond=None)[0]
    if alpha < 0 or beta < 0:
        # One term came out negative (noise on a loaded machine does this to a few
        # latency-bound sizes): keep whichever one-term line explains the data better,
        # rather than always dropping the latency, which the trainer's messages live on.
        latency_only = (np.sum(1 / t) / np.sum(1 / t**2), 0.0)
        slope_only = (0.0, np.sum(n / t) / np.sum((n / t) ** 2))
        alpha, beta = min((latency_only, slope_only), key=lambda ab: float(
            np.sum(_relative_errors(n, t, *ab) ** 2)))
    return float(alpha), float(beta)


def _relative_errors(nbytes, seconds, alpha, beta):
    n, t = np.asarray(nbytes, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    return (alpha + n * beta - t) / t


# A second line is used only if one line misses some size by more than SPLIT_ABOVE_ERROR,
# two lines explain the data SPLIT_GAIN times better (sum of squared relative residuals),
# and each covers at least MIN_SIZES_PER_SEGMENT sizes: otherwise one noisy round, which a
# loaded machine produces, would be "explained" by a protocol switch that is not there.
SPLIT_ABOVE_ERROR = 0.25
SPLIT_GAIN = 4.0
MIN_SIZES_PER_SEGMENT = 4


def fit_segments(nbytes, seconds) -> list[tuple[int, int, float, float]]:
    """One Hockney line, or two when the data have a protocol switch.

    MPI libraries change protocol (eager -> rendezvous) and algorithm with the message
    size, so latency and bandwidth are different constants below and above some size.
    If one line misses a size by more than 25 %, the split point that minimizes the sum
    of squared relative residuals is found (each side >= 4 sizes) and kept if it fits 4x
    better than one line. Returns a list of (first_bytes, last_bytes, alpha, beta),
    ordered by size.
    """
    order = np.argsort(nbytes)
    n = np.asarray(nbytes, dtype=np.float64)[order]
    t = np.asarray(seconds, dtype=np.float64)[order]
    alpha, beta = fit_hockney(n, t)
    single = [(int(n[0]), int(n[-1]), alpha, beta)]
    errors = _relative_errors(n, t, alpha, beta)
    if np.max(np.abs(errors)) <= SPLIT_ABOVE_ERROR or n.size < 2 * MIN_SIZES_PER_SEGMENT:
        return single
    single_cost = float(np.sum(errors**2))
    best, best_cost = single, single_cost / SPLIT_GAIN
    for k in range(MIN_SIZES_PER_SEGMENT, n.size - MIN_SIZES_PER_SEGMENT + 1):
        parts, cost = [], 0.0
        for lo, hi in ((0, k), (k, n.size)):
            a, b = fit_hockney(n[lo:hi], t[lo:hi])
            cost += float(np.sum(_relative_errors(n[lo:hi], t[lo:hi], a, b) ** 2))
            parts.append((int(n[lo]), int(n[hi - 1]), a, b))
        if cost < best_cost:
            best, best_cost = parts, cost
    return best


def _segment_time(segments, nbytes):
    """The line that covers nbytes: below the first split the first, and so on."""
    for segment in segments[:-1]:
        if nbytes <= segment["last_bytes"]:
            return segment["alpha_s"] + nbytes * segment["beta_s_per_byte"]
    last = segments[-1]
    return last["alpha_s"] + nbytes * last["beta_s_per_byte"]


def fit_entry(ranks: int, samples: list[dict]) -> dict:
    """The model entry for one collective at one rank count, from its measured samples."""
    nbytes = [s["bytes"] for s in samples]
    avg = [s["avg_s"] for s in samples]
    steps = tree_factor(ranks)
    segments = []
    for first, last, alpha, beta in fit_segments(nbytes, avg):
        segments.append({
            "first_bytes": first, "last_bytes": last,
            "alpha_s": alpha, "beta_s_per_byte": beta,
            "bandwidth_bytes_per_s": 1 / beta if beta > 0 else None,
            "link_alpha_s": alpha / steps if steps else None,
            "link_beta_s_per_byte": beta / steps if steps else None,
        })
    errors = [(_segment_time(segments, n) - t) / t for n, t in zip(nbytes, avg)]
    for sample, error in zip(samples, errors):
        sample["model_s"] = sample["avg_s"] * (1 + error)
    return {"segments": segments, "max_rel_error": float(max(abs(e) for e in errors)),
            "tree_factor": steps, "samples": samples}


# --- using a fitted model --------------------------------------------------------------

def load_model(path: str) -> dict:
    """Read a comm_model.json written by bench-comm; one clear error if it is not one."""
    try:
        with open(path) as handle:
            model = json.load(handle)
    except OSError as exc:
        raise MpigdError(f"cannot read the communication model {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise MpigdError(f"{path} is not valid JSON ({exc}); rerun `mpirun -n P python -m mpigd "
                         "bench-comm` to recreate it") from None
    if not isinstance(model, dict) or model.get("kind") != MODEL_KIND or "fits" not in model:
        raise MpigdError(f"{path} is not a comm_model.json written by `mpigd bench-comm`")
    return model


def message_hops(collective: str, ranks: int) -> int:
    """Message latencies on the critical path of one collective (MPICH's algorithms).

    A binomial Bcast or Reduce and a dissemination Barrier take ceil(log2 p) steps each.
    The trainer's `iteration` chains Bcast, Barrier and Reduce: 3 ceil(log2 p) steps, but at
    p = 2 the Reduce's only message goes to the Barrier's only partner right behind the
    Barrier's, so the two cost one step together (2 in all; measured: 2.0-2.3 one-way delays
    at p = 2, 6.0-6.4 at p = 4 across emulated hosts). `iteration-allreduce`: a Barrier and
    a recursive-doubling Allreduce, 2 ceil(log2 p).
    """
    steps = tree_factor(ranks)
    if collective == "iteration":
        return 2 if ranks == 2 else 3 * steps
    if collective == "iteration-allreduce":
        return 2 * steps
    return steps


def predict(model: dict, collective: str, ranks: int, nbytes: int) -> tuple[float | None, str | None]:
    """(seconds, source) of one collective of `nbytes` on `ranks` ranks.

    source is "measured" when the model holds a fit at this rank count, "tree" when it
    was scaled from the nearest measured rank count by the ratio of their critical-path
    steps (message_hops: ceil(log2 p) for one tree; a tree over one rank sends nothing),
    None when the model has nothing for this collective.
    """
    fits = {int(p): entry["collectives"][collective]["segments"]
            for p, entry in model["fits"].items() if collective in entry["collectives"]}
    if ranks in fits:
        return _segment_time(fits[ranks], nbytes), "measured"
    if ranks == 1:
        return 0.0, "tree"
    known = [p for p in fits if p >= 2]
    if not known:
        return None, None
    nearest = min(known, key=lambda p: (abs(math.log2(p) - math.log2(ranks)), -p))
    scale = message_hops(collective, ranks) / message_hops(collective, nearest)
    return scale * _segment_time(fits[nearest], nbytes), "tree"


def iteration_comm(model: dict, ranks: int, features: int, mode: str = "server") -> tuple[float | None, str | None]:
    """Predicted communication seconds of one training iteration, and its source.

    server: Bcast of [w, control] + Barrier + Reduce of [g, loss], d+1 float64 each;
    allreduce: Barrier + Allreduce of [g, loss]. The model's fit of that very sequence
    (bench-comm's `iteration` / `iteration-allreduce`) when it has one, else the sum of the
    single collectives (an upper bound across hosts, where they overlap).
    """
    nbytes = 8 * (features + 1)
    whole = "iteration" if mode == "server" else "iteration-allreduce"
    if any(whole in entry["collectives"] for entry in model["fits"].values()):
        return predict(model, whole, ranks, nbytes)
    parts = ("bcast", "barrier", "reduce") if mode == "server" else ("barrier", "allreduce")
    total, sources = 0.0, set()
    for name in parts:
        seconds, source = predict(model, name, ranks, 0 if name == "barrier" else nbytes)
        if seconds is None:
            return None, None
        total += seconds
        sources.add(source)
    return total, ("measured" if sources == {"measured"} else "tree")
