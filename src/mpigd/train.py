"""A whole training run: set up, load shards, choose the step, run the loop, report.

Every step that can fail on one rank only runs inside `agreed(...)`, so a missing file
or a NaN seen by rank 5 ends all ranks together with one message.
"""

import os
import platform
import resource
import time

import numpy as np
from mpi4py import MPI

from . import __version__, data, faults, report, synthetic
from .comm import agreed
from .config import parse_straggler
from .errors import MpigdError
from .objective import LeastSquaresShard
from .solver import estimate_lmax, gradient_descent
from .standardize import prepare
from .timing import PHASES, imbalance, phase_stats

# The embedded default problem (`python -m mpigd` with no --data): ~51 MB of float64,
# generated once and reused.
DEFAULT_ROWS, DEFAULT_FEATURES, DEFAULT_SEED, DEFAULT_NOISE = 200_000, 32, 0, 0.1
DEFAULT_DATA = os.path.join(
    "runs", "default-data", f"synthetic-{DEFAULT_ROWS}x{DEFAULT_FEATURES}-seed{DEFAULT_SEED}.h5"
)
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_NNODES",
                   "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_CPUS_PER_TASK",
                   "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME")
_HOST_BYTES = 64
_blas_limits = None  # keeps threadpoolctl's limit alive for the whole run


