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

Three entry points share this code: `scale` (mpigd.sweep runs a sweep, then reports),
`scale-report` (any directory of runs, e.g. collected from Slurm jobs) and `plot`.
"""

import csv
import json
import os
import platform
import statistics
import time

from . import __version__
from .errors import MpigdError

RESULT = "result.json"
SWEEP = "sweep.json"
MODEL = "comm_model.json"
REPORT_FILES = ("scaling.csv", "scaling.json", "scaling.txt")
# Keys that make runs belong to the same curve; rank count varies along it.
SERIES_KEY = ("kind", "mode", "problem", "features", "dtype", "dedicated_server", "straggle_s")


# --- reading runs -------------------------------------------------------------------------

def find_results(root):
    """Every result.json below root (recursively), in a stable order."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if RESULT in files:
            found.append(os.path.join(directory, RESULT))
    return found


def _cpus_of(host, entry):
    """CPUs of a run's host: recorded by the run if it did, else known only for this host."""
    if entry.get("cpus"):
        return int(entry["cpus"])
    return os.cpu_count() if host == platform.node() else None


def summarize_run(path):
    """The numbers of one result.json that a scaling study needs, per iteration."""
    from .config import parse_straggler

    try:
        with open(path) as handle:
            result = json.load(handle)
        config = result.get("config") or {}
        evaluations = result["evaluations"]
        phases = result["phases"]

        def per_iter(phase, stat="mean_s"):
            return phases.get(phase, {}).get(stat, 0.0) / evaluations

        per_rank = result["per_rank"]
        run = {
            "run_dir": os.path.dirname(os.path.abspath(path)),
            "ranks": int(result["ranks"]), "workers": int(result["workers"]),
            "rows": int(result["rows"]), "features": int(result["features"]),
            "dtype": result.get("dtype", ""),
            "mode": result.get("mode") or config.get("mode") or "server",
            "dedicated_server": bool(config.get("dedicated_server")),
            "iterations": int(result["iterations"]), "evaluations": int(evaluations),
            "s_per_iter": float(result["s_per_iter"]), "wall_s": float(result["wall_s"]),
            "load_s": float(result.get("load_s", 0.0)),
            "compute_s": per_iter("compute"), "compute_max_s": per_iter("compute", "max_s"),
            "bcast_s": per_iter("bcast"), "reduce_s": per_iter("reduce"),
            "sync_s": per_iter("sync"), "sync_max_s": per_iter("sync", "max_s"),
            "update_s": per_iter("update"),
            "imbalance": float(result.get("imbalance", 1.0)),
        }
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise MpigdError(f"{path} is not a complete mpigd result ({type(exc).__name__}: {exc}); "
                         "remove it or the run directory") from None
    run["comm_s"] = run["bcast_s"] + run["reduce_s"]
    # What a synchronous iteration pays is the slowest rank *of that iteration*; history.csv
    # has it (max over ranks per iteration), result.json only per-rank totals.
    slowest = _mean_history_column(os.path.join(run["run_dir"], "history.csv"), "compute_max_s")
    run["compute_slowest_s"] = run["compute_max_s"] if slowest is None else slowest
    run["imbalance_iter"] = (run["compute_slowest_s"] / run["compute_s"] if run["compute_s"] > 0
                             else run["imbalance"])
    straggler = config.get("straggler")
    rank, delay = parse_straggler(straggler) if straggler else (None, 0.0)
    run["straggle_s"] = float(delay)
    run["straggler_rank"] = rank if delay > 0 else None
    counts, cpus = {}, {}
    for entry in per_rank:
        host = entry.get("host") or "?"
        counts[host] = counts.get(host, 0) + 1
        cpus[host] = _cpus_of(host, entry)
    run["hosts"] = sorted(counts)
    run["ranks_per_host"] = max(counts.values())
    # More ranks than CPUs on any host: True; none: False; unknown for some host: None.
    over = [counts[h] > cpus[h] for h in counts if cpus[h]]
    run["oversubscribed"] = True if any(over) else (False if len(over) == len(counts) else None)
    run["cpus_per_host"] = min((c for c in cpus.values() if c), default=None)
    return run


def _mean_history_column(path, column):
    try:
        with open(path, newline="") as handle:
            values = [float(row[column]) for row in csv.DictReader(handle)]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return sum(values) / len(values) if values else None


def load_runs(paths):
    return [summarize_run(path) for path in paths]


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
                  "comm_s", "sync_s", "sync_max_s", "update_s", "imbalance", "imbalance_iter", "load_s")


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
    from .commbench import iteration_comm

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


