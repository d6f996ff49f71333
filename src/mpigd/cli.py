"""Command line: `python -m mpigd [train] ...` (the default) and `python -m mpigd generate ...`.

Parsing never starts MPI, and only rank 0 prints help or usage errors, so a typo under
`mpirun -n 16` gives one message, not sixteen.
"""

import argparse
import sys

from . import __version__, importer
from .errors import MpigdError, launcher_rank

COMMANDS = ("train", "generate", "import", "scale", "scale-report", "bench-comm", "plot", "bench")


class _Parser(argparse.ArgumentParser):
    def _print_message(self, message, file=None):
        if launcher_rank() == 0:
            super()._print_message(message, file)

    def error(self, message):
        # prog is "mpigd" or "mpigd train": the hint names the help that lists the options.
        raise MpigdError(f"{message} (see `python -m {self.prog} --help`)")


def _train_parser(sub):
    p = sub.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="train by data-parallel gradient descent (the default command)",
        description="Least squares by synchronous data-parallel gradient descent: rank 0 "
        "broadcasts w, every rank computes the gradient over its own rows of the HDF5 "
        "file, one Reduce sums them at rank 0, rank 0 updates w. Run it under "
        "`mpirun -n M`. Without --data it trains on an embedded synthetic problem.",
    )
    p.add_argument("--config", metavar="FILE.toml", help="settings file; command-line options override it")
    p.add_argument("--data", metavar="FILE.h5", help="input HDF5 file (default: generate a synthetic one)")
    p.add_argument("--x-dataset", metavar="NAME", help="name of the (n, d) features dataset [X]")
    p.add_argument("--y-dataset", metavar="NAME", help="name of the (n,) or (n, 1) targets dataset [y]")
    p.add_argument("--iters", metavar="K", help="maximum number of updates [200]")
    p.add_argument("--lr", metavar="auto|FLOAT",
                   help="step size; auto = 1/lambda_max(X^T X) by power iteration [auto]")
    p.add_argument("--tol", metavar="T", help="stop when ||g_t|| <= T ||g_0||; 0 never stops early [1e-6]")
    p.add_argument("--out", metavar="DIR", help="run directory [runs/<timestamp>]")
    p.add_argument("--force", action="store_true", help="replace a previous result in --out")
    p.add_argument("--dedicated-server", action="store_true",
                   help="rank 0 holds no rows: it only broadcasts, receives and updates")
    p.add_argument("--dtype", choices=("auto", "float64", "float32"),
                   help="compute precision; auto = the file's float type [auto]")
    p.add_argument("--standardize", action="store_true",
                   help="scale features collectively (weights are reported in original units)")
    p.add_argument("--intercept", action="store_true", help="fit a bias term")
    p.add_argument("--threads", metavar="N", help="BLAS threads per rank [1 when ranks > 1]")
    p.add_argument("--straggler", metavar="RANK:SECONDS",
                   help="add SECONDS of sleep to RANK's compute each iteration")
    p.add_argument("--seed", metavar="S", help="seed of the power iteration's start vector [0]")
    p.add_argument("--quiet", action="store_true", help="no progress lines, no summary table")
    p.add_argument("--mode", choices=("server", "allreduce"),
                   help="server: Bcast + Reduce to rank 0 (the lecture's client-server); "
                   "allreduce: peer to peer, every rank updates its own w [server]")
    p.add_argument("--trace", action="store_true",
                   help="write trace.json: every rank's phases on one timeline (Perfetto)")
    p.add_argument("--checkpoint-every", metavar="K",
                   help="write checkpoint.h5 atomically every K iterations [0 = never]")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its checkpoint (data and options come "
                   "from the checkpoint; --iters, --tol and a few others may be changed)")
    return p


def _generate_parser(sub):
    p = sub.add_parser(
        "generate", help="write a synthetic least-squares data set to HDF5",
        description="Write X (rows x features), y = X w_true + noise, and w_true to an HDF5 "
        "file, block by block (memory stays ~32 MB whatever the size). Same arguments give "
        "identical datasets.",
    )
    p.add_argument("--rows", type=int, required=True, metavar="N")
    p.add_argument("--features", type=int, required=True, metavar="D")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--noise", type=float, default=0.1, metavar="SIGMA", help="std of the noise on y [0.1]")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--compression", choices=("gzip", "lzf"), default=None,
                   help="store X and y chunked and compressed (default: contiguous)")
    p.add_argument("--out", required=True, metavar="FILE.h5")
    return p


