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
import shutil
import signal
import subprocess
import sys
import time

from . import __version__
from .errors import MpigdError, launcher_rank
from .scaling import MODEL, REPORT_FILES, RESULT, SWEEP, build_report, summarize_run, write_report

# Trainer options the sweep sets itself, so --train-args may not.
_OPTIONS_SET_BY_THE_SWEEP = ("--data", "--iters", "--tol", "--out", "--mode", "--straggler",
                             "--threads", "--force", "--quiet", "--config")
_say = functools.partial(print, flush=True)  # progress must show up in batch logs as it happens


def _kill_group(proc):
    """End a launched job and everything it started (mpiexec's ranks, srun's tasks)."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _quoted(argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


def _tail(text, lines=60):
    kept = text.strip().splitlines()[-lines:]
    return "\n".join("  | " + line for line in kept) if kept else "  | (no output)"


def run_job(argv, timeout, what, env=None):
    """Run one launched job to completion; any failure raises with its stderr, once."""
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
    except OSError as exc:
        raise MpigdError(f"cannot start {what}: {argv[0]}: {exc.strerror or exc}; check --launcher") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        raise MpigdError(f"{what} did not finish within --timeout {timeout:g} s and was killed\n"
                         f"  $ {_quoted(argv)}\n{_tail(stderr or stdout)}") from None
    except BaseException:  # Ctrl-C or anything else: never leave ranks running
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        raise MpigdError(f"{what} failed (exit code {proc.returncode})\n  $ {_quoted(argv)}\n"
                         f"{_tail(stderr or stdout)}")
    return stdout


# --- the sweep ---------------------------------------------------------------------------

def parse_ranks(text):
    try:
        ranks = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise MpigdError(f"--ranks must be a comma-separated list of integers like 1,2,4,8; "
                         f"got {text!r}") from None
    if not ranks or ranks[0] < 1:
        raise MpigdError(f"--ranks needs rank counts >= 1; got {text!r}")
    return ranks


def parse_delays(text):
    try:
        delays = sorted({float(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise MpigdError(f"--straggler-delays must be seconds like 0,0.01,0.02; got {text!r}") from None
    if not delays or delays[0] < 0 or not all(d < float("inf") for d in delays):
        raise MpigdError(f"--straggler-delays must be finite seconds >= 0; got {text!r}")
    return delays


def launcher_argv(template, n):
    """The launcher's argv for n ranks: "mpirun -n {n}", "srun -n {n} --cpu-bind=cores", ..."""
    if "{n}" not in template:
        raise MpigdError(f'--launcher must contain {{n}} where the rank count goes, e.g. "mpirun -n {{n}}" '
                         f"or \"srun -n {{n}}\"; got {template!r}")
    argv = shlex.split(template.replace("{n}", str(n)))
    if not argv or shutil.which(argv[0]) is None:
        raise MpigdError(f"--launcher {template!r}: {argv[0] if argv else 'nothing'} is not an executable "
                         "on PATH; give a full path, or load your MPI module")
    return argv


def default_launcher():
    from .launch import find_mpiexec

    return shlex.quote(find_mpiexec()) + " -n {n}"


def _data_file(directory, rows, features, seed):
    return os.path.join(directory, f"synthetic-{rows}x{features}-seed{seed}.h5")


def _ensure_data(path, rows, features, seed, say):
    from . import synthetic

    if synthetic.matches(path, rows, features, seed, 0.1, "float64"):
        return
    say(f"mpigd scale: generating {path} ({rows} x {features} float64)")
    synthetic.generate(path, rows, features, seed)


