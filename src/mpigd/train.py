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

from . import __version__, checkpoint, data, faults, report, synthetic, trace
from .comm import agreed
from .config import parse_straggler
from .errors import MpigdError
from .objective import LeastSquaresShard, job_kernel
from .signals import StopRequest, Terminated, on_sigterm
from .solver import StopRules, estimate_lmax, gradient_descent, peer_to_peer_descent
from .standardize import prepare
from .timing import PHASES, imbalance, phase_stats

# The embedded default problem (`python -m mpigd` with no --data): ~51 MB of float64,
# generated once and reused.
DEFAULT_ROWS, DEFAULT_FEATURES, DEFAULT_SEED, DEFAULT_NOISE = 200_000, 32, 0, 0.1
DEFAULT_DATA = os.path.join(
    "runs", "default-data", f"synthetic-{DEFAULT_ROWS}x{DEFAULT_FEATURES}-seed{DEFAULT_SEED}.h5"
)
# SLURM_TASKS_PER_NODE is always set ("2(x3),1"); SLURM_NTASKS_PER_NODE only when requested.
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_NNODES",
                   "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                   "SLURM_CPUS_PER_TASK", "SLURM_STEP_ID", "SLURM_JOB_PARTITION",
                   "SLURM_JOB_ACCOUNT", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                   "SLURM_CLUSTER_NAME")
_HOST_BYTES = 64
_OK, _DIVERGED, _TERMINATED = 0, 1, 2
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
    # VmHWM counts this process only; ru_maxrss starts at the RSS of whatever process forked
    # us (a big Python parent would be reported as our own peak). ru_maxrss where there is no /proc.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
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


def run(config, comm=MPI.COMM_WORLD, resume=None):
    """Collective: train as `config` says (continuing `resume`, a Checkpoint, if given).

    Returns the result dict on rank 0, None elsewhere.
    """
    rank, size, root = comm.rank, comm.size, comm.rank == 0
    if config.dedicated_server and size < 2:
        raise MpigdError("--dedicated-server needs at least 2 ranks (1 server + workers)", collective=True)
    straggler_rank, straggle_s = parse_straggler(config.straggler) if config.straggler else (None, 0.0)
    if straggler_rank is not None and straggler_rank >= size:
        raise MpigdError(f"--straggler rank {straggler_rank} does not exist: ranks are 0..{size - 1}",
                         collective=True)

    run_dir = fresh = None
    with agreed(comm, "preparing the output directory"):
        if root:
            fresh = config.out is None or not os.path.exists(config.out)
            run_dir = report.choose_run_dir(config.out, config.force or resume is not None)
    try:
        # SIGTERM while loading is honoured too: the flag waits for the first iteration.
        with on_sigterm(StopRequest()) as stop:
            return _train(config, comm, run_dir, resume,
                          straggle_s if rank == straggler_rank else 0.0, stop)
    except BaseException:
        # A run that failed before writing anything leaves no empty directory behind.
        if fresh and run_dir and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)
        raise


def _load(config, comm, data_path):
    """Collective: every rank opens the file, validates it, reads only its own rows."""
    rank, size = comm.rank, comm.size
    workers = size - 1 if config.dedicated_server else size
    fault = faults.planned(rank)
    with agreed(comm, f"reading {data_path}"), data.readable(data_path):
        with data.open_input(data_path) as h5file:
            info = data.inspect(h5file, config.x_dataset, config.y_dataset)
            if info.rows < workers:
                most = info.rows + (size - workers)
                raise MpigdError(f"{info.rows} rows cannot be shared by {workers} workers; "
                                 f"start fewer ranks (`mpirun -n {most}` at most) or use more data")
            dtype = data.compute_dtype(info.x_dtype, config.dtype)
            lo, hi = data.shard_rows(info.rows, size, rank, config.dedicated_server)
            X, y = data.read_shard(h5file, info, lo, hi, dtype)
            if fault and fault[0] == "load":
                faults.fail("load", rank)
        data.check_finite(X, y, first_row=lo)
    return info, X, y, lo, hi


