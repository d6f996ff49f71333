"""`python -m mpigd compare`: the methods side by side on the same data and ranks.

Each method is a real run (`mpirun -n RANKS python -m mpigd --method M ...` through
launch.run_mpigd) in OUT/M; the table reads their result.json (communication: rounds and
bytes per rank, methods.rounds) and weights.h5, and compares w with the exact answer w*:
the data's w_true when it was generated without noise, else numpy.linalg.lstsq on X and y
(read here, in the launcher process: X fits in memory for the problem sizes a comparison
runs on; above COMPARE_MAX_VALUES values the normal equations are accumulated in blocks).
"""

import json
import os
import shlex
import time

import numpy as np

from .. import rundir, synthetic
from ..errors import MpigdError
from ..launch import run_mpigd
from ..options import comma_list

METHODS = ("gd", "momentum", "cg", "sgd")
COMPARE_MAX_VALUES = 50_000_000  # 400 MB of float64: lstsq on X itself below this
COLUMNS = ("method", "stop", "iterations", "rounds", "bytes/rank", "wall to tol (s)",
           "|w-w*|/|w*|")


def exact_solution(path: str, x_name: str = "X", y_name: str = "y") -> tuple[np.ndarray, str]:
    """(w*, how it was found) for the data in `path`."""
    import h5py

    with h5py.File(path, "r") as f:
        if "w_true" in f and float(f.attrs.get("noise", -1)) == 0.0:
            return f["w_true"][()].astype(np.float64), "w_true (generated without noise)"
        X, y = f[x_name], f[y_name]
        rows, d = X.shape
        if rows * d <= COMPARE_MAX_VALUES:
            w = np.linalg.lstsq(X[()].astype(np.float64), y[()].reshape(-1).astype(np.float64),
                                rcond=None)[0]
            return w, "numpy.linalg.lstsq on X, y"
        A, b = np.zeros((d, d)), np.zeros(d)
        step = max(1, (1 << 22) // d)
        for lo in range(0, rows, step):
            Xb = X[lo:lo + step].astype(np.float64)
            A += Xb.T @ Xb
            b += Xb.T @ y[lo:lo + step].reshape(-1).astype(np.float64)
        return np.linalg.lstsq(A, b, rcond=None)[0], "numpy.linalg.lstsq on X^T X, X^T y (blocks)"


def _data(args, out: str) -> str:
    if args.data:
        return args.data
    directory = os.path.join(out, "data")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"compare-{args.rows}x{args.features}-seed{args.seed}"
                                   f"-cond{args.condition:g}-noise{args.noise:g}.h5")
    if not synthetic.matches(path, args.rows, args.features, args.seed, args.noise, "float64",
                             args.condition):
        synthetic.generate(path, args.rows, args.features, args.seed, noise=args.noise,
                           condition=args.condition)
    return path


def _run(method: str, args, path: str, out: str) -> dict:
    run_dir = os.path.join(out, method)
    argv = ["--data", path, "--method", method, "--tol", args.tol, "--iters", args.iters,
            "--mode", args.mode, "--out", run_dir, "--force", "--quiet",
            *shlex.split(args.train_args)]
    if method == "sgd":
        argv += shlex.split(args.sgd_args)
    run_mpigd(args.ranks, *map(str, argv), timeout=args.timeout)
    with open(os.path.join(run_dir, rundir.RESULT)) as handle:
        return json.load(handle)


def _row(method: str, result: dict, w_star: np.ndarray) -> dict:
    import h5py

    with h5py.File(os.path.join(result["run_dir"], rundir.WEIGHTS), "r") as f:
        w = f["w"][()]
    comm = result.get("communication") or {}
    return {"method": method, "stop": result["stop_reason"], "iterations": result["iterations"],
            "rounds": comm.get("rounds"), "bytes_per_rank": comm.get("bytes_per_rank"),
            "wall_to_tol_s": comm.get("wall_to_tol_s"), "wall_s": result["wall_s"],
            "error": float(np.linalg.norm(w - w_star) / np.linalg.norm(w_star)),
            "run_dir": result["run_dir"]}


def table(rows: list[dict]) -> str:
    def cells(r):
        wall = "not reached" if r["wall_to_tol_s"] is None else f"{r['wall_to_tol_s']:.3f}"
        return (r["method"], r["stop"], str(r["iterations"]), str(r["rounds"]),
                f"{r['bytes_per_rank']:,}", wall, f"{r['error']:.2e}")

    body = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in body]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _elapsed(rows_csv, wall_s):
    """Cumulative wall time per iteration: the phases' per-iteration maxima, scaled to wall_s."""
    phases = [k for k in rows_csv[0] if k.endswith("_max_s")] if rows_csv else []
    steps = np.array([sum(float(r[k] or 0) for k in phases) for r in rows_csv])
    cumulative = np.cumsum(steps)
    return cumulative * (wall_s / cumulative[-1]) if len(cumulative) and cumulative[-1] > 0 else cumulative


def plot(rows: list[dict], out: str, title: str, tol: float) -> str:
    """compare.png: |g_t|/|g_0| against iterations and against wall time, one curve per method."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = {"gd": "tab:blue", "momentum": "tab:orange", "cg": "tab:green", "sgd": "tab:red"}
    for r in rows:
        history = rundir.read_history(r["run_dir"])
        norm = np.array([float(h["grad_norm"]) for h in history])
        rel = norm / norm[0] if norm[0] > 0 else norm
        its = np.arange(1, len(rel) + 1)  # 1-based: log axes, cg's ~d rounds next to gd's thousands
        keep = rel > 0
        label = f"{r['method']} ({r['rounds']} rounds)"
        left.plot(its[keep], rel[keep], color=colors.get(r["method"]), label=label)
        right.plot(_elapsed(history, r["wall_s"])[keep], rel[keep], color=colors.get(r["method"]),
                   label=label)
    for ax, xlabel in ((left, "iteration + 1 (one round of Bcast + Reduce each)"),
                       (right, "wall-clock time of the training loop (s)")):
        ax.set_xscale("log")
        if tol:
            ax.axhline(tol, color="0.4", ls=":", lw=1, label=f"--tol {tol:g}")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("|g_t| / |g_0|")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, os.path.join(out, "compare.png"))


def command(args) -> int:
    """Run every method of --methods, print the table, write compare.json (and compare.png)."""
    methods = comma_list(args.methods, str, "--methods", "gd,momentum,cg")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MpigdError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.plots:
        from .plots import check_available

        check_available()
    out = args.out or os.path.join("runs", time.strftime("compare-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    path = _data(args, out)
    w_star, how = exact_solution(path)
    rows = []
    for method in methods:
        print(f"mpigd compare: {method} on {args.ranks} ranks ...", flush=True)
        rows.append(_row(method, _run(method, args, path, out), w_star))
    first = json.load(open(os.path.join(rows[0]["run_dir"], rundir.RESULT)))
    title = (f"{first['rows']} x {first['features']} ({os.path.basename(path)}), {args.ranks} "
             f"ranks, {args.mode} mode, --tol {args.tol:g}")
    print(f"\n{title}; w* = {how}\n" + table(rows))
    with open(os.path.join(out, "compare.json"), "w") as handle:
        json.dump({"data": os.path.abspath(path), "w_star": how, "ranks": args.ranks,
                   "mode": args.mode, "tol": args.tol, "methods": rows}, handle, indent=2)
    if args.plots:
        print(f"plot: {plot(rows, out, title, args.tol)}")
    return 0
