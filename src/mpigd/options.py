"""The command line's grammar: every subcommand's options, in one place.

`cli` parses with it and the scaling sweep reads `--train-args` with the same train
parser, so an option means the same thing wherever it is given. Parsing never starts
MPI, and only rank 0 prints help or usage errors, so a typo under `mpirun -n 16` gives
one message, not sixteen.
"""

import argparse

from . import __version__, importer, method_options, project_options, rundir
from .cluster import cli as cluster_cli
from .config import KERNELS, PROGRESS
from .errors import MpigdError, launcher_rank

COMMANDS = ("train", "generate", "import", "predict", "solve", "cluster", "scale", "scale-report",
            "bench-comm", "plot", "bench", "compare", "project")


def comma_list(text: str, cast, option: str, example: str) -> list:
    """'1,2,4' -> [1, 2, 4] by `cast`; one message naming the option if anything is off."""
    what = {int: "integers", float: "numbers"}.get(cast, "names")
    try:
        values = [cast(part.strip()) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise MpigdError(f"{option} must be a comma-separated list of {what} like {example}; "
                         f"got {text!r}")
    return values


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
    p.add_argument("--iters", metavar="K", help="maximum number of updates [1000]")
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
    p.add_argument("--jitter", metavar="SECONDS", help="add an exponential sleep of mean SECONDS "
                   "(seeded by --seed and rank) to every rank's compute each iteration [0]")
    p.add_argument("--seed", metavar="S", help="seed of the power iteration's start vector [0]")
    p.add_argument("--quiet", action="store_true", help="no progress lines, no summary table")
    p.add_argument("--mode", choices=("server", "allreduce"),
                   help="server: Bcast + Reduce to rank 0 (the lecture's client-server); "
                   "allreduce: peer to peer, every rank updates its own w [server]")
    p.add_argument("--trace", action="store_true",
                   help="write trace.json: every rank's phases on one timeline (Perfetto)")
    p.add_argument("--checkpoint-every", metavar="K",
                   help="write checkpoint.h5 atomically every K iterations [0 = never]")
    p.add_argument("--kernel", choices=KERNELS,
                   help="gradient kernel: blas, numba (the fused one-pass kernel, extra `fast`) or "
                   "auto (numba for shards of 256 MB and more) [$MPIGD_KERNEL, else auto]")
    p.add_argument("--progress", choices=PROGRESS,
                   help="rank 0's progress: a live bar, a plain line every 10%%, or none; auto: "
                   "lines when the launcher's output is not a terminal, in batch jobs and CI [auto]")
    _evaluation_arguments(p)
    p.add_argument("--stall-timeout", metavar="SECONDS",
                   help="end the job (exit 124, one message naming the silent rank) when no "
                   "iteration completes for SECONDS; 0 = never [the larger of 60 s and 10 x "
                   "the slowest iteration; 10 x longer while loading or writing]")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its checkpoint (data and options come "
                   "from the checkpoint; --iters, --tol and a few others may be changed)")
    method_options.add_train_arguments(p)  # --method and sgd's options (issue 14)
    return p


def _evaluation_arguments(p):
    """Held-out rows, a test file and the exact answer (issue 13), for train."""
    p.add_argument("--holdout", metavar="FRACTION",
                   help="keep this fraction of rows out of training and report the fit on them; "
                   "row i is held out by a hash of i and --holdout-seed, whatever the rank count [0]")
    p.add_argument("--holdout-seed", metavar="S", help="seed of the --holdout rule [0]")
    p.add_argument("--test-data", metavar="FILE.h5",
                   help="also report the fit on this file (the same features as --data)")
    p.add_argument("--eval-every", metavar="K",
                   help="held-out/test loss every K iterations in history.csv (untimed) [0 = at the end]")
    p.add_argument("--reference", choices=("exact", "none"),
                   help="exact: w* by distributed normal equations; history.csv gets "
                   "|w_t - w*|/|w*| and L(w_t) - L(w*) [none]")


def _predict_parser(sub):
    p = sub.add_parser(
        "predict", help="predictions of a trained run for new rows (HDF5, CSV or Parquet)",
        description="Apply the weights of RUN_DIR (original units: the standardization is folded "
        "in) to the rows of --data, encoded as at import for a raw CSV/Parquet table (one-hot "
        "categories; an unseen category is an error that names it). Under `mpirun -n M` every "
        "rank predicts its share of the rows; rank 0 writes them in input order, atomically. "
        "With the target in --data it also prints RMSE, MAE and R².",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a completed training run (weights.h5, result.json)")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="rows to predict: HDF5 with X (as trained), or a CSV/Parquet table")
    p.add_argument("--out", required=True, metavar="PREDS.csv", help="the CSV to write (row,prediction[,target])")
    p.add_argument("--delimiter", metavar="CHAR", help="CSV field separator [auto]")
    p.add_argument("--block-mb", type=float, default=1.0, metavar="MB",
                   help="MiB of CSV per block; blocks are shared out to the ranks [1]")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p


def _solve_parser(sub):
    p = sub.add_parser(
        "solve", help="the exact least-squares w* by distributed normal equations",
        description="Under `mpirun -n M`: every rank forms X_k^T X_k and X_k^T y_k over its rows, "
        "one Reduce of d^2 + d numbers sums them, rank 0 solves by Cholesky (lstsq when X^T X "
        "is rank-deficient, and says so). Prints w* by feature name, the loss, the time and the "
        "bytes communicated next to what one iteration of gradient descent moves.",
    )
    p.add_argument("--data", required=True, metavar="FILE.h5", help="input HDF5 file (X, y)")
    p.add_argument("--x-dataset", default="X", metavar="NAME", help="features dataset [X]")
    p.add_argument("--y-dataset", default="y", metavar="NAME", help="targets dataset [y]")
    p.add_argument("--intercept", action="store_true", help="fit a bias term")
    p.add_argument("--holdout", default=0.0, metavar="FRACTION",
                   help="leave out the rows `train --holdout` leaves out (same rule) [0]")
    p.add_argument("--holdout-seed", default=0, metavar="S", help="seed of the --holdout rule [0]")
    p.add_argument("--out", metavar="FILE.json", help="also write w*, the loss and the costs as JSON")
    return p


def _generate_parser(sub):
    p = sub.add_parser(
        "generate", help="write a synthetic least-squares data set to HDF5",
        description="Write X (rows x features), y = X w_true + noise, and w_true to an HDF5 "
        "file, block by block (memory stays ~32 MB whatever the size). Same arguments give "
        "identical datasets.",
    )
    p.add_argument("--rows", type=int, required=True, metavar="N", help="number of samples (rows of X)")
    p.add_argument("--features", type=int, required=True, metavar="D", help="number of features (columns of X)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of w_true and of every block of rows [0]")
    p.add_argument("--noise", type=float, default=0.1, metavar="SIGMA", help="std of the noise on y [0.1]")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="stored type of X and y [float64]")
    p.add_argument("--compression", choices=("gzip", "lzf"), default=None,
                   help="store X and y chunked and compressed (default: contiguous)")
    p.add_argument("--condition", type=float, default=None, metavar="K",
                   help="make cond(X^T X) about K (>= 1) by mixing the features with a fixed "
                   "Q diag(s) Q^T; default: i.i.d. features (cond near 1)")
    p.add_argument("--parallel-io", choices=("auto", "mpio", "parts"), default="auto",
                   help="under mpirun -n P: mpio = every rank writes into the one file with "
                   "parallel HDF5 (needs an MPI-enabled h5py); parts = every rank writes a part "
                   "file that the named file joins as virtual datasets (any h5py; the parts stay "
                   "next to it); auto = mpio where h5py has MPI and there is no --compression [auto]")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="FILE.h5", help="the file to write (appears atomically)")
    where.add_argument("--out-dir", metavar="DIR",
                       help="write (or reuse) DIR/synthetic-ROWSxFEATURES-seedS.h5 and print its "
                       "path (for scripts)")
    return p


