"""`python -m mpigd bench-comm`: OSU-style timing of the collectives, fitted by hockney.py.

Method (the one of the OSU micro-benchmarks, which users trust): for each collective and
message size, a few untimed warm-up rounds, then many timed rounds with a Barrier between
them so every round starts with all ranks present; each rank averages its own rounds, and
the table shows the average, minimum and maximum of those averages over ranks.
`iteration` (Bcast + Barrier + Reduce) and `iteration-allreduce` (Barrier + Allreduce) are
the trainer's own sequence of collectives, timed as the trainer runs them: rounds back to
back with no Barrier between them, so that each round's Bcast waits for the last Reduce to
reach the server, as an iteration's does. Across hosts that chain, not the sum of the
single collectives, is what an iteration pays (the Reduce's message can travel with the
Barrier's last one; the next Bcast cannot start before the Reduce arrived).

The fit (t = alpha + n * beta per collective and rank count) is hockney.py's; the table
prints the fit's error at every size so nobody has to trust it blindly, and `--max-size`
restricts the fit to the sizes that matter.

Several rank counts go into one comm_model.json: each run replaces the entry of its own
rank count and keeps the others.
"""

import os
import platform
import re
import time

import numpy as np

from .. import __version__, rundir
from ..errors import MpigdError
from .hockney import MODEL_KIND, fit_entry, load_model

# `iteration` is the trainer's own sequence, Bcast + Barrier + Reduce of one buffer, timed as
# one round: across hosts the three overlap (a Reduce message can travel with the Barrier's
# last one), so the sum of their separate timings overstates an iteration's communication.
COLLECTIVES = ("bcast", "reduce", "allreduce", "barrier", "iteration", "iteration-allreduce")
MPI_NAMES = {"bcast": "MPI_Bcast", "reduce": "MPI_Reduce", "allreduce": "MPI_Allreduce",
             "barrier": "MPI_Barrier", "iteration": "Bcast+Barrier+Reduce (server mode)",
             "iteration-allreduce": "Barrier+Allreduce (allreduce mode)"}
LARGE_BYTES = 8192           # OSU's boundary between small and large messages
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """'8', '8B', '4K', '64MB' -> bytes (binary units, as OSU prints them)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = match and match.group(2).upper()
    if not match or unit not in _UNITS:
        raise MpigdError(f"message size must look like 8, 4K, 1M or 64MB; got {text!r}")
    return int(match.group(1)) * _UNITS[unit]


def message_sizes(min_bytes: int, max_bytes: int) -> list[int]:
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


# --- measuring (collective: every rank runs these) --------------------------------------

def _rounds(comm, operation, iterations, warmup, steady=False):
    """This rank's average seconds per round; a Barrier starts every round, untimed.

    steady: no Barrier between rounds, timed as one loop (the trainer's iterations follow
    each other like that: the next Bcast waits for the last Reduce's result at the server).
    """
    from time import perf_counter

    if steady:
        for _ in range(warmup):
            operation()
        comm.Barrier()
        started = perf_counter()
        for _ in range(iterations):
            operation()
        return (perf_counter() - started) / iterations
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
    if name == "iteration":
        target = r if comm.rank == 0 else None

        def iteration():
            comm.Bcast(s, root=0)
            comm.Barrier()
            comm.Reduce(s, target, op=MPI.SUM, root=0)
        return iteration
    if name == "iteration-allreduce":
        def iteration_allreduce():
            comm.Barrier()
            comm.Allreduce(s, r, op=MPI.SUM)
        return iteration_allreduce
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


def measure(comm, collectives: list[str], sizes: list[int], iterations: int,
            iterations_large: int, warmup: int, warmup_large: int) -> dict | None:
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
            mine = _rounds(comm, operation, rounds, warmup_large if large else warmup,
                           steady=name.startswith("iteration"))
            low, mean, high = _over_ranks(comm, mine)
            sample = {"bytes": nbytes, "avg_s": mean, "min_s": low, "max_s": high, "iterations": rounds}
            found[name].append(sample)
    return found if comm.rank == 0 else None


# --- the command ---------------------------------------------------------------------

def _read_existing(path):
    if not os.path.exists(path):
        return None
    return load_model(path)


def _us(seconds):
    return seconds * 1e6


def format_table(name: str, ranks: int, hosts: list[str], library: str, fit: dict) -> str:
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


def measure_and_fit(comm, out: str, collectives: list[str], sizes: list[int], iterations: int,
        iterations_large: int, warmup: int, warmup_large: int, quiet: bool = False) -> dict | None:
    """Collective: measure, fit, merge into `out`, print the tables; returns the model on rank 0."""
    # Imported here: importing mpi4py.MPI starts MPI, and the argument checks above
    # (parse_size, message_sizes) run before MPI starts, also in processes that launch jobs.
    from ..comm import agreed, gather_text
    from ..environment import mpi_library

    root = comm.rank == 0
    mpi = mpi_library()
    library = " ".join(mpi["library"].split())
    with agreed(comm, f"reading {out}"):
        model = _read_existing(out) if root else None
        if root:
            rundir.check_writable(os.path.dirname(os.path.abspath(out)), f"the directory of {out}")
    hosts = gather_text(comm, platform.node())
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
                "mpi": {"library": library, "mpi4py": mpi["mpi4py"]},
                "method": {"warmup": warmup, "warmup_large": warmup_large, "iterations": iterations,
                           "iterations_large": iterations_large, "large_bytes": LARGE_BYTES,
                           "statistic": "per-rank mean over rounds; avg/min/max over ranks",
                           "barrier_between_rounds": True},
                "collectives": fits,
            }
            model["fits"] = dict(sorted(model["fits"].items(), key=lambda item: int(item[0])))
            rundir.write_json(out, model)
    if root:
        print(f"\nmpigd: wrote {out} (rank counts fitted: {', '.join(model['fits'])})", flush=True)
    return model


