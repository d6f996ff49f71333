"""`python -m mpigd solve --data FILE.h5`: the exact w* alone, and what it costs to communicate.

The same rows and preprocessing as `train` (the --holdout rule, --intercept), always
standardized internally (an exact reparametrization that keeps XᵀX well scaled: the normal
equations square the condition number); then reference.py's one Reduce of d² + d numbers.
Printed next to it: what one iteration of gradient descent moves, and after how many
iterations GD has sent as many bytes as the one-shot answer.
"""

import json
import time

import numpy as np


def _rows(comm, config):
    """Collective: this rank's block of the file, and the training rows of it."""
    from . import data, evaluation
    from .comm import agreed

    path = config.data
    with agreed(comm, f"reading {path}"), data.readable(path):
        with data.open_input(path) as h5file:
            info = data.inspect(h5file, config.x_dataset, config.y_dataset)
            lo, hi = data.block_range(info.rows, comm.size, comm.rank)
            X, y = data.read_shard(h5file, info, lo, hi, np.dtype(np.float64))
        data.check_finite(X, y, first_row=lo)
    train, held = evaluation.split_rows(comm, config, X, y, lo, info.rows, path)
    return info, train, held


def command(args) -> int:
    from .config import build

    config = build({}, {"data": args.data, "x_dataset": args.x_dataset, "y_dataset": args.y_dataset,
                        "intercept": args.intercept, "holdout": args.holdout,
                        "holdout_seed": args.holdout_seed})
    from mpi4py import MPI

    from . import features, reference
    from .evaluation import Watch, to_training_units
    from .standardize import prepare

    comm = MPI.COMM_WORLD
    info, train, held = _rows(comm, config)
    transform = prepare(comm, train.X, train.y, train.total, config.intercept, True)
    for rows in held.values():
        to_training_units(rows, transform)
    comm.Barrier()  # time the solve, not the stragglers of loading
    started = time.perf_counter()
    normal = reference.normal_equations(comm, train.X, train.y)
    solution = reference.solve(normal.A, normal.b) if comm.rank == 0 else None
    seconds = time.perf_counter() - started
    w = np.zeros(info.features)
    if solution is not None:
        w[:] = solution.w
    found = Watch(comm, held, 0, None, 1).final(w, train, 0)  # Bcasts w* to measure its fit
    if comm.rank == 0:
        names, _ = features.of_file(config.data, config.x_dataset, info.features)
        w_orig, b = transform.original_weights(solution.w)
        report = {"data": config.data, "ranks": comm.size, "rows": train.total,
                  "features": info.features, "method": solution.method, "rank": solution.rank,
                  "note": solution.note, "seconds": seconds,
                  "seconds_parts": {"normal_equations": normal.compute_s, "reduce": normal.reduce_s,
                                    "solve": solution.seconds},
                  "reduce_bytes": normal.message_bytes,
                  "gd_bytes_per_iteration": reference.gd_bytes_per_iteration(info.features),
                  "loss": found["train"]["loss"], "metrics": found,
                  "weights": features.named(names, w_orig, b if config.intercept else None)}
        if args.out:
            from . import rundir

            rundir.write_json(args.out, report)
        print(_summary(report, config), flush=True)
    return 0


def _summary(r: dict, config) -> str:
    from . import features, metrics

    d, sent, per = r["features"], r["reduce_bytes"], r["gd_bytes_per_iteration"]
    held = f", {r['metrics']['holdout']['rows']} rows held out (--holdout {config.holdout:g})" \
        if "holdout" in r["metrics"] else ""
    parts = r["seconds_parts"]
    lines = [f"mpigd solve: {r['ranks']} ranks, {r['rows']} rows x {d} features of {r['data']}{held}",
             f"  method:  {r['note']}",
             f"  time:    {1e3 * r['seconds']:.3f} ms (rank 0: X_k^T X_k and X_k^T y_k "
             f"{1e3 * parts['normal_equations']:.3f} ms, Reduce (with waiting) {1e3 * parts['reduce']:.3f} ms, "
             f"solve {1e3 * parts['solve']:.3f} ms)",
             f"  sent:    one Reduce of d² + d = {d * d + d} doubles = {sent} bytes per rank, once",
             f"  vs GD:   Bcast (d + 1) + Reduce (d + 2) = {2 * d + 3} doubles = {per} bytes per "
             f"rank per iteration: the exact answer costs as much as {sent / per:.1f} iterations",
             f"  loss:    L(w*) = ½‖Xw* − y‖² = {r['loss']:.12e}",
             "", "fit of w* (original units):"]
    lines += [f"  {metrics.line(name, r['metrics'][name])}" for name in ("train", "holdout")
              if name in r["metrics"]]
    lines += [""] + features.largest(r["weights"], None, count=len(r["weights"]), where="every weight")
    return "\n".join(lines)

