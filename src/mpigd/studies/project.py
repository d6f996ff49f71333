"""`python -m mpigd project`: predict scaling past the machine from one measured baseline.

The baseline is a run directory (its result.json, and trace.json or history.csv for the
per-iteration compute times) or a sweep directory (its runs at the smallest rank count,
the median repeat, and its comm_model.json). The network is a comm_model.json or a
latency and bandwidth (`--latency 1.5us --bandwidth 12GB/s`). The model is projection.py.
"""

import json
import os
import re

import numpy as np

from .. import rundir
from ..errors import MpigdError
from ..options import comma_list
from .hockney import load_model
from .projection import Baseline, Network, peak, powers_of_two, project
from .results import find_results, summarize_run

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_RATES = {"b/s": 1.0, "kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9, "tb/s": 1e12}


def parse_quantity(text: str, units: dict, option: str, example: str) -> float:
    """'1.5us' -> 1.5e-6 (units: suffix -> factor); a bare number is in the base unit."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e-?[0-9]+)?)\s*([a-zµ/]*)\s*", str(text).lower())
    factor = units.get(match.group(2) or next(iter(units))) if match else None
    try:
        value = float(match.group(1)) * factor if factor else None
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise MpigdError(f"{option} must be a positive quantity like {example}; got {text!r}")
    return value


def _pick_run(directory: str) -> str:
    """A run directory, or a sweep's median repeat at its smallest rank count (no straggler)."""
    if os.path.exists(os.path.join(directory, rundir.RESULT)):
        return directory
    runs = [summarize_run(p) for p in find_results(directory)]
    runs = [r for r in runs if r["straggle_s"] == 0 and r["mode"] == "server"]
    if not runs:
        raise MpigdError(f"{directory} holds no completed run (result.json) without a straggler in "
                         "server mode; pass a run directory or a sweep made by `mpigd scale`")
    smallest = min(r["ranks"] for r in runs)
    repeats = sorted((r for r in runs if r["ranks"] == smallest), key=lambda r: r["s_per_iter"])
    return repeats[len(repeats) // 2]["run_dir"]


def _deviations(run_dir: str, ranks: int) -> tuple[np.ndarray, str]:
    """Per-rank, per-iteration compute minus the rank's mean: from trace.json, else history.csv."""
    trace = os.path.join(run_dir, rundir.TRACE)
    if os.path.exists(trace):
        with open(trace) as handle:
            events = json.load(handle)["traceEvents"]
        by_rank = {}
        for e in events:
            if e.get("name") == "compute" and e.get("ph") == "X":
                by_rank.setdefault(e["tid"], []).append(e["dur"] * 1e-6)
        parts = [np.array(v) - np.mean(v) for v in by_rank.values() if len(v) > 1]
        if parts:
            return np.concatenate(parts), f"trace.json ({len(by_rank)} ranks x iterations)"
    column = [float(r["compute_max_s"]) for r in rundir.read_history(run_dir) if r.get("compute_max_s")]
    values = np.array(column[1:] if len(column) > 2 else column)  # the first pass warms caches
    what = "history.csv" + ("" if ranks == 1 else " (per-iteration max over ranks: an overestimate)")
    return values - values.mean(), what


def load_baseline(directory: str) -> Baseline:
    run_dir = _pick_run(directory)
    run = summarize_run(os.path.join(run_dir, rundir.RESULT))
    deviations, where = _deviations(run_dir, run["ranks"])
    compute = run["compute_s"] * run["ranks"] / max(1, run["workers"])  # workers hold the rows
    return Baseline(ranks=run["ranks"], workers=run["workers"], rows=run["rows"],
                    features=run["features"], s_per_iter=run["s_per_iter"], compute_s=compute, update_s=run["update_s"],
                    deviations_s=deviations, deviations_from=where, source=run_dir)


def load_network(args, directory: str) -> Network:
    if (args.latency is None) != (args.bandwidth is None):
        raise MpigdError("give --latency and --bandwidth together (e.g. --latency 1.5us "
                         "--bandwidth 12GB/s), or a --comm-model file")
    if args.latency is not None:
        alpha = parse_quantity(args.latency, _UNITS, "--latency", "1.5us or 50us")
        bandwidth = parse_quantity(args.bandwidth, {"b/s": 1.0, **_RATES}, "--bandwidth",
                                   "12GB/s or 1.2GB/s")
        return Network(alpha_s=alpha, beta_s_per_byte=1 / bandwidth,
                       label=f"{args.latency} latency, {args.bandwidth} per link")
    path = args.comm_model or os.path.join(directory, rundir.MODEL)
    if not os.path.exists(path):
        raise MpigdError(f"no communication model: {path} does not exist; pass --comm-model "
                         "FILE (from `mpigd bench-comm` or `mpigd scale`) or --latency and --bandwidth")
    return Network(model=load_model(path), label=f"fitted {os.path.abspath(path)}")


def _table(base: Baseline, kind: str, rows: list[dict]) -> list[str]:
    head = "ranks  compute_ms  sync_ms  update_ms  comm_ms  fixed_ms  t_iter_ms  speedup  efficiency"
    lines = [f"{kind} scaling" + (f" ({base.rows} rows)" if kind == "strong"
                                  else f" ({base.rows // max(1, base.workers)} rows per worker)"), head]
    for r in rows:
        lines.append(f"{r['ranks']:>5}  {1e3 * r['compute_s']:>10.4f}  {1e3 * r['sync_s']:>7.4f}  "
                     f"{1e3 * r['update_s']:>9.4f}  {1e3 * r['comm_s']:>7.4f}  {1e3 * r['overhead_s']:>8.4f}  "
                     f"{1e3 * r['t_iter_s']:>9.4f}  {r['speedup']:>7.2f}  {r['efficiency']:>10.1%}")
    return lines


def _report(base, network, ranks, kinds) -> tuple[dict, list[str]]:
    lines = [f"baseline: {base.source}: {base.ranks} rank(s), {base.rows} x {base.features}, "
             f"compute {1e3 * base.compute_s:.3f} ms/iteration per worker, update "
             f"{1e3 * base.update_s:.4f} ms, measured {1e3 * base.s_per_iter:.3f} ms/iteration; "
             f"fixed = the rest of it; compute deviations from {base.deviations_from}, "
             f"sd {1e3 * float(np.std(base.deviations_s)):.4f} ms, taken as {base.noise}",
             f"network:  {network.label}",
             "sync = E[max of w draws] - mean of the baseline's per-rank per-iteration compute "
             "deviations: the empirical distribution's exact expected maximum (bootstrap limit), "
             "a normal tail past the number of samples"]
    payload = {"baseline": {k: v for k, v in vars(base).items() if k != "deviations_s"},
               "network": {"label": network.label, "alpha_s": network.alpha_s,
                           "beta_s_per_byte": network.beta_s_per_byte}, "series": {}}
    for kind in kinds:
        rows = project(base, network, ranks, kind)
        payload["series"][kind] = rows
        lines += [""] + _table(base, kind, rows)
        if kind == "strong":
            top = peak(base, network, rows)
            payload["peak"] = top
            lines.append(
                f"speedup peaks at {top['ranks']} ranks ({top['speedup']:.1f}x, {top['where']}): "
                f"doubling from there saves {1e3 * top['doubling_saves_compute_s']:.4f} ms of compute "
                f"but adds {1e3 * top['doubling_adds_comm_s']:.4f} ms of communication and "
                f"{1e3 * top['doubling_adds_sync_s']:.4f} ms of synchronization "
                f"({top['bound_by']}{'' if top['bound_by'].startswith('not') else ' bound'}); the serial update and fixed cost "
                f"({1e3 * (base.update_s + rows[0]['overhead_s']):.4f} ms) cap any speedup at "
                f"{rows[0]['t_iter_s'] / (base.update_s + rows[0]['overhead_s']):.0f}x")
    return payload, lines


def command(args) -> int:
    """`python -m mpigd project BASELINE [--comm-model F | --latency L --bandwidth B]`."""
    if not os.path.isdir(args.baseline):
        raise MpigdError(f"{args.baseline} is not a directory; pass a run or sweep directory")
    ranks = sorted(set(comma_list(args.ranks, int, "--ranks", "1,2,4,1024"))) if args.ranks \
        else powers_of_two(4096)
    if ranks[0] < 1:
        raise MpigdError(f"--ranks needs rank counts >= 1; got {args.ranks!r}")
    if args.plots:
        from .plots import check_available

        check_available()
    base = load_baseline(args.baseline)
    base.noise = args.noise
    network = load_network(args, args.baseline)
    kinds = ("strong", "weak") if args.kind == "both" else (args.kind,)
    payload, lines = _report(base, network, ranks, kinds)
    out = args.out or os.path.join(base.source, "projection")
    os.makedirs(out, exist_ok=True)
    rundir.write_json(os.path.join(out, "projection.json"), payload, default=str)
    rundir.write_text(os.path.join(out, "projection.txt"), "\n".join(lines) + "\n")
    if args.plots:
        from .project_plots import plot_projection

        lines.append(f"plot: {plot_projection(payload, out)}")
    print("\n".join(lines + [f"written: {out}/projection.json, projection.txt"]), flush=True)
    return 0
