"""PNG figures of a scaling report and of one run (matplotlib, Agg: no display needed).

matplotlib is imported here only, when a plot is asked for: training never pays for it.
Every figure says what is on its axes, in which unit, and for which problem.

    speedup.png     speedup vs ranks, the ideal line and the cost model's prediction
    efficiency.png  efficiency vs ranks (1 = perfect)
    breakdown.png   per-iteration time stacked as compute / comm / sync / update per rank count
    straggler.png   seconds per iteration vs injected delay (only with a straggler study)
    loss.png        loss vs iteration and vs wall-clock time for one run
"""

import os

from .. import rundir
from ..errors import MpigdError
from ..result import Result

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
PARTS = (("compute_s", "compute (mean over ranks)", "tab:blue"),
         ("comm_s", "comm (Bcast + Reduce + messages in flight)", "tab:orange"),
         ("sync_s", "sync (wait for the slowest)", "tab:red"),
         ("update_s", "update (server)", "tab:gray"))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MpigdError("plots need matplotlib: pip install 'mpigd[plot]' "
                         "(or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_available() -> None:
    """Raise the one-line 'plots need matplotlib' error now, before work whose end it would spoil."""
    _pyplot()


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    __import__("matplotlib.pyplot").pyplot.close(fig)
    return path


def _label(series):
    text = f"{series['mode']} mode"
    if series["straggle_s"] > 0:
        text += f", straggler +{1e3 * series['straggle_s']:g} ms"
    if series["dedicated_server"]:
        text += ", dedicated server"
    return text


def _subject(series_list):
    s = series_list[0]
    return f"{s['problem']} x {s['features']} features, {s['dtype']}"


def _ranks_axis(ax, ranks):
    if max(ranks) / min(ranks) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(m) for m in ranks])
    ax.set_xlabel("MPI ranks m")


def _shade_oversubscribed(ax, points):
    cpus = points[0].get("cpus_per_host")
    flagged = [p["ranks"] for p in points if p["oversubscribed"]]
    if cpus and flagged:
        right = max(p["ranks"] for p in points)
        ax.axvspan(cpus + 0.5 if cpus + 0.5 < min(flagged) else min(flagged) - 0.5, right + 0.5,
                   color="0.9", zorder=0, label=f"oversubscribed (> {cpus} CPUs): correctness only")


def _curves(report):
    """Curves over rank counts; straggler runs have their own figure when plain ones exist."""
    curves = [s for s in report["series"] if len(s["points"]) >= 2]
    plain = [s for s in curves if s["straggle_s"] == 0]
    return plain or curves


