"""Command line: `python -m mpigd [train] ...` (the default) and `python -m mpigd generate ...`.

Parsing never starts MPI, and only rank 0 prints help or usage errors, so a typo under
`mpirun -n 16` gives one message, not sixteen.
"""

import argparse
import sys

from . import __version__
from .errors import MpigdError, launcher_rank

COMMANDS = ("train", "generate")


class _Parser(argparse.ArgumentParser):
    def _print_message(self, message, file=None):
        if launcher_rank() == 0:
            super()._print_message(message, file)

    def error(self, message):
        raise MpigdError(f"{message} (see `python -m mpigd {self.prog.split()[-1]} --help`)")


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


def build_parser():
    parser = _Parser(
        prog="mpigd", description="Data-parallel gradient descent on MPI, instrumented.",
        epilog="Without a command, `train` runs: `mpirun -n 4 python -m mpigd --data FILE.h5`. "
        "Its options: `python -m mpigd train --help`.")
    parser.add_argument("--version", action="version", version=f"mpigd {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _train_parser(sub)
    _generate_parser(sub)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "train")  # `python -m mpigd --data f.h5` means train
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return _generate(args)
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


def _train(options):
    from . import config as configuration

    options.pop("command", None)
    config_file = options.pop("config", None)
    resume_dir = options.pop("resume", None)
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

        if config_file:
            raise MpigdError("--resume takes the settings from the checkpoint; drop --config")
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