def _bench_comm_parser(sub):
    p = sub.add_parser(
        "bench-comm", help="time Bcast/Reduce/Allreduce/Barrier OSU-style and fit t = alpha + n*beta",
        description="Run under `mpirun -n P`. Times each collective over message sizes (warm-up, "
        "many rounds with a Barrier between them, avg/min/max over ranks, like the OSU "
        "micro-benchmarks), fits the Hockney model t = alpha + n*beta per collective, prints "
        "osu_bcast-like tables and merges the fit for P ranks into --out.",
    )
    p.add_argument("--min-size", default="8", metavar="BYTES", help="smallest message, e.g. 8 or 1K [8]")
    p.add_argument("--max-size", default="64M", metavar="BYTES",
                   help="largest message, e.g. 64K or 64M [64M]")
    p.add_argument("--iters", type=int, default=1000, metavar="K", help="timed rounds per small size [1000]")
    p.add_argument("--iters-large", type=int, default=100, metavar="K",
                   help="timed rounds per size above 8 KB [100]")
    p.add_argument("--warmup", type=int, default=100, metavar="K", help="untimed rounds per small size [100]")
    p.add_argument("--warmup-large", type=int, default=10, metavar="K",
                   help="untimed rounds per size above 8 KB [10]")
    p.add_argument("--collectives", default="bcast,reduce,allreduce,barrier", metavar="LIST",
                   help="which of bcast,reduce,allreduce,barrier to time [all]")
    p.add_argument("--out", default="comm_model.json", metavar="FILE.json",
                   help="model file; the entry for this rank count is replaced, others are kept "
                   "[comm_model.json]")
    p.add_argument("--quiet", action="store_true", help="no tables")
    return p


def _scale_parser(sub):
    p = sub.add_parser(
        "scale", help="strong/weak scaling sweep: run the trainer per rank count, report speedup",
        description="Run the trainer once per rank count and repeat through a launcher, then "
        "write scaling.csv, scaling.json and a table: seconds per iteration (median of "
        "repeats), speedup T_base/T_m, efficiency, compute/comm/sync per iteration, "
        "imbalance, and the cost model's prediction. Run it without mpirun: it launches "
        "its runs itself.",
    )
    p.add_argument("--ranks", default="1,2", metavar="LIST", help="rank counts, e.g. 1,2,4,8 [1,2]")
    p.add_argument("--mode", dest="kind", choices=("strong", "weak"), default="strong",
                   help="strong: the same data for every rank count; weak: --rows per rank [strong]")
    p.add_argument("--rows", type=int, default=200_000, metavar="N",
                   help="rows of the synthetic data (weak: per rank; per worker with a dedicated "
                   "server) [200000]")
    p.add_argument("--features", type=int, default=32, metavar="D", help="features [32]")
    p.add_argument("--data", metavar="FILE.h5", help="strong only: use this file instead of synthetic data")
    p.add_argument("--data-dir", metavar="DIR", help="where synthetic data are made or reused [OUT/data]")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the synthetic data [0]")
    p.add_argument("--iters", type=int, default=50, metavar="K", help="iterations per run (--tol 0) [50]")
    p.add_argument("--repeat", type=int, default=3, metavar="R", help="runs per rank count [3]")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="BLAS threads per rank in every run; 1 keeps m ranks on m cores, so the "
                   "1-rank baseline is one core too [1]")
    p.add_argument("--out", metavar="DIR", help="sweep directory [runs/scale-<timestamp>]")
    p.add_argument("--launcher", metavar="TEMPLATE",
                   help='how to start N ranks, e.g. "mpirun -n {n}" or "srun -n {n}" [mpiexec -n {n}]')
    p.add_argument("--train-mode", metavar="LIST",
                   help="trainer --mode values to compare, e.g. server,allreduce (forwarded as "
                   "--mode; omitted = the trainer's default)")
    p.add_argument("--straggler-delays", metavar="SECONDS,...",
                   help="straggler study: repeat every run with these delays, e.g. 0,0.01,0.02")
    p.add_argument("--straggler-rank", default="last", metavar="R|last",
                   help="the rank that sleeps in the straggler study [last]")
    p.add_argument("--train-args", default="", metavar='"ARGS"',
                   help='more trainer options for every run, e.g. --train-args="--dtype float32"')
    p.add_argument("--comm-model", default="auto", metavar="auto|none|FILE",
                   help="auto: run bench-comm per rank count into OUT/comm_model.json; "
                   "or an existing comm_model.json; none: no prediction [auto]")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="limit per launched job [3600]")
    p.add_argument("--plots", action="store_true", help="also write the PNG plots (needs matplotlib)")
    p.add_argument("--force", action="store_true",
                   help="rerun the runs (and bench-comm) that already completed in OUT")
    return p


