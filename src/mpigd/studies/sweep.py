"""`python -m mpigd scale`: run the trainer over rank counts (and repeats), then report.

Every run is one launched job (`mpiexec -n {n}`, `srun -n {n}`, ... from --launcher) with
its own run directory under --out, a timeout, and its process group killed if it has to
be stopped, so no rank outlives the sweep. A failed run ends the sweep with its stderr.
The sweep directory holds one sweep (sweep.json): rerunning the same command there reuses
the completed runs, so an interrupted sweep continues where it stopped. Afterwards the
report of mpigd.scaling is written, exactly as `scale-report` would write it.
"""

import functools
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass

import h5py

from .. import __version__, rundir, synthetic
from ..config import TrainConfig
from ..data import compute_dtype
from ..errors import MpigdError, launcher_rank
from ..launch import default_launcher, launcher_argv, run_job
from ..objective import job_kernel
from ..options import comma_list, parse_train_args
from .hockney import load_model
from .results import summarize_run
from .scaling import build_report
from .plots import check_available as check_plots_available
from .scaling_text import publish

# Trainer options the sweep sets itself, so --train-args may not.
_OPTIONS_SET_BY_THE_SWEEP = ("--data", "--iters", "--tol", "--out", "--mode", "--straggler",
                             "--threads", "--force", "--quiet", "--config")
_say = functools.partial(print, flush=True)  # progress must show up in batch logs as it happens


# Trainer options the sweep sets itself, so --train-args may not.
# --- the sweep ---------------------------------------------------------------------------

def parse_ranks(text: str) -> list[int]:
    ranks = sorted(set(comma_list(text, int, "--ranks", "1,2,4,8")))
    if ranks[0] < 1:
        raise MpigdError(f"--ranks needs rank counts >= 1; got {text!r}")
    return ranks


def parse_delays(text: str) -> list[float]:
    delays = sorted(set(comma_list(text, float, "--straggler-delays", "0,0.01,0.02")))
    if delays[0] < 0 or not all(d < float("inf") for d in delays):
        raise MpigdError(f"--straggler-delays must be finite seconds >= 0; got {text!r}")
    return delays


