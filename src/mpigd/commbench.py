"""`python -m mpigd bench-comm`: OSU-style timing of the collectives, and the Hockney model.

Method (the one of the OSU micro-benchmarks, which users trust): for each collective and
message size, a few untimed warm-up rounds, then many timed rounds with a Barrier between
them so every round starts with all ranks present; each rank averages its own rounds, and
the table shows the average, minimum and maximum of those averages over ranks.

Model (Hockney): one collective of n bytes on p ranks costs t = alpha + n * beta, fitted
per collective and rank count. Binomial-tree algorithms (MPICH's Bcast and Reduce for short
messages) take ceil(log2 p) steps of one message each, so the per-step ("link") costs are
alpha / ceil(log2 p) and beta / ceil(log2 p); a rank count that was not measured is
predicted from the nearest measured one through that tree factor. One straight line over
8 B - 64 MB is a compromise (MPI switches protocol and algorithm with the size, so the
curve bends); the table prints the fit's error at every size so nobody has to trust it
blindly, and `--max-size` restricts the fit to the sizes that matter.

Several rank counts go into one comm_model.json: each run replaces the entry of its own
rank count and keeps the others.
"""

import json
import math
import os
import platform
import re
import time

import numpy as np

from . import __version__
from .errors import MpigdError

COLLECTIVES = ("bcast", "reduce", "allreduce", "barrier")
MPI_NAMES = {"bcast": "MPI_Bcast", "reduce": "MPI_Reduce", "allreduce": "MPI_Allreduce",
             "barrier": "MPI_Barrier"}
LARGE_BYTES = 8192           # OSU's boundary between small and large messages
MODEL_FILE = "comm_model.json"
MODEL_KIND = "mpigd comm model"
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text):
    """'8', '8B', '4K', '64MB' -> bytes (binary units, as OSU prints them)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = match and match.group(2).upper()
    if not match or unit not in _UNITS:
        raise MpigdError(f"message size must look like 8, 4K, 1M or 64MB; got {text!r}")
    return int(match.group(1)) * _UNITS[unit]


def message_sizes(min_bytes, max_bytes):
    """Powers of two from min to max bytes; float64 payloads, so at least 8 bytes."""
    if min_bytes < 8 or max_bytes < min_bytes:
        raise MpigdError(f"need 8 <= --min-size <= --max-size (got {min_bytes} and {max_bytes} bytes)")
    sizes, n = [], 8
    while n <= max_bytes:
        if n >= min_bytes:
            sizes.append(n)
        n *= 2
    if not sizes:
        raise MpigdError(f"no power of two between {min_bytes} and {max_bytes} bytes; widen the range")
    return sizes


def tree_factor(ranks):
    """ceil(log2 p): the number of message steps of a binomial tree over p ranks."""
    return (int(ranks) - 1).bit_length()


# --- the Hockney fit -------------------------------------------------------------------

def fit_hockney(nbytes, seconds):
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
    if alpha < 0:      # the data say "no measurable latency": fit the slope alone
        alpha, beta = 0.0, np.sum(n / t) / np.sum((n / t) ** 2)
    elif beta < 0:     # no measurable bandwidth term in this size range
        alpha, beta = np.sum(1 / t) / np.sum(1 / t**2), 0.0
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


def fit_segments(nbytes, seconds):
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


def fit_entry(ranks, samples):
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

def load_model(path):
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


def predict(model, collective, ranks, nbytes):
    """(seconds, source) of one collective of `nbytes` on `ranks` ranks.

    source is "measured" when the model holds a fit at this rank count, "tree" when it
    was scaled by ceil(log2 p) from the nearest measured rank count (a tree over one rank
    sends nothing), None when the model has nothing for this collective.
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
    scale = tree_factor(ranks) / tree_factor(nearest)
    return scale * _segment_time(fits[nearest], nbytes), "tree"