def build_report(paths, kind="auto", model_path=None):
    """The whole scaling report (a dict) from result.json paths."""
    from .commbench import load_model

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
    # A straggler's curve: the same point without straggler, plus the delay.
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
    return {
        "version": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "report_host": platform.node(), "report_host_cpus": os.cpu_count(),
        "model": os.path.abspath(model_path) if model_path else None,
        "definitions": {
            "s_per_iter": "wall_s / evaluations of each run (training loop only); median of repeats",
            "speedup": "strong: T_b/T_m; weak: (m/b) T_b/T_m; b = smallest rank count of the series",
            "efficiency": "speedup * b / m",
            "compute_s": "mean over ranks (holding rows) of compute per iteration",
            "compute_max_s": "the slowest rank's total compute / evaluations (result.json)",
            "compute_slowest_s": "mean over iterations of the max over ranks of compute (history.csv)",
            "imbalance": "max/mean of per-rank compute totals (result.json)",
            "imbalance_iter": "compute_slowest_s / compute_s: what a synchronous iteration pays",
            "comm_s": "bcast + reduce per iteration, mean over ranks",
            "sync_s": "Barrier wait before the Reduce per iteration, mean over ranks",
            "predicted_s": "T_compute(b) * rows per worker ratio * imbalance_iter(m) + T_update(b) + "
                           "T_comm(m) [+ straggler delay]",
            "error": "predicted_s / s_per_iter - 1",
        },
        "series": series,
        "stragglers": straggler_effects(series),
        "runs": runs,
    }


# --- writing and printing ------------------------------------------------------------------

_CSV_SERIES = ("kind", "mode", "problem", "features", "dtype", "dedicated_server", "straggle_s")
_CSV_POINT = ("ranks", "workers", "rows", "repeats", "s_per_iter", "s_per_iter_min", "s_per_iter_max",
              "speedup", "efficiency", "compute_s", "compute_slowest_s", "compute_max_s", "comm_s",
              "bcast_s", "reduce_s", "sync_s", "sync_max_s", "update_s", "imbalance", "imbalance_iter",
              "predicted_s", "predicted_comm_s", "predicted_speedup", "error", "model_source",
              "oversubscribed", "ranks_per_host", "cpus_per_host", "load_s", "hosts", "run_dirs")


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(map(str, value))
    if isinstance(value, float):
        return repr(value)
    return value


def write_report(report, out):
    """scaling.csv, scaling.json and scaling.txt (the table) in `out`; returns the table."""
    os.makedirs(out, exist_ok=True)
    table = format_report(report)
    rows = [[_csv_value(s[k]) for k in _CSV_SERIES] + [_csv_value(p.get(k)) for k in _CSV_POINT]
            for s in report["series"] for p in s["points"]]
    _atomic(os.path.join(out, "scaling.csv"), lambda h: _write_csv(h, rows))
    _atomic(os.path.join(out, "scaling.json"), lambda h: h.write(json.dumps(report, indent=2) + "\n"))
    _atomic(os.path.join(out, "scaling.txt"), lambda h: h.write(table + "\n"))
    return table


def _write_csv(handle, rows):
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(_CSV_SERIES + _CSV_POINT)
    writer.writerows(rows)


def _atomic(path, write):
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w", newline="") as handle:
        write(handle)
    os.replace(partial, path)


def _ms(seconds):
    return "" if seconds is None else f"{1e3 * seconds:.3f}"


def _note(point):
    if point["oversubscribed"]:
        return f"oversubscribed ({point['ranks_per_host']} ranks > {point['cpus_per_host']} CPUs)"
    if point["oversubscribed"] is None:
        return "host CPUs unknown"
    return ""


def _straggler_rank(points):
    if all(p["straggler_rank"] == p["ranks"] - 1 for p in points):
        return "the last rank"
    return "rank " + ", ".join(sorted({str(p["straggler_rank"]) for p in points}))


def format_series(s):
    delayed = s["straggle_s"] > 0
    points = s["points"]
    lines = [
        f"{s['kind']} scaling, {s['mode']} mode: {s['problem']} x {s['features']} features "
        f"{s['dtype']}{', dedicated server' if s['dedicated_server'] else ''}"
        + (f"; straggler: +{1e3 * s['straggle_s']:g} ms per iteration on {_straggler_rank(points)}"
           if delayed else "")
        + f"; median of {max(p['repeats'] for p in points)} repeat(s); baseline {s['baseline_ranks']} "
        f"rank{'s' if s['baseline_ranks'] > 1 else ''}",
    ]
    header = (f"{'ranks':>5} {'ms/iter':>9} {'speedup':>7} {'effic':>6} {'compute':>8} {'slowest':>8} "
              f"{'comm':>7} {'sync':>7} {'update':>7} {'imbal':>6} {'predicted':>9} {'error':>7}  note")
    lines += [header, "-" * len(header)]
    for p in points:
        predicted = _ms(p.get("predicted_s"))
        if predicted and p.get("model_source") == "tree":
            predicted = "~" + predicted
        error = "" if p.get("error") is None else f"{100 * p['error']:+.1f}%"
        lines.append(
            f"{p['ranks']:>5} {_ms(p['s_per_iter']):>9} {p['speedup']:>7.3f} {p['efficiency']:>6.3f} "
            f"{_ms(p['compute_s']):>8} {_ms(p['compute_slowest_s']):>8} {_ms(p['comm_s']):>7} "
            f"{_ms(p['sync_s']):>7} {_ms(p['update_s']):>7} {p['imbalance_iter']:>6.3f} {predicted:>9} "
            f"{error:>7}  {_note(p)}".rstrip())
    return "\n".join(lines)