def _import_parser(sub):
    p = sub.add_parser(
        "import", help="convert a CSV or Parquet table to an HDF5 file for training",
        description="Convert a table with named columns (CSV with a header row, or Parquet) into "
        "the HDF5 file the trainer reads: X (rows x features, text categories one-hot), y (the "
        "target), the feature names, the encoding and the source's sha256 as attributes. Reads "
        "the table twice in blocks (memory is set by --block-mb, not by the table), writes atomically.",
    )
    p.add_argument("table", metavar="TABLE", help="CSV (any delimiter, header row; .csv.gz too) or Parquet file")
    p.add_argument("--target", required=True, metavar="COLUMN", help="the column to predict (numeric)")
    p.add_argument("--out", required=True, metavar="FILE.h5", help="the HDF5 file to write")
    p.add_argument("--features", metavar="A,B,C",
                   help="feature columns, in this order [every column but the target that is "
                   "numeric, or categorical per --categorical]")
    p.add_argument("--categorical", default="auto", metavar="auto|none|COL,...",
                   help="auto: text columns become one-hot features named COL=VALUE; none: text "
                   "columns are left out; a list: exactly these columns are one-hot [auto]")
    p.add_argument("--drop-first", action="store_true",
                   help="one-hot without each column's first category (the all-zero reference), so "
                   "the columns are not collinear with --intercept")
    p.add_argument("--missing", choices=("error", "drop"), default="error",
                   help="a blank, NA or non-finite value: error names the column and rows; drop "
                   "leaves such rows out [error]")
    p.add_argument("--delimiter", metavar="CHAR",
                   help="CSV field separator, e.g. ';' or tab [auto: the most frequent of , ; tab | "
                   "in the header line]")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="of X and y [float64]")
    p.add_argument("--max-categories", type=int, default=importer.DEFAULT_MAX_CATEGORIES, metavar="N",
                   help=f"refuse a categorical column with more distinct values [{importer.DEFAULT_MAX_CATEGORIES}]")
    p.add_argument("--block-mb", type=float, default=1.0, metavar="MB",
                   help="MiB of CSV per block; memory is about 32 blocks (pyarrow reads ahead) plus "
                   "one block's X (Parquet: batches of about this many bytes of values) [1]")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
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
    p.add_argument("--collectives", default="bcast,reduce,allreduce,barrier,iteration,iteration-allreduce",
                   metavar="LIST", help="which of bcast,reduce,allreduce,barrier,iteration (the trainer's "
                   "Bcast+Barrier+Reduce as one round),iteration-allreduce to time [all]")
    p.add_argument("--out", default=rundir.MODEL, metavar="FILE.json",
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
    p.add_argument("--batch-sizes", metavar="B,...",
                   help="one sweep of --method sgd per batch size, e.g. 1000,10000,100000, and "
                   "a table of speedup against batch size (OUT/batch-B, OUT/batch_sizes.json)")
    p.add_argument("--comm-model", default="auto", metavar="auto|none|FILE",
                   help="auto: run bench-comm per rank count into OUT/comm_model.json; "
                   "or an existing comm_model.json; none: no prediction [auto]")
    p.add_argument("--bench-comm-args", default="", metavar='"ARGS"',
                   help='more bench-comm options for --comm-model auto, e.g. --bench-comm-args='
                   '"--iters 50 --warmup 5" on a slow (emulated) network')
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
    _report_arguments(p, "the report")
    p.add_argument("--plots", action="store_true", help="also write the PNG plots (needs matplotlib)")
    return p


def _report_arguments(p, what):
    """The arguments that say which runs a report reads: shared by scale-report and plot."""
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="a sweep directory, or any directory of runs")
    p.add_argument("--out", metavar="DIR", help=f"where to write {what} [RUNS_DIR]")
    p.add_argument("--model", metavar="FILE.json",
                   help="comm_model.json [RUNS_DIR/comm_model.json if present]")
    p.add_argument("--kind", choices=("auto", "strong", "weak"), default="auto",
                   help="auto: from RUNS_DIR/sweep.json, else inferred from rows per rank [auto]")