def _check_not_under_mpi():
    if launcher_rank() != 0 or any(os.environ.get(v, "1") not in ("", "1")
                                   for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        raise MpigdError("run `python -m mpigd scale` without mpirun: it launches every run "
                         "itself through --launcher")


@dataclass
class Plan:
    """A validated sweep: what varies, the trainer options, and the runs in their order."""

    ranks: list[int]
    modes: list[str | None]       # trainer --mode values; [None] = the trainer's default
    delays: list[float]           # straggler delays; [0.0] = no straggler study
    train_args: list[str]
    dedicated: bool
    runs: list[dict]              # {ranks, mode, delay, repeat}


def _check_options(args, ranks):
    for name in ("rows", "features", "iters", "repeat", "threads"):
        if getattr(args, name) < 1:
            raise MpigdError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.timeout > 0:
        raise MpigdError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.data and args.kind == "weak":
        raise MpigdError("--data is for strong scaling; weak scaling generates --rows per rank for each "
                         "rank count")
    if args.data and not os.path.isfile(args.data):
        raise MpigdError(f"--data {args.data} does not exist; make one with `python -m mpigd generate`")
    if args.straggler_rank != "last":
        if not args.straggler_rank.isdigit():
            raise MpigdError(f"--straggler-rank must be a rank number or 'last', got {args.straggler_rank!r}")
        if int(args.straggler_rank) >= ranks[0]:
            raise MpigdError(f"--straggler-rank {args.straggler_rank} does not exist in a {ranks[0]}-rank "
                             "run; use a smaller rank or 'last'")
    if args.comm_model not in ("auto", "none"):
        load_model(args.comm_model)  # a bad model file must stop the sweep before it runs


def plan_sweep(args) -> Plan:
    """Validate the options and list the runs: (ranks, trainer mode, delay, repeat)."""
    ranks = parse_ranks(args.ranks)
    _check_options(args, ranks)
    train_args = shlex.split(args.train_args or "")
    for option in train_args:
        if option.split("=")[0] in _OPTIONS_SET_BY_THE_SWEEP:
            raise MpigdError(f"--train-args may not set {option.split('=')[0]}: the sweep sets it "
                             "(see `python -m mpigd scale --help`)")
    dedicated = "--dedicated-server" in train_args
    if dedicated and ranks[0] < 2:
        raise MpigdError("--dedicated-server needs at least 2 ranks per run; drop 1 from --ranks")
    modes = [None]
    if args.train_mode:
        modes = list(dict.fromkeys(comma_list(args.train_mode, str, "--train-mode", "server,allreduce")))
    delays = parse_delays(args.straggler_delays) if args.straggler_delays else [0.0]
    # Repeats outermost: on a shared machine, load drifts over minutes, and interleaving
    # makes every rank count see the same conditions instead of one getting all the noise.
    runs = [{"ranks": m, "mode": mode, "delay": delay, "repeat": repeat}
            for repeat in range(1, args.repeat + 1) for delay in delays for mode in modes
            for m in ranks]
    return Plan(ranks, modes, delays, train_args, dedicated, runs)


def _run_name(run, plan):
    name = f"p{run['ranks']:03d}"
    if plan.modes != [None]:
        name += f"-{run['mode']}"
    if plan.delays != [0.0]:
        name += f"-delay{1e3 * run['delay']:g}ms"
    return f"{name}-r{run['repeat']}"


def _label(index, run, plan):
    m = run["ranks"]
    return (f"[{index}/{len(plan.runs)}] {m} rank{'s' if m > 1 else ''}"
            + (f", {run['mode']}" if run["mode"] else "")
            + (f", straggler +{1e3 * run['delay']:g} ms" if plan.delays != [0.0] else "")
            + f", repeat {run['repeat']}")


def sweep(args, say=_say) -> dict:
    """`python -m mpigd scale`: plan, make the data, run every run (reusing finished ones), report."""
    _check_not_under_mpi()
    plan = plan_sweep(args)
    if args.plots:
        check_plots_available()  # not after an hour of runs
    out = args.out or os.path.join("runs", "scale-" + time.strftime("%Y%m%d-%H%M%S"))
    template = args.launcher or default_launcher()
    launcher_argv(template, 1)
    _record_plan(args, plan, out, template)
    data = _data_per_rank_count(args, plan, out, template, say)
    kernel = _one_kernel(data[plan.ranks[0]], plan.ranks[0] - 1 if plan.dedicated else plan.ranks[0],
                         plan.train_args)
    say(f"  gradient kernel for every run: {kernel}")
    paths = [_run_one(args, plan, out, template, index, run, data, kernel, say)
             for index, run in enumerate(plan.runs, 1)]
    features = summarize_run(paths[0])["features"]  # from the data, also with --data FILE
    model_path = _comm_model(args, out, plan.ranks, template, features, say)
    report = build_report(paths, args.kind, model_path)
    say("")
    publish(report, out, args.plots, say, "scale")
    return report


def _record_plan(args, plan, out, template):
    """sweep.json: what the sweep is; a directory holds one sweep (see _check_plan)."""
    recorded = {
        "kind": args.kind, "ranks": plan.ranks, "rows": args.rows, "features": args.features,
        "data": os.path.abspath(args.data) if args.data else None, "seed": args.seed,
        "iters": args.iters, "repeat": args.repeat,
        "train_modes": plan.modes if plan.modes != [None] else None,
        "straggler_delays_s": plan.delays if plan.delays != [0.0] else None,
        "straggler_rank": args.straggler_rank, "threads": args.threads,
        "train_args": plan.train_args,
    }
    _check_plan(out, recorded)
    os.makedirs(out, exist_ok=True)
    rundir.write_json(os.path.join(out, rundir.SWEEP),
                      {**recorded, "version": __version__, "launcher": template,
                       "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _data_per_rank_count(args, plan, out, template, say):
    """{rank count: data file}: --data, or synthetic data (weak: --rows per worker) made once."""
    data_dir = args.data_dir or os.path.join(out, "data")
    data = {}
    for m in plan.ranks:
        if args.data:
            data[m] = args.data
            continue
        rows = args.rows if args.kind == "strong" else args.rows * (m - 1 if plan.dedicated else m)
        # strong: the one file, written by the most ranks the sweep starts
        data[m] = _generated(args, template, data_dir, rows, m if args.kind == "weak" else plan.ranks[-1], say)
    return data


def _generated(args, template, data_dir, rows, ranks, say):
    """The synthetic file of `rows` rows, generated (if absent) through the launcher on `ranks`
    ranks, each its own blocks: weak-scaling data grow with the ranks, so does its writing."""
    path = os.path.join(data_dir, synthetic.file_name(rows, args.features, args.seed))
    if synthetic.matches(path, rows, args.features, args.seed, synthetic.NOISE, "float64"):
        return path
    say(f"mpigd scale: generating {path} ({rows} x {args.features} float64) on {ranks} "
        f"rank{'s' if ranks > 1 else ''}")
    argv = launcher_argv(template, ranks) + [
        sys.executable, "-m", "mpigd", "generate", "--rows", rows, "--features", args.features,
        "--seed", args.seed, "--out-dir", data_dir]
    run_job(argv, args.timeout, f"generating {path}")
    return path


def _run_one(args, plan, out, template, index, run, data, kernel, say):
    """One run of the sweep through the launcher (or its earlier result); its result.json path."""
    m = run["ranks"]
    run_dir = os.path.join(out, _run_name(run, plan))
    result = os.path.join(run_dir, rundir.RESULT)
    label = _label(index, run, plan)
    if os.path.exists(result) and not args.force:
        say(f"  {label}: reusing {run_dir}")
        return result
    argv = launcher_argv(template, m) + [
        sys.executable, "-m", "mpigd", "train", "--data", data[m], "--iters", args.iters,
        "--tol", 0, "--threads", args.threads, "--quiet", "--force", "--out", run_dir,
        "--kernel", kernel]
    if run["mode"] is not None:
        argv += ["--mode", run["mode"]]
    if run["delay"] > 0:
        slow = m - 1 if args.straggler_rank == "last" else int(args.straggler_rank)
        argv += ["--straggler", f"{slow}:{run['delay']!r}"]
    run_job(argv + plan.train_args, args.timeout, f"run {run_dir}")
    say(f"  {label}: {1e3 * summarize_run(result)['s_per_iter']:.3f} ms/iteration  ({run_dir})")
    return result


def _one_kernel(path, workers, train_args):
    """The gradient kernel for all runs of the sweep: the baseline run's (objective.job_kernel).

    `auto` picks by shard size, so a strong sweep would switch from numba at 1 rank to BLAS
    at m ranks and measure the kernels' difference as if it were scaling.
    """
    defaults = TrainConfig()
    try:  # the dataset, dtype and kernel the runs will use, read with the trainer's own parser
        options = parse_train_args(train_args)
        with h5py.File(path, "r") as f:
            X = f[options.get("x_dataset", defaults.x_dataset)]  # unset options are absent
            dtype = compute_dtype(X.dtype, options.get("dtype", defaults.dtype))
            return job_kernel(X.shape[0], X.shape[1], dtype.itemsize, workers, options.get("kernel"))
    except (MpigdError, OSError, KeyError, AttributeError, IndexError, TypeError):
        return "blas"  # bad options or data: the first run says what is wrong, once


def _check_plan(out, plan):
    """A sweep directory holds one sweep: rerunning it continues it, anything else is refused."""
    path = os.path.join(out, rundir.SWEEP)
    if not os.path.exists(path):
        return
    try:
        with open(path) as handle:
            before = json.load(handle)
    except (OSError, ValueError) as exc:
        raise MpigdError(f"{path} is unreadable ({exc}); choose another --out") from None
    changed = [k for k in plan if before.get(k) != plan[k]]
    if changed:
        what = ", ".join(f"{k}: {before.get(k)!r} -> {plan[k]!r}" for k in changed)
        raise MpigdError(f"{out} holds a different sweep ({what}); choose another --out (rerunning the "
                         "same sweep there reuses its completed runs)")


def _comm_model(args, out, ranks, template, features, say):
    """The comm_model.json to predict with: benchmarked now (auto), given, or none."""
    choice = args.comm_model
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    path = os.path.join(out, rundir.MODEL)
    have = set(load_model(path)["fits"]) if os.path.exists(path) and not args.force else set()
    # The trainer's messages are d+1 doubles: time sizes from 8 B to a few times that.
    largest = 1024
    while largest < 4 * 8 * (features + 1):
        largest *= 2
    for m in ranks:
        if str(m) in have:
            continue
        argv = launcher_argv(template, m) + [
            sys.executable, "-m", "mpigd", "bench-comm", "--max-size", largest, "--out", path, "--quiet",
            *shlex.split(args.bench_comm_args or "")]
        run_job(argv, args.timeout, f"bench-comm on {m} rank{'s' if m > 1 else ''}")
        say(f"  bench-comm: {m} rank{'s' if m > 1 else ''} -> {path}")
    return path
