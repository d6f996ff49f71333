"""Completed runs as a scaling study sees them: per-iteration numbers of each result.json.

A run's `s_per_iter` is the training loop alone (no loading); the phases are per
iteration, means over ranks unless named otherwise. What a synchronous iteration pays is
the slowest rank of *that* iteration, which only history.csv knows (max over ranks per
iteration); result.json has per-rank totals.
"""

import os
import platform

from .. import rundir
from ..config import parse_straggler
from ..result import Result


def find_results(root: str) -> list[str]:
    """Every result.json below root (recursively), in a stable order."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if rundir.RESULT in files:
            found.append(os.path.join(directory, rundir.RESULT))
    return found


def _cpus_of(host: str, entry) -> int | None:
    """CPUs of a run's host: recorded by the run if it did, else known only for this host."""
    if entry.cpus:
        return int(entry.cpus)
    return os.cpu_count() if host == platform.node() else None


def _placement(result: Result) -> dict:
    """Hosts, ranks per host, and whether any host ran more ranks than it has CPUs."""
    if result.placement:  # recorded by the run (mpigd >= 0.2), emulated clusters included
        p = result.placement
        return {"hosts": sorted(p["ranks_by_host"]),
                "ranks_per_host": max(len(r) for r in p["ranks_by_host"].values()),
                "oversubscribed": bool(p["oversubscribed_hosts"]),
                "cpus_per_host": min(p["cpus_by_host"].values(), default=None) or None,
                "emulated_cluster": p["emulated_cluster"]}
    counts, cpus = {}, {}
    for entry in result.per_rank:
        host = entry.host or "?"
        counts[host] = counts.get(host, 0) + 1
        cpus[host] = _cpus_of(host, entry)
    # More ranks than CPUs on any host: True; none: False; unknown for some host: None.
    over = [counts[h] > cpus[h] for h in counts if cpus[h]]
    return {"hosts": sorted(counts), "ranks_per_host": max(counts.values()),
            "oversubscribed": True if any(over) else (False if len(over) == len(counts) else None),
            "cpus_per_host": min((c for c in cpus.values() if c), default=None),
            "emulated_cluster": False}


def summarize_run(path: str) -> dict:
    """The numbers of one result.json that a scaling study needs, per iteration."""
    result = Result.load(path)
    per_iter = result.phase_per_iteration
    run = {
        "run_dir": os.path.dirname(os.path.abspath(path)),
        "ranks": result.ranks, "workers": result.workers,
        "rows": result.rows, "features": result.features, "dtype": result.dtype,
        "mode": result.mode or result.config.get("mode") or "server",
        "dedicated_server": bool(result.config.get("dedicated_server")),
        "iterations": result.iterations, "evaluations": result.evaluations,
        "s_per_iter": result.s_per_iter, "wall_s": result.wall_s, "load_s": result.load_s,
        "compute_s": per_iter("compute"), "compute_max_s": per_iter("compute", "max_s"),
        "bcast_s": per_iter("bcast"), "reduce_s": per_iter("reduce"),
        "sync_s": per_iter("sync"), "sync_max_s": per_iter("sync", "max_s"),
        "comm_wait_s": per_iter("comm_wait"),
        "update_s": per_iter("update"), "imbalance": result.imbalance,
    }
    # Communication is the collectives plus waiting for messages in flight (timing.py).
    run["comm_s"] = run["bcast_s"] + run["reduce_s"] + run["comm_wait_s"]
    slowest = rundir.history_mean(run["run_dir"], "compute_max_s")
    run["compute_slowest_s"] = run["compute_max_s"] if slowest is None else slowest
    run["imbalance_iter"] = (run["compute_slowest_s"] / run["compute_s"] if run["compute_s"] > 0
                             else run["imbalance"])
    straggler = result.config.get("straggler")
    rank, delay = parse_straggler(straggler) if straggler else (None, 0.0)
    run["straggle_s"] = float(delay)
    run["straggler_rank"] = rank if delay > 0 else None
    run.update(_placement(result))
    return run


def load_runs(paths: list[str]) -> list[dict]:
    return [summarize_run(path) for path in paths]