def _plot_parser(sub):
    p = sub.add_parser(
        "plot", help="PNG plots of a sweep (speedup, efficiency, time breakdown, loss)",
        description="Write PNG plots for a sweep directory (or any directory of runs): speedup "
        "with the ideal line and the model's prediction, efficiency, per-iteration time "
        "breakdown, the straggler study if any, and loss vs iteration and wall time for one "
        "run. A single run directory gives the loss plot alone.",
    )
    _report_arguments(p, "the PNGs")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="the run for the convergence plot (loss.png) [the median repeat of the largest "
                   "rank count that is not oversubscribed]")
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
    p.add_argument("--no-runs", action="store_true", help="skip the parts that launch runs (comm "
                   "without mpirun, memory, start-up, scaling, generation)")
    p.add_argument("--work-dir", metavar="DIR", help="where the runs' data and outputs go [a temporary dir]")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--generate-rows", type=int, default=3_000_000, metavar="N", help="rows x 40 of "
                   "`generate` by 1 vs 2 ranks, into a new file and over its own; 0: skip [3000000]")
    p.add_argument("--part", choices=("all", "comm", "generate"), default="all", help="all; generate: "
                   "the generation rows alone; comm: the 2-rank part the bench launches [all]")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mpigd", description="Data-parallel gradient descent on MPI, instrumented.",
        epilog="Without a command, `train` runs: `mpirun -n 4 python -m mpigd --data FILE.h5`. "
        "Its options: `python -m mpigd train --help`.")
    parser.add_argument("--version", action="version", version=f"mpigd {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _train_parser(sub)
    _generate_parser(sub)
    _import_parser(sub)
    _predict_parser(sub)
    _solve_parser(sub)
    cluster_cli.add_parser(sub)  # the emulated cluster owns its own command tree
    _scale_parser(sub)
    _scale_report_parser(sub)
    _bench_comm_parser(sub)
    _plot_parser(sub)
    _bench_parser(sub)
    method_options.add_compare_parser(sub)
    project_options.add_parser(sub)  # `project` (issue 15)
    return parser


def parse_train_args(argv: list[str]) -> dict:
    """The trainer options among `argv` (as `train` would parse them); unknown ones ignored."""
    options, _ = build_parser().parse_known_args(["train", *argv])
    settings = vars(options)
    settings.pop("command", None)
    return settings
