"""The study subcommands: check their arguments, then hand over to the module doing the work.

    scale         sweep.py      runs over rank counts, then the report
    scale-report  scaling.py    the report of any directory of runs
    plot          plots.py      the report's figures, or one run's loss curves
    bench-comm    commbench.py  OSU-style collective timings and their Hockney fit
    bench         bench.py      one iteration against the hardware's floor

Argument errors are raised before MPI starts (one message, not one per rank).
"""

import json
import os

from .. import rundir
from ..errors import MpigdError, launcher_size
from ..options import comma_list
from . import commbench
from .plots import check_available as check_plots_available
from .plots import plot_loss, write_all
from .results import find_results
from .scaling import build_report
from .scaling_text import publish
from .sweep import sweep


def scale(args) -> int:
    if getattr(args, "batch_sizes", None):  # --method sgd at several batch sizes (batches.py)
        from .batches import command as batch_sweep

        return batch_sweep(args)
    sweep(args)
    return 0


def _report_inputs(args):
    """(result.json paths, kind, model path) of the directory a report is asked for."""
    root = args.runs_dir
    if not os.path.isdir(root):
        raise MpigdError(f"{root} is not a directory; give the directory that holds the runs")
    paths = find_results(root)
    if not paths:
        raise MpigdError(f"no {rundir.RESULT} below {root}: nothing to report (runs write it when "
                         "they complete)")
    model = args.model
    if model is None and os.path.exists(os.path.join(root, rundir.MODEL)):
        model = os.path.join(root, rundir.MODEL)
    kind = args.kind
    if kind == "auto" and os.path.exists(os.path.join(root, rundir.SWEEP)):
        try:
            with open(os.path.join(root, rundir.SWEEP)) as handle:
                kind = json.load(handle).get("kind", "auto")
        except (OSError, ValueError):
            kind = "auto"
    return paths, kind, model


def scale_report(args, say=print) -> int:
    if args.plots:
        check_plots_available()
    paths, kind, model = _report_inputs(args)
    publish(build_report(paths, kind, model), args.out or args.runs_dir, args.plots, say,
            "scale-report")
    return 0


def plot(args, say=print) -> int:
    out = args.out or args.runs_dir
    if os.path.exists(os.path.join(args.runs_dir, rundir.RESULT)) and args.run is None:
        written = [plot_loss(args.runs_dir, out)]   # a single run: its loss curves
    else:
        paths, kind, model = _report_inputs(args)
        written = write_all(build_report(paths, kind, model), out, run_dir=args.run)
    say("mpigd plot: wrote " + ", ".join(written))
    return 0


def bench_comm(args) -> int:
    collectives = comma_list(args.collectives, str, "--collectives", "bcast,reduce")
    if set(collectives) - set(commbench.COLLECTIVES):
        raise MpigdError(f"--collectives must name some of {','.join(commbench.COLLECTIVES)}; "
                         f"got {args.collectives!r}")
    for option in ("iters", "iters_large"):
        if getattr(args, option) < 1:
            raise MpigdError(f"--{option.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.warmup_large < 0:
        raise MpigdError("--warmup and --warmup-large must be >= 0")
    sizes = commbench.message_sizes(commbench.parse_size(args.min_size),
                                    commbench.parse_size(args.max_size))

    from mpi4py import MPI  # MPI starts only now: argument errors never needed it

    commbench.measure_and_fit(MPI.COMM_WORLD, args.out, collectives, sizes, args.iters, args.iters_large,
                  args.warmup, args.warmup_large, quiet=args.quiet)
    return 0


def bench(args) -> int:
    args.features = comma_list(args.features, int, "--features", "10,100,1000")
    args.dtype = comma_list(args.dtype, str, "--dtype", "float64,float32")
    if min(args.features) < 1 or args.rows_mb <= 0 or args.repeat < 1 or args.comm_iters < 1 \
            or args.train_iters < 1:
        raise MpigdError("--features, --rows-mb, --repeat, --comm-iters and --train-iters must be positive")
    if set(args.dtype) - {"float64", "float32"}:
        raise MpigdError(f"--dtype takes float64 and/or float32; got {','.join(args.dtype)}")
    if args.generate_rows < 0:
        raise MpigdError("--generate-rows must be >= 0 (0 skips the generation rows)")
    if args.part == "generate" and (launcher_size() > 1 or args.generate_rows == 0):
        raise MpigdError("--part generate launches its own 1- and 2-rank runs: start it without "
                         "mpirun, with --generate-rows >= 1")
    from .bench import command  # imports mpi4py.MPI, which starts MPI: only after the checks

    return command(args)
