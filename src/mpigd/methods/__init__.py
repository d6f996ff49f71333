"""Methods beyond the lecture's gd, all in the same Bcast -> Map -> Reduce -> Update loop.

    gd        solver.gradient_descent / peer_to_peer_descent, unchanged
    momentum  Nesterov's accelerated gradient (momentum.py)
    cg        conjugate gradient on the normal equations (cg.py)
    sgd       mini-batch SGD (sgd.py)

`build` makes a method's state (fresh or from a checkpoint) and its StopRules, `rounds`
accounts communication the same way for all four, gd included.
"""

import math

import numpy as np

from ..config import Mode, TrainConfig
from ..solver import StopRules
from . import cg, momentum, sgd

METHODS = ("gd", "momentum", "cg", "sgd")


def sgd_lr(lr: float, rows: int, features: int, batch: int, auto: bool) -> float:
    """--lr auto for a batch of B rows: the batch's X_B^T X_B ~ (B/n) X^T X, its largest
    eigenvalue inflated by (1 + sqrt(d/B))^2 for small B; half of 1/that converges (to the
    noise floor at constant lr). A full batch keeps gd's step."""
    if not auto or batch >= rows:
        return lr
    return 0.5 * lr * (rows / batch) / (1 + math.sqrt(features / batch)) ** 2


def sgd_schedule(config: TrainConfig, rows: int) -> tuple[sgd.Schedule, int, int]:
    """(schedule, steps, full-loss interval) of an sgd run."""
    schedule = sgd.Schedule(rows, config.batch_size or rows, config.seed)
    steps = config.epochs * schedule.steps_per_epoch if config.epochs else config.iters
    return schedule, steps, config.full_loss_every or schedule.steps_per_epoch


def stop_rules(config: TrainConfig, rows: int, resume) -> StopRules:
    """gd's StopRules; for sgd sized for its BATCH and FULL rounds."""
    limit = config.iters
    if config.method == "sgd":
        _, steps, every = sgd_schedule(config, rows)
        limit = sgd.total_rounds(steps, every) - 1
    if resume is not None:
        return StopRules(limit, config.tol, resume.iteration, resume.loss, resume.grad_norm)
    return StopRules(limit, config.tol)


def build(config: TrainConfig, comm, shard, step, features: int, rows: int, lo: int, hi: int,
          resume):
    """Collective: (method state, setup rounds) for config.method (not gd)."""
    w0 = resume.w if resume is not None else np.zeros(features)
    state = resume.method_state if resume is not None else None
    if config.method == "momentum":
        if state is not None:
            lmin = float(state["lmin"]) if state["lmin"] > 0 else None
            rounds = 0
        else:
            lmin, rounds = momentum.estimate_lmin(comm, shard, features, 1.0 / step.lr, config.seed)
        method = momentum.Momentum(w0, step.lr, lmin, state)
        method.lmin, method.lmin_rounds = lmin, rounds
        return method, rounds
    if config.method == "cg":
        return cg.ConjugateGradient(w0, shard.X.dtype, state), 0
    schedule, steps, every = sgd_schedule(config, rows)
    lr = sgd_lr(step.lr, rows, features, config.batch_size or rows, step.mode == "auto")
    return sgd.MiniBatchSGD(w0, lr, schedule, steps, every, config.lr_decay, lo, hi, state), 0


def state_of(method) -> dict:
    """What a checkpoint keeps of a method, as numpy arrays (scalars as 0-d arrays)."""
    state = dict(method.state())
    if hasattr(method, "lmin"):
        state["lmin"] = method.lmin or 0.0
    return {name: np.asarray(value) for name, value in state.items()}


def rounds(config: TrainConfig, ranks: int, features: int, evaluations: int, setup: int,
           converged: bool, wall_s: float, method=None) -> dict:
    """Communication of a run for result.json, from the buffers and MPICH's algorithms.

    A round = one iteration's collectives carrying data: server mode a Bcast and a Reduce
    (binomial trees), allreduce mode one Allreduce (recursive doubling); the Barrier that
    separates waiting from moving bytes carries none. bytes_per_rank counts what the
    busiest rank sends plus receives: ceil(log2 p) messages per tree (rank 0 in server
    mode; every rank with recursive doubling).
    """
    hops = math.ceil(math.log2(ranks)) if ranks > 1 else 0
    bcast = 8 * (features + (1 if config.method == "gd" else 3))
    reduce = 8 * (features + 2)
    per_round = hops * (bcast + reduce if config.mode is Mode.SERVER else 2 * reduce)
    total = evaluations + setup
    facts = {"method": config.method, "rounds": total, "loop_rounds": evaluations,
             "setup_rounds": setup, "bytes_per_round_per_rank": per_round,
             "bytes_per_rank": per_round * total,
             "rounds_to_tol": total if converged else None,
             "wall_to_tol_s": wall_s if converged else None,
             "bytes_rule": "busiest rank: ceil(log2 p) messages per binomial tree (Bcast of "
                           f"{bcast} B, Reduce of {reduce} B) or recursive-doubling Allreduce"}
    if method is not None:
        facts.update(method.facts())
    return facts