def _train(config, comm, run_dir, resume, straggle_s, stop):
    rank, size, root = comm.rank, comm.size, comm.rank == 0
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    threads = limit_blas_threads(config.threads, size)
    data_path = config.data
    if data_path is None:
        data_path = DEFAULT_DATA
        with agreed(comm, f"generating the default data set {DEFAULT_DATA}"):
            if root and ensure_default_data(data_path):
                print(f"mpigd: generated the default data set {data_path} "
                      f"({DEFAULT_ROWS} x {DEFAULT_FEATURES} float64)", flush=True)

    load_started = time.perf_counter()
    info, X, y, lo, hi = _load(config, comm, data_path)
    load_s = time.perf_counter() - load_started
    fingerprint = {"rows": info.rows, "features": info.features, "dtype": X.dtype.name,
                   "checksum": checkpoint.data_checksum(comm, X, y, lo)}
    if resume is not None:
        checkpoint.check_fingerprint(resume.fingerprint, fingerprint, run_dir or config.out)
        if resume.iteration > config.iters:
            raise MpigdError(f"the checkpoint is at iteration {resume.iteration}, past --iters "
                             f"{config.iters}; resume with a larger --iters", collective=True)

    transform = prepare(comm, X, y, info.rows, config.intercept, config.standardize)
    workers = size - 1 if config.dedicated_server else size
    with agreed(comm, "preparing the gradient kernel"):
        shard = LeastSquaresShard(X, y, kernel=job_kernel(info.rows, X.shape[1], X.itemsize, workers))

    if resume is not None:
        lr, lmax, power_steps = resume.lr, resume.lambda_max, resume.power_iterations
    elif config.lr == "auto":
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite lmax is reported
            lmax, power_steps = estimate_lmax(comm, shard, info.features, seed=config.seed)
        if not lmax > 0:
            raise MpigdError("X^T X is zero (all features are zero after preprocessing); "
                             "nothing to fit", collective=True)
        lr = 1.0 / lmax
    else:
        lr, lmax, power_steps = float(config.lr), None, None

    if resume is not None:
        start, w0 = resume.iteration, resume.w
        rules = StopRules(config.iters, config.tol, start, resume.loss, resume.grad_norm)
    else:
        start, w0 = 0, np.zeros(info.features)
        rules = StopRules(config.iters, config.tol)

    def snapshot(iteration, w):
        loss, grad_norm = rules.loss[:iteration], rules.grad_norm[:iteration]
        return checkpoint.Checkpoint(
            iteration=iteration, w=w.copy(), loss=loss, grad_norm=grad_norm, lr=lr,
            lambda_max=lmax, power_iterations=power_steps, config=config.to_dict(),
            fingerprint=fingerprint, ranks=size)

    saved = {"count": 0, "seconds": 0.0}
    progress = report.Progress(config.iters, enabled=root and not config.quiet, start=start)
    fault = faults.planned(rank)

    def on_iteration(t, w):
        if root:
            progress(t, rules)
            every = config.checkpoint_every
            if every and (t + 1) % every == 0 and not rules.reason:
                began = time.perf_counter()
                checkpoint.save(run_dir, snapshot(t + 1, w))
                saved["count"] += 1
                saved["seconds"] += time.perf_counter() - began
        if fault and fault[0] == "loop" and t == fault[1]:
            faults.fail(f"loop iteration {t}", rank)

    loop = peer_to_peer_descent if config.mode == "allreduce" else gradient_descent
    # Overflow is detected (rules.decide checks loss and |g| every iteration) and reported
    # as divergence: numpy's own warnings would only add noise to that one message.
    with np.errstate(over="ignore", invalid="ignore"):
        trajectory = loop(comm, shard, w0, lr, rules, straggle_s=straggle_s, stop=stop,
                          on_iteration=on_iteration)
    status = np.array([_OK], dtype=np.int64)
    if root:
        status[0] = {"diverged": _DIVERGED, "terminated": _TERMINATED}.get(rules.reason, _OK)
    comm.Bcast(status, root=0)
    seconds, starts = trajectory.clock.gather(comm)

    if status[0] == _DIVERGED:
        with agreed(comm, "saving the diverged history"):
            if root:
                kept = os.path.join(run_dir, "history-diverged.csv")
                report.write_history(kept, *rules.history(), seconds, start)
        t = rules.last  # rank 0 speaks, and only rank 0 knows the history in server mode
        note = f"no result was written, the history so far is in {run_dir}/history-diverged.csv"
        if t == start:  # before any update: finite data whose loss or gradient overflows
            raise MpigdError(
                f"{rules.why} at iteration {t}, before any update: the data's values are too "
                f"large for {X.dtype} arithmetic; use --dtype float64 or --standardize; {note}",
                collective=True)
        step = (f"step size {lr:.6g} (--lr auto = 1/lambda_max); pass a smaller --lr, e.g. "
                f"--lr {lr / 4:.3g}, or --standardize" if lmax is not None else
                f"--lr {lr:.6g}; use a smaller --lr, or --lr auto (and --standardize for "
                "features of very different scales)")
        raise MpigdError(f"training diverged at iteration {t}: {rules.why}, with {step}; {note}",
                         collective=True)
    if status[0] == _TERMINATED:
        with agreed(comm, "saving the checkpoint after SIGTERM"):
            if root:
                checkpoint.save(run_dir, snapshot(rules.last, trajectory.w))
        # In a Slurm job the next step is a new job: `sbatch slurm/train.sbatch --resume DIR`.
        again = (f"a new job running `srun -n {size} python -m mpigd --resume {run_dir}` (e.g. "
                 f"`sbatch slurm/train.sbatch --resume {run_dir}`)" if "SLURM_JOB_ID" in os.environ
                 else f"`mpirun -n {size} python -m mpigd --resume {run_dir}`")
        raise Terminated(
            f"received SIGTERM: stopped cleanly at iteration {rules.last if root else '?'}; "
            f"checkpoint saved to {run_dir}/{checkpoint.FILE}; continue with {again}")

    facts = np.array([hi - lo, lo, hi, load_s, _peak_rss_bytes(), os.cpu_count() or 0],
                     dtype=np.float64)
    all_facts = np.empty((size, facts.size)) if root else None
    comm.Gather(facts, all_facts, root=0)
    hosts = _gather_hosts(comm)

    result = None
    with agreed(comm, "writing the results"):
        if root:
            result = _result(config, info, X.dtype, data_path, run_dir, trajectory, seconds,
                             all_facts, hosts, lr, lmax, power_steps, threads, started)
            result["resumed_from"] = resume.iteration if resume is not None else None
            result["kernel"] = {"name": shard.kernel, "setup_s": shard.setup_s}  # rank 0's
            result["checkpoints"] = {"every": config.checkpoint_every, **saved}
            w, intercept = transform.original_weights(trajectory.w)
            result["preprocessing"] = {
                "intercept": config.intercept, "standardize": config.standardize,
                "feature_mean": transform.mean, "feature_scale": transform.scale,
                "y_mean": transform.y_mean}
            report.write_history(os.path.join(run_dir, "history.csv"), *rules.history(),
                                 seconds, start)
            report.write_weights(os.path.join(run_dir, "weights.h5"), w,
                                 intercept if config.intercept else None, result["config"])
            if config.trace:
                trace.write(os.path.join(run_dir, "trace.json"), seconds, starts, start)
            report.write_result(os.path.join(run_dir, report.RESULT), result)
            stale = os.path.join(run_dir, checkpoint.FILE)
            if os.path.exists(stale):
                os.remove(stale)  # the run is complete: result.json and weights.h5 supersede it
    return result


