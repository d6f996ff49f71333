"""`scale --batch-sizes B1,B2,...`: one strong-scaling sweep of `--method sgd` per batch size.

A step's message is d + 2 numbers whatever B is, while its compute is ~B/m rows per rank:
shrinking B moves an iteration from compute-bound to communication-bound, and the speedup
falls with it. Each batch size is an ordinary sweep (sweep.py) in OUT/batch-B, with
`--method sgd --batch-size B --full-loss-every 1000000` added to --train-args (so that the
full-data passes, one at the start and one at the end, do not blur the batch rounds);
the first one measures the comm model, the others reuse its comm_model.json.
"""

import copy
import json
import os
import time

from .. import rundir
from ..options import comma_list
from .sweep import sweep

COLUMNS = ("batch", "ranks", "ms/iter", "speedup", "compute", "comm", "predicted", "pred speedup")


def command(args, say=print) -> int:
    sizes = comma_list(args.batch_sizes, int, "--batch-sizes", "1000,10000,100000")
    out = args.out or os.path.join("runs", "scale-batches-" + time.strftime("%Y%m%d-%H%M%S"))
    rows, model = [], args.comm_model
    for size in sizes:
        sub = copy.copy(args)
        sub.batch_sizes, sub.out, sub.comm_model = None, os.path.join(out, f"batch-{size}"), model
        sub.train_args = (f"{args.train_args} --method sgd --batch-size {size} "
                          "--full-loss-every 1000000").strip()
        say(f"mpigd scale: batch size {size} -> {sub.out}")
        sweep(sub)
        if model == "auto" and os.path.exists(os.path.join(sub.out, rundir.MODEL)):
            model = os.path.join(sub.out, rundir.MODEL)
        with open(os.path.join(sub.out, "scaling.json")) as handle:
            for point in json.load(handle)["series"][0]["points"]:
                rows.append({"batch": size, **{k: point.get(k) for k in (
                    "ranks", "s_per_iter", "speedup", "compute_s", "comm_s", "predicted_s",
                    "predicted_speedup")}})
    with open(os.path.join(out, "batch_sizes.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    say(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    def ms(value):
        return "-" if value is None else f"{1e3 * value:.3f}"

    def ratio(value):
        return "-" if value is None else f"{value:.3f}"

    body = [COLUMNS] + [(str(r["batch"]), str(r["ranks"]), ms(r["s_per_iter"]), ratio(r["speedup"]),
                         ms(r["compute_s"]), ms(r["comm_s"]), ms(r["predicted_s"]),
                         ratio(r["predicted_speedup"])) for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in body]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(times in ms per iteration; median of the repeats)"
