"""Scaling studies: sweeps over rank counts, speedup and efficiency, the cost model.

The lecture's speedup ratio is wall-clock time on one node over wall-clock time on m
nodes, for the same work. Here the time is seconds per iteration (`s_per_iter` of each
run's result.json: the training loop alone, no loading), the median over repeats:

    strong scaling (same data for every m):  speedup = T_b / T_m
    weak scaling (rows per rank fixed):       speedup = (m / b) * T_b / T_m  (scaled speedup)
    efficiency = speedup * b / m              (1 = perfect; weak: T_b / T_m)

where b is the smallest rank count of the series (normally 1, so speedup(1) is exactly 1).
Next to each measured point sits the lecture's cost model, made testable:

    T(m) = T_compute(b) * (rows per worker at m / at b) * imbalance(m) + T_update(b) + T_comm(m)

T_compute(b) is the mean compute per iteration at the baseline, imbalance(m) the measured
max/mean compute at m (the slowest rank of each iteration sets its pace, so the max is
taken per iteration, from history.csv), T_update(b) the server's serial update, and
T_comm(m) the collectives of one iteration from the Hockney fits of comm_model.json (see
commbench). With a straggler of delay d the model adds d to the prediction of the same
point without straggler: the wall follows the slowest rank.

This module turns runs (results.py) into the report dict; scaling_text.py writes it as
CSV, JSON and a table, plots.py draws it. Three commands share it: `scale` (after its
sweep), `scale-report` (any directory of runs, e.g. collected from Slurm jobs) and `plot`.
"""

import os
import platform
import statistics
import time

from .. import __version__
from ..errors import MpigdError
from .hockney import iteration_comm, load_model
from .results import load_runs
# Keys that make runs belong to the same curve; rank count varies along it.
SERIES_KEY = ("kind", "mode", "problem", "features", "dtype", "dedicated_server", "straggle_s")


# --- grouping and statistics ---------------------------------------------------------------

def infer_kind(runs):
    """strong if the rows never change with the rank count, weak if rows per worker don't."""
    rows = {r["rows"] for r in runs}
    if len(rows) == 1:
        return "strong"
    per_worker = {r["rows"] / r["workers"] for r in runs}
    by_ranks = {}
    for r in runs:
        by_ranks.setdefault(r["ranks"], set()).add(r["rows"])
    if len(per_worker) == 1 and all(len(v) == 1 for v in by_ranks.values()):
        return "weak"
    return "strong"  # several problems: one strong curve per row count


def _problem(run, kind):
    if kind == "weak":
        per_worker = run["rows"] / run["workers"]
        return f"{per_worker:g} rows/worker"
    return f"{run['rows']} rows"


def group_series(runs, kind="auto"):
    """{series key: {ranks: [runs]}}; kind decided per group of otherwise comparable runs."""
    groups = {}
    for run in runs:
        key = (run["mode"], run["features"], run["dtype"], run["dedicated_server"], run["straggle_s"])
        groups.setdefault(key, []).append(run)
    series = {}
    for members in groups.values():
        this_kind = infer_kind(members) if kind == "auto" else kind
        for run in members:
            run["kind"] = this_kind
            run["problem"] = _problem(run, this_kind)
            key = tuple(run[k] for k in SERIES_KEY)
            series.setdefault(key, {}).setdefault(run["ranks"], []).append(run)
    return series


_MEDIAN_FIELDS = ("s_per_iter", "compute_s", "compute_max_s", "compute_slowest_s", "bcast_s", "reduce_s",
                  "comm_s", "comm_wait_s", "sync_s", "sync_max_s", "update_s", "imbalance", "imbalance_iter", "load_s")