def limit_blas_threads(requested, ranks):
    """One BLAS thread per rank by default when ranks > 1: oversubscribed BLAS ruins timing."""
    global _blas_limits
    from threadpoolctl import threadpool_info, threadpool_limits

    threads = requested if requested is not None else (1 if ranks > 1 else None)
    if threads is not None:
        _blas_limits = threadpool_limits(limits=threads, user_api="blas")
    blas = [{k: lib.get(k) for k in ("internal_api", "num_threads", "version")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return {"requested": requested, "applied": threads, "blas": blas}


def ensure_default_data(path):
    """Rank 0: generate the embedded default dataset unless a matching one exists."""
    args = (DEFAULT_ROWS, DEFAULT_FEATURES, DEFAULT_SEED, DEFAULT_NOISE, "float64")
    if synthetic.matches(path, *args):
        return False
    synthetic.generate(path, DEFAULT_ROWS, DEFAULT_FEATURES, DEFAULT_SEED, DEFAULT_NOISE)
    return True


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _gather_hosts(comm):
    mine = np.zeros(_HOST_BYTES, dtype=np.uint8)
    name = platform.node().encode()[: _HOST_BYTES - 1]
    mine[: len(name)] = np.frombuffer(name, dtype=np.uint8)
    table = np.empty((comm.size, _HOST_BYTES), dtype=np.uint8) if comm.rank == 0 else None
    comm.Gather(mine, table, root=0)
    if table is None:
        return None
    return [bytes(row[: int(np.argmin(row))]).decode(errors="replace") for row in table]


def slurm_info():
    found = {name[6:].lower(): os.environ[name] for name in SLURM_VARIABLES if name in os.environ}
    return found or None


def run(config, comm=MPI.COMM_WORLD):
    """Collective: train as `config` says; return the result dict on rank 0, None elsewhere."""
    rank, size, root = comm.rank, comm.size, comm.rank == 0
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    workers = size - 1 if config.dedicated_server else size
    if config.dedicated_server and size < 2:
        raise MpigdError("--dedicated-server needs at least 2 ranks (1 server + workers)", collective=True)
    straggler_rank, straggle_s = parse_straggler(config.straggler) if config.straggler else (None, 0.0)
    if straggler_rank is not None and straggler_rank >= size:
        raise MpigdError(f"--straggler rank {straggler_rank} does not exist: ranks are 0..{size - 1}",
                         collective=True)
    threads = limit_blas_threads(config.threads, size)
    fault = faults.planned(rank)

    run_dir = fresh = None
    with agreed(comm, "preparing the output directory"):
        if root:
            fresh = config.out is None or not os.path.exists(config.out)
            run_dir = report.choose_run_dir(config.out, config.force)
    try:
        return _train(config, comm, run_dir, started, workers,
                      straggle_s if rank == straggler_rank else 0.0, threads, fault)
    except BaseException:
        # A run that failed before writing anything leaves no empty directory behind.
        if fresh and run_dir and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)
        raise


def _train(config, comm, run_dir, started, workers, straggle_s, threads, fault, say=print):
    rank, size, root = comm.rank, comm.size, comm.rank == 0
    data_path = config.data
    if data_path is None:
        data_path = DEFAULT_DATA
        with agreed(comm, f"generating the default data set {DEFAULT_DATA}"):
            if root and ensure_default_data(data_path):
                say(f"mpigd: generated the default data set {data_path} "
                    f"({DEFAULT_ROWS} x {DEFAULT_FEATURES} float64)")

    # Each rank opens the file on its own, validates it, and reads only its rows.
    load_started = time.perf_counter()
    with agreed(comm, f"reading {data_path}"):
        with data.open_input(data_path) as h5file:
            info = data.inspect(h5file, config.x_dataset, config.y_dataset)
            if info.rows < workers:
                raise MpigdError(f"{info.rows} rows cannot be shared by {workers} workers; "
                                 f"use at most {info.rows} worker ranks or more data")
            dtype = np.dtype(info.x_dtype if config.dtype == "auto" else config.dtype)
            if dtype.kind != "f":
                dtype = np.dtype(np.float64)  # integer data is computed in float64
            lo, hi = data.shard_rows(info.rows, size, rank, config.dedicated_server)
            X, y = data.read_shard(h5file, info, lo, hi, dtype)
            if fault and fault[0] == "load":
                faults.fail("load", rank)
        data.check_finite(X, y, first_row=lo)
    load_s = time.perf_counter() - load_started

    transform = prepare(comm, X, y, info.rows, config.intercept, config.standardize)
    shard = LeastSquaresShard(X, y)

    lmax = power_steps = None
    if config.lr == "auto":
        lmax, power_steps = estimate_lmax(comm, shard, info.features, seed=config.seed)
        if not lmax > 0:
            raise MpigdError("X^T X is zero (all features are zero after preprocessing); "
                             "nothing to fit", collective=True)
        lr = 1.0 / lmax
    else:
        lr = float(config.lr)

    progress = report.Progress(config.iters, enabled=root and not config.quiet)
    if fault and fault[0] == "loop":
        def on_iteration(t, rules, fail_at=fault[1]):
            progress(t, rules)
            if t == fail_at:
                faults.fail(f"loop iteration {t}", rank)
    else:
        on_iteration = progress
    trajectory = gradient_descent(
        comm, shard, np.zeros(info.features), lr, config.iters, config.tol,
        straggle_s=straggle_s, on_iteration=on_iteration,
    )
    seconds = trajectory.clock.gather(comm)

    if trajectory.stop_reason == "diverged":
        with agreed(comm, "saving the diverged history"):
            if root:
                kept = os.path.join(run_dir, "history-diverged.csv")
                report.write_history(kept, trajectory.loss, trajectory.grad_norm, seconds)
        t = trajectory.evaluations - 1
        loss = trajectory.loss[t] if root else float("nan")
        raise MpigdError(
            f"training diverged at iteration {t} (loss {loss:.3e}) with --lr {lr:.6g}; use a "
            "smaller --lr, or --lr auto (and --standardize for features of very different "
            f"scales); no result was written, the history so far is in "
            f"{run_dir}/history-diverged.csv", collective=True)

    facts = np.array([hi - lo, lo, hi, load_s, _peak_rss_bytes()], dtype=np.float64)
    all_facts = np.empty((size, facts.size)) if root else None
    comm.Gather(facts, all_facts, root=0)
    hosts = _gather_hosts(comm)

    result = None
    with agreed(comm, "writing the results"):
        if root:
            result = _result(config, info, dtype, data_path, run_dir, trajectory, seconds,
                             all_facts, hosts, lr, lmax, power_steps, threads, transform, workers,
                             started)
            w, intercept = transform.original_weights(trajectory.w)
            report.write_history(os.path.join(run_dir, "history.csv"),
                                 trajectory.loss, trajectory.grad_norm, seconds)
            report.write_weights(os.path.join(run_dir, "weights.h5"), w,
                                 intercept if config.intercept else None, result["config"])
            report.write_result(os.path.join(run_dir, report.RESULT), result)
    return result


def _result(config, info, dtype, data_path, run_dir, trajectory, seconds, facts, hosts,
            lr, lmax, power_steps, threads, transform, workers, started):
    holds_rows = facts[:, 0] > 0
    totals, stats = phase_stats(seconds, holds_rows)
    evaluations = trajectory.evaluations
    per_rank = []
    for r in range(len(facts)):
        entry = {"rank": r, "host": hosts[r], "rows": int(facts[r, 0]),
                 "row_range": [int(facts[r, 1]), int(facts[r, 2])],
                 "load_s": float(facts[r, 3]), "peak_rss_mb": facts[r, 4] / 2**20}
        entry.update({f"{name}_s": float(totals[r, i]) for i, name in enumerate(PHASES)})
        per_rank.append(entry)
    return {
        "version": __version__,
        "config": config.to_dict(),
        "ranks": len(facts),
        "workers": workers,
        "rows": info.rows,
        "features": info.features,
        "dtype": dtype.name,
        "data": {"path": os.path.abspath(data_path), "x_dataset": info.x_name,
                 "y_dataset": info.y_name, "x_dtype": info.x_dtype, "y_dtype": info.y_dtype},
        "run_dir": os.path.abspath(run_dir),
        "iterations": trajectory.iterations,
        "evaluations": evaluations,
        "stop_reason": trajectory.stop_reason,
        "final_loss": float(trajectory.loss[-1]),
        "initial_loss": float(trajectory.loss[0]),
        "grad_norm_rel": float(trajectory.grad_norm[-1] / trajectory.grad_norm[0])
        if trajectory.grad_norm[0] > 0 else 0.0,
        "lr": lr,
        "lr_mode": "auto" if lmax is not None else "fixed",
        "lambda_max": lmax,
        "power_iterations": power_steps,
        "wall_s": trajectory.wall_s,
        "s_per_iter": trajectory.wall_s / evaluations,
        "load_s": float(facts[:, 3].max()),
        "phases": stats,
        "per_rank": per_rank,
        "imbalance": imbalance(totals, holds_rows),
        "threads": threads,
        "slurm": slurm_info(),
        "mpi": {"library": MPI.Get_library_version().splitlines()[0].strip(),
                "mpi4py": __import__("mpi4py").__version__},
        "preprocessing": {"intercept": config.intercept, "standardize": config.standardize,
                          "feature_mean": transform.mean, "feature_scale": transform.scale,
                          "y_mean": transform.y_mean},
        "timing": {"clock": "time.perf_counter_ns", "sync": "Barrier before Reduce",
                   "wall_s": "first Bcast to last update", "load_s": "max over ranks"},
        "started": started,
    }