def _check_not_under_mpi():
    if launcher_rank() != 0 or any(os.environ.get(v, "1") not in ("", "1")
                                   for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        raise MpigdError("run `python -m mpigd scale` without mpirun: it launches every run "
                         "itself through --launcher")


def plan_sweep(args):
    """Validate the options and list the runs: (ranks, trainer mode, delay, repeat)."""
    ranks = parse_ranks(args.ranks)
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
        modes = list(dict.fromkeys(m.strip() for m in args.train_mode.split(",") if m.strip()))
    if not modes:
        raise MpigdError("--train-mode needs a list like server,allreduce")
    delays = parse_delays(args.straggler_delays) if args.straggler_delays else [0.0]
    if args.straggler_rank != "last":
        if not args.straggler_rank.isdigit():
            raise MpigdError(f"--straggler-rank must be a rank number or 'last', got {args.straggler_rank!r}")
        if int(args.straggler_rank) >= ranks[0]:
            raise MpigdError(f"--straggler-rank {args.straggler_rank} does not exist in a {ranks[0]}-rank "
                             "run; use a smaller rank or 'last'")
    if args.comm_model not in ("auto", "none"):
        from .commbench import load_model

        load_model(args.comm_model)  # a bad model file must stop the sweep before it runs
    runs = []
    # Repeats outermost: on a shared machine, load drifts over minutes, and interleaving
    # makes every rank count see the same conditions instead of one getting all the noise.
    for repeat in range(1, args.repeat + 1):
        for delay in delays:
            for mode in modes:
                for m in ranks:
                    runs.append({"ranks": m, "mode": mode, "delay": delay, "repeat": repeat})
    return ranks, modes, delays, train_args, dedicated, runs


def _run_name(run, modes, delays):
    name = f"p{run['ranks']:03d}"
    if modes != [None]:
        name += f"-{run['mode']}"
    if delays != [0.0]:
        name += f"-delay{1e3 * run['delay']:g}ms"
    return f"{name}-r{run['repeat']}"


def sweep(args, say=_say):
    _check_not_under_mpi()
    ranks, modes, delays, train_args, dedicated, runs = plan_sweep(args)
    out = args.out or os.path.join("runs", "scale-" + time.strftime("%Y%m%d-%H%M%S"))
    template = args.launcher or default_launcher()
    launcher_argv(template, 1)
    data_dir = args.data_dir or os.path.join(out, "data")
    plan = {
        "kind": args.kind, "ranks": ranks, "rows": args.rows, "features": args.features,
        "data": os.path.abspath(args.data) if args.data else None, "seed": args.seed,
        "iters": args.iters, "repeat": args.repeat,
        "train_modes": modes if modes != [None] else None,
        "straggler_delays_s": delays if delays != [0.0] else None,
        "straggler_rank": args.straggler_rank, "threads": args.threads, "train_args": train_args,
    }
    _check_plan(out, plan)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, SWEEP), "w") as handle:
        json.dump({**plan, "version": __version__, "launcher": template,
                   "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, handle, indent=2)

    data = {}
    for m in ranks:
        if args.data:
            data[m] = args.data
            continue
        rows = args.rows if args.kind == "strong" else args.rows * (m - 1 if dedicated else m)
        data[m] = _data_file(data_dir, rows, args.features, args.seed)
        _ensure_data(data[m], rows, args.features, args.seed, say)

    kernel = _one_kernel(data[ranks[0]], ranks[0] - 1 if dedicated else ranks[0], train_args)
    say(f"  gradient kernel for every run: {kernel}")

    paths = []
    for index, run in enumerate(runs, 1):
        m = run["ranks"]
        run_dir = os.path.join(out, _run_name(run, modes, delays))
        result = os.path.join(run_dir, RESULT)
        label = (f"[{index}/{len(runs)}] {m} rank{'s' if m > 1 else ''}"
                 + (f", {run['mode']}" if run["mode"] else "")
                 + (f", straggler +{1e3 * run['delay']:g} ms" if delays != [0.0] else "")
                 + f", repeat {run['repeat']}")
        if os.path.exists(result) and not args.force:
            say(f"  {label}: reusing {run_dir}")
        else:
            argv = launcher_argv(template, m) + [
                sys.executable, "-m", "mpigd", "train", "--data", data[m], "--iters", args.iters,
                "--tol", 0, "--threads", args.threads, "--quiet", "--force", "--out", run_dir]
            if run["mode"] is not None:
                argv += ["--mode", run["mode"]]
            if run["delay"] > 0:
                slow = m - 1 if args.straggler_rank == "last" else int(args.straggler_rank)
                argv += ["--straggler", f"{slow}:{run['delay']!r}"]
            run_job(argv + train_args, args.timeout, f"run {run_dir}", env={"MPIGD_KERNEL": kernel})
            seconds = summarize_run(result)["s_per_iter"]
            say(f"  {label}: {1e3 * seconds:.3f} ms/iteration  ({run_dir})")
        paths.append(result)

    features = summarize_run(paths[0])["features"]  # from the data, also with --data FILE
    model_path = _comm_model(args, out, ranks, template, features, say)
    report = build_report(paths, args.kind, model_path)
    say("\n" + write_report(report, out))
    written = [os.path.join(out, name) for name in REPORT_FILES]
    if args.plots:
        from .plots import write_all

        written += write_all(report, out)
    say("\nmpigd scale: wrote " + ", ".join(written))
    return report


def _one_kernel(path, workers, train_args):
    """The gradient kernel for all runs of the sweep: the baseline run's (objective.job_kernel).

    MPIGD_KERNEL=auto picks by shard size, so a strong sweep would switch from numba at
    1 rank to BLAS at m ranks and measure the kernels' difference as if it were scaling.
    """
    import h5py

    from .cli import build_parser
    from .config import TrainConfig
    from .data import compute_dtype
    from .objective import choose_kernel, job_kernel

    defaults = TrainConfig()
    try:  # the dataset and dtype the runs will use, read with the trainer's own parser
        options, _ = build_parser().parse_known_args(["train", *train_args])
        with h5py.File(path, "r") as f:
            X = f[getattr(options, "x_dataset", defaults.x_dataset)]  # unset options are absent
            dtype = compute_dtype(X.dtype, getattr(options, "dtype", defaults.dtype))
            return job_kernel(X.shape[0], X.shape[1], dtype.itemsize, workers)
    except (MpigdError, OSError, KeyError, AttributeError, IndexError, TypeError):
        return choose_kernel(0)  # bad options or data: the first run says what is wrong, once


def _check_plan(out, plan):
    """A sweep directory holds one sweep: rerunning it continues it, anything else is refused."""
    path = os.path.join(out, SWEEP)
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
    from .commbench import load_model

    choice = args.comm_model
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    path = os.path.join(out, MODEL)
    have = set(load_model(path)["fits"]) if os.path.exists(path) and not args.force else set()
    # The trainer's messages are d+1 doubles: time sizes from 8 B to a few times that.
    largest = 1024
    while largest < 4 * 8 * (features + 1):
        largest *= 2
    for m in ranks:
        if str(m) in have:
            continue
        argv = launcher_argv(template, m) + [
            sys.executable, "-m", "mpigd", "bench-comm", "--max-size", largest, "--out", path, "--quiet"]
        run_job(argv, args.timeout, f"bench-comm on {m} rank{'s' if m > 1 else ''}")
        say(f"  bench-comm: {m} rank{'s' if m > 1 else ''} -> {path}")
    return path