def iteration_comm(model, ranks, features, mode="server"):
    """Predicted communication seconds of one training iteration, and its source.

    server: Bcast of [w, control] + Barrier + Reduce of [g, loss], d+1 float64 each;
    allreduce: Barrier + Allreduce of [g, loss].
    """
    nbytes = 8 * (features + 1)
    parts = ("bcast", "barrier", "reduce") if mode == "server" else ("barrier", "allreduce")
    total, sources = 0.0, set()
    for name in parts:
        seconds, source = predict(model, name, ranks, 0 if name == "barrier" else nbytes)
        if seconds is None:
            return None, None
        total += seconds
        sources.add(source)
    return total, ("measured" if sources == {"measured"} else "tree")


# --- measuring (collective: every rank runs these) --------------------------------------

def _rounds(comm, operation, iterations, warmup):
    """This rank's average seconds per round; a Barrier starts every round, untimed."""
    from time import perf_counter

    for _ in range(warmup):
        comm.Barrier()
        operation()
    total = 0.0
    for _ in range(iterations):
        comm.Barrier()
        started = perf_counter()
        operation()
        total += perf_counter() - started
    return total / iterations


def _operation(comm, name, send, receive, count):
    from mpi4py import MPI

    s, r = send[:count], receive[:count]
    if name == "bcast":
        return lambda: comm.Bcast(s, root=0)
    if name == "reduce":
        target = r if comm.rank == 0 else None
        return lambda: comm.Reduce(s, target, op=MPI.SUM, root=0)
    if name == "allreduce":
        return lambda: comm.Allreduce(s, r, op=MPI.SUM)
    return comm.Barrier


def _over_ranks(comm, value):
    """(min, mean, max) of one float over ranks, on rank 0 (buffer Reduces, no pickling)."""
    from mpi4py import MPI

    mine = np.array([value])
    low, total, high = np.empty(1), np.empty(1), np.empty(1)
    comm.Reduce(mine, low, op=MPI.MIN, root=0)
    comm.Reduce(mine, total, op=MPI.SUM, root=0)
    comm.Reduce(mine, high, op=MPI.MAX, root=0)
    return float(low[0]), float(total[0] / comm.size), float(high[0])


