"""The grammar of the methods (issue 14): `train --method ...` and the `compare` command.

Kept apart from options.py only for size; options.py calls these two functions while it
builds the parser, so every option is still parsed in one place.
"""


def add_train_arguments(p) -> None:
    """--method and the options of --method sgd, on the train parser."""
    p.add_argument("--method", choices=("gd", "momentum", "cg", "sgd"),
                   help="gd: the lecture's gradient descent; momentum: Nesterov; cg: conjugate "
                   "gradient on the normal equations; sgd: mini-batch SGD [gd]")
    p.add_argument("--batch-size", metavar="B", help="sgd: rows per step, in total over all ranks [all]")
    p.add_argument("--epochs", metavar="E", help="sgd: passes over the data [--iters steps]")
    p.add_argument("--lr-decay", metavar="D", help="sgd: lr / (1 + D * epochs done) [0 = constant]")
    p.add_argument("--full-loss-every", metavar="K",
                   help="sgd: steps between full-data loss passes (counted apart) [one epoch]")


def add_compare_parser(sub):
    p = sub.add_parser(
        "compare", help="gd, momentum, cg, sgd on the same data and ranks: rounds, bytes, time, error",
        description="Run each --methods on the same data and rank count (real mpirun runs in "
        "OUT/METHOD) and print iterations, rounds of communication, bytes per rank, wall time "
        "to --tol and the final |w - w*|/|w*|. Without --data: a generated problem with "
        "cond(X^T X) ~ --condition.")
    p.add_argument("--methods", default="gd,momentum,cg", metavar="LIST", help="[gd,momentum,cg]")
    p.add_argument("--data", metavar="FILE.h5", help="data to compare on [generated]")
    p.add_argument("-n", "--ranks", type=int, default=2, metavar="RANKS", help="ranks per run [2]")
    p.add_argument("--rows", type=int, default=100_000, metavar="N", help="generated rows [100000]")
    p.add_argument("--features", type=int, default=32, metavar="D", help="generated features [32]")
    p.add_argument("--condition", type=float, default=1e4, metavar="K", help="generated cond(X^T X) [1e4]")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                   help="generated noise; 0 makes w* = w_true [0]")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="generated data's seed [0]")
    p.add_argument("--tol", type=float, default=1e-8, metavar="T", help="--tol of every run [1e-8]")
    p.add_argument("--iters", type=int, default=5000, metavar="K", help="--iters of every run [5000]")
    p.add_argument("--mode", choices=("server", "allreduce"), default="server", help="[server]")
    p.add_argument("--train-args", default="", metavar='"ARGS"', help="more trainer options for every run")
    p.add_argument("--sgd-args", default="--batch-size 10000 --epochs 20", metavar='"ARGS"',
                   help='trainer options of the sgd run ["--batch-size 10000 --epochs 20"]')
    p.add_argument("--out", metavar="DIR", help="comparison directory [runs/compare-<timestamp>]")
    p.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS", help="limit per run [1800]")
    p.add_argument("--plots", action="store_true", help="also write compare.png (needs matplotlib)")
    return p