def _scale_report_parser(sub):
    p = sub.add_parser(
        "scale-report", help="scaling table, CSV and JSON from every result.json below a directory",
        description="Read every result.json below RUNS_DIR (recursively), group the runs by "
        "rank count (and trainer mode, problem, straggler delay), and write scaling.csv, "
        "scaling.json and the table; with a comm_model.json (in RUNS_DIR or --model) the "
        "cost model's prediction sits next to each measured point.",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write the report [RUNS_DIR]")
    p.add_argument("--model", metavar="FILE.json",
                   help="comm_model.json [RUNS_DIR/comm_model.json if present]")
    p.add_argument("--kind", choices=("auto", "strong", "weak"), default="auto",
                   help="auto: from RUNS_DIR/sweep.json, else inferred from rows per rank [auto]")
    p.add_argument("--plots", action="store_true", help="also write the PNG plots (needs matplotlib)")
    return p


def _plot_parser(sub):
    p = sub.add_parser(
        "plot", help="PNG plots of a sweep (speedup, efficiency, time breakdown, loss)",
        description="Write PNG plots for a sweep directory (or any directory of runs): speedup "
        "with the ideal line and the model's prediction, efficiency, per-iteration time "
        "breakdown, the straggler study if any, and loss vs iteration and wall time for one "
        "run. A single run directory gives the loss plot alone.",
    )
    p.add_argument("runs_dir", metavar="DIR")
    p.add_argument("--out", metavar="DIR", help="where to write the PNGs [DIR]")
    p.add_argument("--model", metavar="FILE.json", help="comm_model.json [DIR/comm_model.json if present]")
    p.add_argument("--kind", choices=("auto", "strong", "weak"), default="auto")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="the run for the loss plot [the largest rank count's first]")
    return p


def _bench_parser(sub):
    p = sub.add_parser(
        "bench", help="per-iteration cost vs the hardware floor: kernels, comm, clocks, memory, start-up",
        description="Measure, from one run, the read-bandwidth floor and the gradient kernels' % "
        "of it, bare Bcast+Reduce vs the trainer's communication, the clocks' overhead, peak "
        "RSS vs shard bytes, start-up of a tiny 2-rank run, and the 2-rank speedup vs the "
        "two-process bandwidth ceiling (docs/benchmarks.md). Run it without mpirun (it "
        "launches its MPI parts), or under `mpirun -n M` for the kernels and comm on M ranks.",
    )
    p.add_argument("--rows-mb", type=float, default=800.0, metavar="MB", help="shard size per rank [800]")
    p.add_argument("--features", default="10,100,1000", metavar="LIST", help="feature counts [10,100,1000]")
    p.add_argument("--dtype", default="float64,float32", metavar="LIST",
                   help="dtypes of the kernel cases [float64,float32]")
    p.add_argument("--repeat", type=int, default=5, metavar="R", help="repetitions; medians are shown [5]")
    p.add_argument("--comm-iters", type=int, default=2000, metavar="K",
                   help="iterations per communication measurement [2000]")
    p.add_argument("--train-iters", type=int, default=50, metavar="K",
                   help="iterations of each trainer run (scaling, memory) [50]")
    p.add_argument("--no-runs", action="store_true",
                   help="skip the parts that launch runs (comm without mpirun, memory, start-up, scaling)")
    p.add_argument("--work-dir", metavar="DIR", help="where the runs' data and outputs go [a temporary dir]")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--part", choices=("all", "comm"), default="all", help=argparse.SUPPRESS)
    return p