def format_straggler(effect):
    verdict = ("the wall follows the slowest rank" if effect["follows_slowest"]
               else "the wall does NOT follow the slowest rank here")
    delays = ", ".join(f"{1e3 * d:g}" for d in effect["delays_s"])
    walls = ", ".join(f"{1e3 * t:.2f}" for t in effect["s_per_iter"])
    return (f"straggler study, {effect['mode']} mode, {effect['ranks']} ranks: delay {delays} ms -> "
            f"{walls} ms/iter\n  per ms of delay: wall/iter {effect['wall_slope']:+.2f} ms, slowest "
            f"rank's compute {effect['slowest_slope']:+.2f} ms, mean compute "
            f"{effect['mean_compute_slope']:+.2f} ms, longest wait (sync) {effect['wait_slope']:+.2f} ms: "
            f"{verdict}")


LEGEND = """\
times in ms per iteration (training loop only; median of the repeats):
  compute  mean over ranks of the local gradient     slowest  the slowest rank's compute, per iteration
  comm     Bcast + Reduce, mean over ranks           sync     Barrier wait before the Reduce, mean over ranks
  update   the server's w update                     imbal    slowest / compute (1 = perfectly even)
speedup = T_b / T_m (weak: m/b * T_b / T_m), efficiency = speedup * b / m, b = the series' smallest rank count
predicted = T_compute(b) * rows-per-worker ratio * imbal(m) + T_update(b) + T_comm(m) [+ straggler delay],
  T_comm = Bcast + Barrier + Reduce (allreduce mode: Barrier + Allreduce) of d+1 doubles from
  comm_model.json (~: rank count not benchmarked, scaled by ceil(log2 p)); error = predicted / measured - 1
oversubscribed: more ranks than CPUs on a host: such rows check correctness, not speed"""


def format_report(report):
    blocks = [format_series(s) for s in report["series"]]
    blocks += [format_straggler(e) for e in report["stragglers"]]
    if report["model"] is None:
        blocks.append("no comm_model.json: no prediction (run `mpirun -n P python -m mpigd bench-comm "
                      "--out DIR/comm_model.json` per rank count P, or `scale` with --comm-model auto)")
    blocks.append(LEGEND)
    return "\n\n".join(blocks)


# --- the commands ------------------------------------------------------------------------

def _report_inputs(args):
    root = args.runs_dir
    if not os.path.isdir(root):
        raise MpigdError(f"{root} is not a directory; give the directory that holds the runs")
    paths = find_results(root)
    if not paths:
        raise MpigdError(f"no {RESULT} below {root}: nothing to report (runs write it when they complete)")
    model = args.model
    if model is None and os.path.exists(os.path.join(root, MODEL)):
        model = os.path.join(root, MODEL)
    kind = args.kind
    if kind == "auto" and os.path.exists(os.path.join(root, SWEEP)):
        try:
            with open(os.path.join(root, SWEEP)) as handle:
                kind = json.load(handle).get("kind", "auto")
        except (OSError, ValueError):
            kind = "auto"
    return paths, kind, model


def scale_report(args, say=print):
    paths, kind, model = _report_inputs(args)
    out = args.out or args.runs_dir
    report = build_report(paths, kind, model)
    say(write_report(report, out))
    written = [os.path.join(out, name) for name in REPORT_FILES]
    if args.plots:
        from .plots import write_all

        written += write_all(report, out)
    say("\nmpigd scale-report: wrote " + ", ".join(written))
    return report


def plot(args, say=print):
    from .plots import plot_loss, write_all

    out = args.out or args.runs_dir
    if os.path.exists(os.path.join(args.runs_dir, RESULT)) and args.run is None:
        written = [plot_loss(args.runs_dir, out)]   # a single run: its loss curves
    else:
        paths, kind, model = _report_inputs(args)
        written = write_all(build_report(paths, kind, model), out, run_dir=args.run)
    say("mpigd plot: wrote " + ", ".join(written))
    return written


def command(args):
    if args.command == "scale":
        from .sweep import sweep

        sweep(args)
    elif args.command == "scale-report":
        scale_report(args)
    else:
        plot(args)
    return 0