def measure(comm, collectives, sizes, iterations, iterations_large, warmup, warmup_large):
    """Collective: {collective: [sample, ...]} on rank 0 (None elsewhere).

    A sample is {bytes, avg_s, min_s, max_s, iterations}: the mean/min/max over ranks of
    each rank's average time per round.
    """
    largest = max(sizes)
    send = np.ones(largest // 8)
    receive = np.zeros(largest // 8)
    found = {}
    for name in collectives:
        found[name] = []
        for nbytes in ([0] if name == "barrier" else sizes):
            large = nbytes > LARGE_BYTES
            rounds = iterations_large if large else iterations
            operation = _operation(comm, name, send, receive, nbytes // 8)
            mine = _rounds(comm, operation, rounds, warmup_large if large else warmup)
            low, mean, high = _over_ranks(comm, mine)
            sample = {"bytes": nbytes, "avg_s": mean, "min_s": low, "max_s": high, "iterations": rounds}
            found[name].append(sample)
    return found if comm.rank == 0 else None


# --- the command ---------------------------------------------------------------------

def _hosts(comm, width=64):
    """Every rank's host name on rank 0, through one buffer Gather."""
    mine = np.zeros(width, dtype=np.uint8)
    name = platform.node().encode()[: width - 1]
    mine[: len(name)] = np.frombuffer(name, dtype=np.uint8)
    table = np.empty((comm.size, width), dtype=np.uint8) if comm.rank == 0 else None
    comm.Gather(mine, table, root=0)
    if table is None:
        return None
    return [bytes(row[: int(np.argmin(row))]).decode(errors="replace") for row in table]


def _read_existing(path):
    if not os.path.exists(path):
        return None
    return load_model(path)


def _write_json(path, payload):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.replace(partial, path)


def _us(seconds):
    return seconds * 1e6


def format_table(name, ranks, hosts, library, fit):
    """osu_bcast's table, plus the fitted model and its error at every size."""
    count = len(set(hosts))
    lines = [
        f"# mpigd bench-comm: {MPI_NAMES[name]}, {ranks} rank{'s' if ranks > 1 else ''} on {count} "
        f"host{'s' if count > 1 else ''} ({library})",
        f"# {'Size':<10} {'Avg Latency(us)':>16} {'Min Latency(us)':>16} {'Max Latency(us)':>16} "
        f"{'Iterations':>10} {'Model(us)':>10} {'Error':>7}",
    ]
    for s in fit["samples"]:
        error = (s["model_s"] - s["avg_s"]) / s["avg_s"]
        lines.append(f"{s['bytes']:<12} {_us(s['avg_s']):>16.2f} {_us(s['min_s']):>16.2f} "
                     f"{_us(s['max_s']):>16.2f} {s['iterations']:>10} {_us(s['model_s']):>10.2f} "
                     f"{100 * error:>+6.0f}%")
    for seg in fit["segments"]:
        if name == "barrier":
            lines.append(f"# Hockney fit: alpha = {_us(seg['alpha_s']):.2f} us")
            continue
        bandwidth = seg["bandwidth_bytes_per_s"]
        speed = f" ({bandwidth / 1e9:.2f} GB/s)" if bandwidth else ""
        lines.append(f"# Hockney fit {seg['first_bytes']}-{seg['last_bytes']} B: t = alpha + n*beta, "
                     f"alpha = {_us(seg['alpha_s']):.2f} us, beta = {seg['beta_s_per_byte'] * 1e9:.4f} "
                     f"ns/B{speed}")
        if fit["tree_factor"] > 1:
            lines.append(f"#   per tree step (ceil(log2 p) = {fit['tree_factor']}): alpha = "
                         f"{_us(seg['link_alpha_s']):.2f} us, "
                         f"beta = {seg['link_beta_s_per_byte'] * 1e9:.4f} ns/B")
    lines.append(f"# largest model error: {100 * fit['max_rel_error']:.0f}%")
    return "\n".join(lines)


def run(comm, out, collectives, sizes, iterations, iterations_large, warmup, warmup_large,
        quiet=False):
    """Collective: measure, fit, merge into `out`, print the tables; returns the model on rank 0."""
    from mpi4py import MPI

    from .comm import agreed

    root = comm.rank == 0
    library = " ".join(MPI.Get_library_version().splitlines()[0].split())
    with agreed(comm, f"reading {out}"):
        model = _read_existing(out) if root else None
        if root:
            _probe_writable(out)
    hosts = _hosts(comm)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fits = {}
    for name in collectives:  # one collective at a time, so its table appears when it is done
        samples = measure(comm, [name], sizes, iterations, iterations_large, warmup, warmup_large)
        if root:
            fits[name] = fit_entry(comm.size, samples[name])
            if not quiet:
                print("\n" + format_table(name, comm.size, hosts, library, fits[name]), flush=True)
    with agreed(comm, f"writing {out}"):
        if root:
            model = model or {
                "kind": MODEL_KIND, "version": __version__,
                "model": "t(p, n) = alpha + n * beta per collective, fitted at each measured rank "
                         "count p (a second line above a protocol switch); other p scaled by "
                         "ceil(log2 p) (binomial tree)",
                "fits": {},
            }
            model["fits"][str(comm.size)] = {
                "ranks": comm.size, "hosts": hosts, "measured": started,
                "mpi": {"library": library, "mpi4py": __import__("mpi4py").__version__},
                "method": {"warmup": warmup, "warmup_large": warmup_large, "iterations": iterations,
                           "iterations_large": iterations_large, "large_bytes": LARGE_BYTES,
                           "statistic": "per-rank mean over rounds; avg/min/max over ranks",
                           "barrier_between_rounds": True},
                "collectives": fits,
            }
            model["fits"] = dict(sorted(model["fits"].items(), key=lambda item: int(item[0])))
            _write_json(out, model)
    if root:
        print(f"\nmpigd: wrote {out} (rank counts fitted: {', '.join(model['fits'])})", flush=True)
    return model


def _probe_writable(path):
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test-{os.getpid()}-{platform.node()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise MpigdError(f"cannot write {path} ({exc.strerror or exc}); choose another --out") from None