def build_parser():
    parser = _Parser(
        prog="mpigd", description="Data-parallel gradient descent on MPI, instrumented.",
        epilog="Without a command, `train` runs: `mpirun -n 4 python -m mpigd --data FILE.h5`. "
        "Its options: `python -m mpigd train --help`.")
    parser.add_argument("--version", action="version", version=f"mpigd {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _train_parser(sub)
    _generate_parser(sub)
    importer.add_parser(sub)
    _scale_parser(sub)
    _scale_report_parser(sub)
    _bench_comm_parser(sub)
    _plot_parser(sub)
    _bench_parser(sub)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "train")  # `python -m mpigd --data f.h5` means train
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # point at the command's own help, which lists its options
        command = f" {args.command}" if args.command else ""
        raise MpigdError(f"unrecognized arguments: {' '.join(unknown)} "
                         f"(see `python -m mpigd{command} --help`)")
    if args.command == "generate":
        return _generate(args)
    if args.command == "import":
        return importer.command(args)
    if args.command in ("scale", "scale-report", "plot"):
        from . import scaling

        return scaling.command(args)
    if args.command == "bench-comm":
        return _bench_comm(args)
    if args.command == "bench":
        return _bench(args)
    return _train(vars(args))


def _generate(args):
    from .synthetic import generate

    if launcher_rank() != 0:
        return 0  # one writer: under mpirun the other ranks have nothing to do
    seconds = generate(args.out, args.rows, args.features, args.seed, args.noise,
                       args.dtype, args.compression)
    size_gb = args.rows * args.features * (4 if args.dtype == "float32" else 8) / 1e9
    print(f"mpigd: wrote {args.out}: X {args.rows} x {args.features} {args.dtype} "
          f"({size_gb:.3f} GB), y, w_true in {seconds:.2f} s")
    return 0


def _bench_comm(args):
    from . import commbench

    collectives = [c.strip() for c in args.collectives.split(",") if c.strip()]
    unknown = sorted(set(collectives) - set(commbench.COLLECTIVES))
    if unknown or not collectives:
        raise MpigdError(f"--collectives must name some of {','.join(commbench.COLLECTIVES)}; "
                         f"got {args.collectives!r}")
    for option in ("iters", "iters_large"):
        if getattr(args, option) < 1:
            raise MpigdError(f"--{option.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.warmup_large < 0:
        raise MpigdError("--warmup and --warmup-large must be >= 0")
    sizes = commbench.message_sizes(commbench.parse_size(args.min_size), commbench.parse_size(args.max_size))

    from mpi4py import MPI  # MPI starts only now: argument errors never needed it

    commbench.run(MPI.COMM_WORLD, args.out, collectives, sizes, args.iters, args.iters_large,
                  args.warmup, args.warmup_large, quiet=args.quiet)
    return 0


def _bench(args):
    def numbers(text, kind, name):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            raise MpigdError(f"--{name} must be a comma-separated list; got {text!r}")
        return values

    args.features = numbers(args.features, int, "features")
    args.dtype = numbers(args.dtype, str, "dtype")
    if min(args.features) < 1 or args.rows_mb <= 0 or args.repeat < 1 or args.comm_iters < 1 \
            or args.train_iters < 1:
        raise MpigdError("--features, --rows-mb, --repeat, --comm-iters and --train-iters must be positive")
    if set(args.dtype) - {"float64", "float32"}:
        raise MpigdError(f"--dtype takes float64 and/or float32; got {','.join(args.dtype)}")
    from . import bench

    return bench.command(args)


def _train(options):
    from . import config as configuration

    options.pop("command", None)
    config_file = options.pop("config", None)
    resume_dir = options.pop("resume", None)
    if resume_dir and config_file:  # before MPI starts: one message, not one per rank
        raise MpigdError("--resume takes the settings from the checkpoint; drop --config")
    if not resume_dir:
        file_settings = configuration.load_file(config_file) if config_file else {}
        config = configuration.build(file_settings, options)

    from mpi4py import MPI  # MPI starts only now: parsing errors never needed it

    from .report import summary
    from .train import run

    comm = MPI.COMM_WORLD
    resume = None
    if resume_dir:
        from .checkpoint import load
        from .comm import agreed

        with agreed(comm, f"reading the checkpoint in {resume_dir}"):
            resume = load(resume_dir)
            config = configuration.for_resume(resume.config, options)
            config.out = resume_dir
    result = run(config, comm, resume)
    if comm.rank == 0:
        if config.quiet:
            print(f"mpigd: {result['stop_reason']} after {result['iterations']} iterations, "
                  f"final loss {result['final_loss']:.9e}, {result['wall_s']:.3f} s")
        else:
            print(summary(result))
        print(f"\n  data:    {result['data']['path']}\n  results: {result['run_dir']}", flush=True)
    return 0