def aggregate(runs):
    """One point of a curve: the median over repeats of every per-iteration number."""
    first = runs[0]
    times = [r["s_per_iter"] for r in runs]
    point = {"ranks": first["ranks"], "workers": first["workers"], "rows": first["rows"],
             "repeats": len(runs)}
    for name in _MEDIAN_FIELDS:
        point[name] = statistics.median(r[name] for r in runs)
    point["s_per_iter_min"], point["s_per_iter_max"] = min(times), max(times)
    flags = [r["oversubscribed"] for r in runs]
    point["oversubscribed"] = True if any(flags) else (None if None in flags else False)
    point["ranks_per_host"] = max(r["ranks_per_host"] for r in runs)
    point["cpus_per_host"] = first["cpus_per_host"]
    point["hosts"] = sorted({h for r in runs for h in r["hosts"]})
    point["emulated_cluster"] = any(r.get("emulated_cluster") for r in runs)
    point["straggler_rank"] = first["straggler_rank"]
    point["run_dirs"] = [r["run_dir"] for r in runs]
    return point


def speedups(points, kind):
    """Fill speedup and efficiency along one curve, against its smallest rank count."""
    base = points[0]
    for p in points:
        ratio = base["s_per_iter"] / p["s_per_iter"]
        p["speedup"] = ratio * (p["ranks"] / base["ranks"]) if kind == "weak" else ratio
        p["efficiency"] = p["speedup"] * base["ranks"] / p["ranks"]


def predict_points(points, features, mode, model):
    """The cost model's seconds per iteration at every point of a curve without straggler."""
    base = points[0]
    per_row = base["compute_s"] / (base["rows"] / base["workers"])
    for p in points:
        comm, source = iteration_comm(model, p["ranks"], features, mode) if model else (None, None)
        p["predicted_comm_s"], p["model_source"] = comm, source
        if comm is None:
            p["predicted_s"] = None
            continue
        compute = per_row * (p["rows"] / p["workers"]) * p["imbalance_iter"]
        p["predicted_s"] = compute + base["update_s"] + comm


def _finish_prediction(points, kind):
    """Predicted speedup (the model's own T_b / T_m) and the error of each prediction."""
    base = points[0]
    for p in points:
        if not p.get("predicted_s") or not base.get("predicted_s"):
            p["predicted_speedup"] = p["error"] = None
            continue
        ratio = base["predicted_s"] / p["predicted_s"]
        p["predicted_speedup"] = ratio * (p["ranks"] / base["ranks"]) if kind == "weak" else ratio
        p["error"] = p["predicted_s"] / p["s_per_iter"] - 1