def _result(config, info, dtype, data_path, run_dir, trajectory, seconds, facts, hosts,
            lr, lmax, power_steps, threads, started):
    rules = trajectory.rules
    holds_rows = facts[:, 0] > 0
    update_ranks = len(facts) if config.mode == "allreduce" else 1
    totals, stats = phase_stats(seconds, holds_rows, update_ranks)
    evaluations = seconds.shape[1]
    loss, grad_norm = rules.history()
    per_rank = []
    for r in range(len(facts)):
        entry = {"rank": r, "host": hosts[r], "rows": int(facts[r, 0]),
                 "row_range": [int(facts[r, 1]), int(facts[r, 2])],
                 "load_s": float(facts[r, 3]), "peak_rss_mb": facts[r, 4] / 2**20,
                 "cpus": int(facts[r, 5])}  # of the rank's host: tells oversubscription
        entry.update({f"{name}_s": float(totals[r, i]) for i, name in enumerate(PHASES)})
        per_rank.append(entry)
    return {
        "version": __version__,
        "config": config.to_dict(),
        "mode": config.mode,
        "ranks": len(facts),
        "workers": len(facts) - 1 if config.dedicated_server else len(facts),
        "rows": info.rows,
        "features": info.features,
        "dtype": dtype.name,
        "data": {"path": os.path.abspath(data_path), "x_dataset": info.x_name,
                 "y_dataset": info.y_name, "x_dtype": info.x_dtype, "y_dtype": info.y_dtype},
        "run_dir": os.path.abspath(run_dir),
        "iterations": rules.updates,
        "evaluations": evaluations,
        "stop_reason": rules.reason,
        "final_loss": float(loss[-1]),
        "initial_loss": float(loss[0]),
        "grad_norm_rel": float(grad_norm[-1] / grad_norm[0]) if grad_norm[0] > 0 else 0.0,
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
        "timing": {"clock": "time.perf_counter_ns", "sync": "Barrier before Reduce",
                   "wall_s": "first Bcast to last update (this segment, if resumed)",
                   "load_s": "max over ranks"},
        "started": started,
    }