def plot_speedup(report, out, efficiency=False):
    plt = _pyplot()
    curves = _curves(report)
    fig, ax = plt.subplots(figsize=(7, 5.4))
    ranks = sorted({p["ranks"] for s in curves for p in s["points"]})
    base = min(s["baseline_ranks"] for s in curves)
    ideal_x = [m for m in ranks if m >= base]
    if efficiency:
        ax.plot(ideal_x, [1.0] * len(ideal_x), color="black", lw=1, ls=":", label="ideal (1)")
    else:
        ax.plot(ideal_x, [m / base for m in ideal_x], color="black", lw=1, ls=":", label="ideal (m)")
    for color, s in zip(COLORS * 4, curves):
        points = s["points"]
        x = [p["ranks"] for p in points]
        key = "efficiency" if efficiency else "speedup"
        y = [p[key] for p in points]
        b = points[0]
        # Error bars: the spread of the repeats. Each value is C / s_per_iter for a constant
        # C, so the slowest and fastest repeat give its lower and upper end.
        constant = [v * p["s_per_iter"] for v, p in zip(y, points)]
        low = [c / p["s_per_iter_max"] for c, p in zip(constant, points)]
        high = [c / p["s_per_iter_min"] for c, p in zip(constant, points)]
        ax.errorbar(x, y, yerr=[[v - lo for v, lo in zip(y, low)], [hi - v for v, hi in zip(y, high)]],
                    color=color, marker="o", capsize=3, label=f"measured, {_label(s)}")
        for p, v in zip(points, y):
            if p["oversubscribed"]:
                ax.plot([p["ranks"]], [v], marker="o", mfc="white", color=color, ms=8)
        predicted = [(p["ranks"], p["predicted_speedup"] * (b["ranks"] / p["ranks"] if efficiency else 1))
                     for p in points if p.get("predicted_speedup")]
        if predicted:
            ax.plot(*zip(*predicted), color=color, ls="--", marker="x",
                    label=f"predicted (Hockney model), {_label(s)}")
    _shade_oversubscribed(ax, curves[0]["points"])
    _ranks_axis(ax, ranks)
    kind = curves[0]["kind"]
    if efficiency:
        ax.set_ylabel("parallel efficiency = speedup · b / m")
        ax.set_ylim(bottom=0)
        title = f"{kind.capitalize()} scaling: efficiency"
    else:
        ax.set_ylabel("speedup T_b / T_m" if kind == "strong" else "scaled speedup (m/b) · T_b / T_m")
        ax.set_ylim(bottom=0)
        title = f"{kind.capitalize()} scaling: speedup (seconds per iteration, median)"
    ax.set_title(f"{title}\n{_subject(curves)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    # Below the axes: inside, it covered the ideal line and the 1-rank point.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return _save(fig, os.path.join(out, "efficiency.png" if efficiency else "speedup.png"))


def plot_breakdown(report, out):
    plt = _pyplot()
    series = report["series"][:6]
    fig, axes = plt.subplots(1, len(series), figsize=(max(6.5, 4.2 * len(series)), 4.6), squeeze=False)
    for ax, s in zip(axes[0], series):
        points = s["points"]
        x = list(range(len(points)))
        bottom = [0.0] * len(points)
        for key, label, color in PARTS:
            heights = [1e3 * p[key] for p in points]
            ax.bar(x, heights, bottom=bottom, color=color, label=label, width=0.6)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.plot(x, [1e3 * p["s_per_iter"] for p in points], "k_", ms=28, mew=2,
                label="measured wall time / iteration")
        predicted = [(i, 1e3 * p["predicted_s"]) for i, p in enumerate(points) if p.get("predicted_s")]
        if predicted:
            ax.plot(*zip(*predicted), "rx", ms=9, mew=2, label="predicted (model)")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{p['ranks']}{'*' if p['oversubscribed'] else ''}" for p in points])
        flagged = any(p["oversubscribed"] for p in points)
        ax.set_xlabel("MPI ranks m" + ("   (* oversubscribed: correctness only)" if flagged else ""))
        ax.set_ylabel("time per iteration (ms)")
        tallest = max(max(bottom), max(1e3 * p["s_per_iter"] for p in points))
        ax.set_ylim(0, 1.45 * tallest)  # headroom: the legend must not hide a bar
        ax.set_title(f"{s['kind']} scaling, {_label(s)}\n{s['problem']} x {s['features']} features",
                     fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    return _save(fig, os.path.join(out, "breakdown.png"))


def plot_straggler(report, out):
    plt = _pyplot()
    effects = report["stragglers"]
    fig, axes = plt.subplots(1, len(effects), figsize=(max(6.5, 5 * len(effects)), 4.6), squeeze=False)
    for ax, e in zip(axes[0], effects):
        d = [1e3 * v for v in e["delays_s"]]
        ax.plot(d, [1e3 * v for v in e["s_per_iter"]], "ko-", lw=2, label="wall time / iteration")
        ax.plot(d, [1e3 * v for v in e["compute_slowest_s"]], "s--", color="tab:red",
                label="slowest rank's compute")
        ax.plot(d, [1e3 * v for v in e["compute_s"]], "^--", color="tab:blue",
                label="mean compute over ranks")
        ax.plot(d, [1e3 * v for v in e["sync_max_s"]], "v:", color="tab:orange",
                label="longest wait (sync) of a rank")
        start = 1e3 * e["s_per_iter"][0] - d[0]
        ax.plot(d, [start + v for v in d], color="0.6", lw=1, label="no-straggler time + delay")
        ax.set_xlabel("delay injected on one rank per iteration (ms)")
        ax.set_ylabel("time per iteration (ms)")
        verdict = "wall follows the slowest rank" if e["follows_slowest"] else "wall does not follow"
        ax.set_title(f"Straggler, {e['mode']} mode, {e['ranks']} ranks: {verdict}\n"
                     f"slope: wall {e['wall_slope']:.2f}, slowest {e['slowest_slope']:.2f}, "
                     f"mean compute {e['mean_compute_slope']:.2f} ms/ms", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, os.path.join(out, "straggler.png"))


def _read_history(run_dir):
    try:
        rows = rundir.read_history(run_dir)
    except OSError as exc:
        raise MpigdError(f"cannot read the run in {run_dir} ({exc.strerror or exc}); give a run directory "
                         "that holds history.csv and result.json") from None
    if not os.path.exists(os.path.join(run_dir, rundir.RESULT)):
        raise MpigdError(f"cannot read the run in {run_dir} (no {rundir.RESULT}); give a run directory "
                         "that holds history.csv and result.json")
    return rows, Result.load(os.path.join(run_dir, rundir.RESULT))


def _curves_of(rows):
    """The convergence curves a history.csv can show: |g|/|g0| always, L - L* when known."""
    norm = [float(r["grad_norm"]) for r in rows]
    curves = [("|g_t| / |g_0|", [v / norm[0] if norm[0] else 0.0 for v in norm], "tab:blue")]
    if rows and rows[0].get("suboptimality") not in (None, ""):  # --reference exact
        curves.append(("L(w_t) − L(w*)", [float(r["suboptimality"]) for r in rows], "tab:red"))
    return curves


def plot_loss(run_dir, out):
    """Convergence of one run against iterations and wall-clock time.

    Raw loss on a log scale flattens after a few iterations (it approaches L(w*), not 0),
    so the curves are |g_t|/|g_0|, which --tol is judged by, and L(w_t) - L(w*) when the
    run knows w* (--reference exact). history.csv has each phase's max over ranks per
    iteration; their sum slightly overstates an iteration (the maxima come from different
    ranks), so the cumulative time is scaled to end at the run's measured wall_s.
    """
    plt = _pyplot()
    rows, result = _read_history(run_dir)
    iterations = [int(r["iteration"]) for r in rows]
    phases = [k for k in rows[0] if k.endswith("_max_s")] if rows else []
    steps = [sum(float(r[k] or 0) for k in phases) for r in rows]
    total = sum(steps) or 1.0
    elapsed, clock = [], 0.0
    for step in steps:
        clock += step
        elapsed.append(clock * result.wall_s / total)
    tol = result.config.get("tol") or 0
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.3))
    for ax, x, label in ((left, iterations, "iteration t"), (right, elapsed, "wall-clock time (s)")):
        for name, values, color in _curves_of(rows):
            kept = [(a, v) for a, v in zip(x, values) if v > 0]  # log scale
            if kept:
                ax.plot(*zip(*kept), color=color, label=name, marker="." if len(kept) < 60 else None)
        if tol:
            ax.axhline(tol, color="0.4", ls=":", lw=1, label=f"--tol {tol:g}")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(" and ".join(name for name, _, _ in _curves_of(rows)) or "|g_t| / |g_0|")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    left.set_title("convergence vs iteration", fontsize=10)
    right.set_title("convergence vs wall-clock time (training loop)", fontsize=10)
    fig.suptitle(f"{result.ranks} ranks, {result.mode} mode: {result.rows} rows x "
                 f"{result.features} features; {result.stop_reason} after {result.iterations} "
                 f"iterations, {1e3 * result.s_per_iter:.2f} ms/iteration", fontsize=10)
    os.makedirs(out, exist_ok=True)
    return _save(fig, os.path.join(out, "loss.png"))


def _default_run(report):
    """The typical run of the largest rank count that is not oversubscribed: its median repeat."""
    plain = [s for s in report["series"] if s["straggle_s"] == 0] or report["series"]
    points = [p for p in plain[0]["points"] if not p["oversubscribed"]] or plain[0]["points"]
    point = points[-1]
    runs = sorted((r for r in report["runs"] if r["run_dir"] in point["run_dirs"]),
                  key=lambda r: r["s_per_iter"])
    return runs[(len(runs) - 1) // 2]["run_dir"]


def write_all(report, out, run_dir=None):
    """Every figure that the report has data for; returns the paths written."""
    _pyplot()
    os.makedirs(out, exist_ok=True)
    written = []
    if _curves(report):
        written.append(plot_speedup(report, out))
        written.append(plot_speedup(report, out, efficiency=True))
    written.append(plot_breakdown(report, out))
    if report["stragglers"]:
        written.append(plot_straggler(report, out))
    written.append(plot_loss(run_dir or _default_run(report), out))
    return written