def _slope(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx


def straggler_effects(series):
    """For curves that differ only in the injected delay: how each time grows with it.

    The wall follows the slowest rank if seconds per iteration grow one for one with the
    delay (slope 1), like the slowest rank's compute does, while the mean compute grows
    only by 1/m of it.
    """
    groups = {}
    for s in series:
        key = tuple(s[k] for k in SERIES_KEY if k != "straggle_s")
        groups.setdefault(key, []).append(s)
    effects = []
    for members in groups.values():
        if len({s["straggle_s"] for s in members}) < 2:
            continue
        # On one rank a "straggler" is just slower compute: nobody waits for it.
        ranks = sorted({p["ranks"] for s in members for p in s["points"]} - {1})
        for m in ranks:
            at = sorted(((s["straggle_s"], p) for s in members for p in s["points"] if p["ranks"] == m),
                        key=lambda item: item[0])
            if len({d for d, _ in at}) < 2:
                continue
            delays = [d for d, _ in at]
            wall = _slope(delays, [p["s_per_iter"] for _, p in at])
            slowest = _slope(delays, [p["compute_slowest_s"] for _, p in at])
            mean = _slope(delays, [p["compute_s"] for _, p in at])
            wait = _slope(delays, [p["sync_max_s"] for _, p in at])
            first = members[0]
            effects.append({
                "mode": first["mode"], "problem": first["problem"], "ranks": m, "delays_s": delays,
                "s_per_iter": [p["s_per_iter"] for _, p in at],
                "compute_slowest_s": [p["compute_slowest_s"] for _, p in at],
                "compute_s": [p["compute_s"] for _, p in at],
                "sync_max_s": [p["sync_max_s"] for _, p in at],
                "wall_slope": wall, "slowest_slope": slowest, "mean_compute_slope": mean,
                "wait_slope": wait,
                # closer to the slowest rank than to the mean, and within 25 % of it
                "follows_slowest": abs(wall - slowest) < min(abs(wall - mean), 0.25 * abs(slowest)),
            })
    return effects


def _series_order(key):
    """Sort curves by their key, with the problem size ("200000 rows") as a number."""
    fields = dict(zip(SERIES_KEY, key))
    fields["problem"] = float(fields["problem"].split()[0])
    return tuple(fields[k] for k in SERIES_KEY)


DEFINITIONS = {
    "s_per_iter": "wall_s / evaluations of each run (training loop only); median of repeats",
    "speedup": "strong: T_b/T_m; weak: (m/b) T_b/T_m; b = smallest rank count of the series",
    "efficiency": "speedup * b / m",
    "compute_s": "mean over ranks (holding rows) of compute per iteration",
    "compute_max_s": "the slowest rank's total compute / evaluations (result.json)",
    "compute_slowest_s": "mean over iterations of the max over ranks of compute (history.csv)",
    "imbalance": "max/mean of per-rank compute totals (result.json)",
    "imbalance_iter": "compute_slowest_s / compute_s: what a synchronous iteration pays",
    "comm_s": "bcast + reduce + comm_wait per iteration, mean over ranks",
    "comm_wait_s": "Barrier wait not explained by compute imbalance (messages in flight)",
    "sync_s": "Barrier wait explained by the slowest rank's longer compute, mean over ranks",
    "predicted_s": "T_compute(b) * rows per worker ratio * imbalance_iter(m) + T_update(b) + "
                   "T_comm(m) [+ straggler delay]",
    "error": "predicted_s / s_per_iter - 1",
}


def _finish_predictions(series):
    """A straggler curve's prediction is its plain twin's plus the delay; then every error."""
    plain = {tuple(s[k] for k in SERIES_KEY if k != "straggle_s"): s for s in series if s["straggle_s"] == 0}
    for s in series:
        if s["straggle_s"] > 0:
            twin = plain.get(tuple(s[k] for k in SERIES_KEY if k != "straggle_s"))
            twin_at = {p["ranks"]: p for p in twin["points"]} if twin else {}
            for p in s["points"]:
                other = twin_at.get(p["ranks"])
                ok = other is not None and other.get("predicted_s") is not None
                p["predicted_s"] = other["predicted_s"] + s["straggle_s"] if ok else None
                p["predicted_comm_s"] = other["predicted_comm_s"] if ok else None
                p["model_source"] = other["model_source"] if ok else None
        _finish_prediction(s["points"], s["kind"])


def build_report(paths: list[str], kind: str = "auto", model_path: str | None = None) -> dict:
    """The whole scaling report (a dict) from result.json paths."""
    runs = load_runs(paths)
    if not runs:
        raise MpigdError("no runs to report on")
    model = load_model(model_path) if model_path else None
    grouped = group_series(runs, kind)
    series = []
    for key, by_ranks in sorted(grouped.items(), key=lambda item: _series_order(item[0])):
        s = dict(zip(SERIES_KEY, key))
        s["points"] = [aggregate(by_ranks[m]) for m in sorted(by_ranks)]
        s["baseline_ranks"] = s["points"][0]["ranks"]
        speedups(s["points"], s["kind"])
        if s["straggle_s"] == 0:
            predict_points(s["points"], s["features"], s["mode"], model)
        series.append(s)
    _finish_predictions(series)
    return {
        "version": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "report_host": platform.node(), "report_host_cpus": os.cpu_count(),
        "model": os.path.abspath(model_path) if model_path else None,
        "definitions": DEFINITIONS,
        "series": series,
        "stragglers": straggler_effects(series),
        "runs": runs,
    }
