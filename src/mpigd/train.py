"""One whole training run, as a pipeline of named steps:

    prepare      output directory, data (the embedded default if none), every rank's rows,
                 the fingerprint and the resume checks, preprocessing, the gradient kernel
    step size    1/lambda_max by power iteration, the user's --lr, or the checkpoint's
    descend      the loop of solver.py (server or peer to peer), with progress and
                 periodic checkpoints after each iteration
    finish       diverged or terminated: say so (and checkpoint); otherwise gather the
                 per-rank facts and write the run directory, result.json last

Every step that can fail on one rank only runs inside `agreed(...)`, so a missing file
or a NaN seen by rank 5 ends all ranks together with one message.
"""

import os
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from . import (__version__, checkpoint, clocks, data, evaluation, faults, generate_parallel, methods,
               progress, rundir, scan, stepsize, synthetic, trace, watchdog)
from .methods import loop as method_loop
from .comm import agreed
from .config import Mode, TrainConfig
from .environment import blas_threads, gather_rank_facts, mpi_library, slurm_info
from .placement import placement
from .errors import MpigdError
from .objective import LeastSquaresShard, fast_scan, job_kernel
from .console import Progress
from .result import (CheckpointStats, DataSource, KernelInfo, PhaseSummary, Preprocessing,
                     RankEntry, Result)
from .signals import StopRequest, Terminated, on_sigterm
from .solver import Outcome, StopRules, Trajectory, gradient_descent, peer_to_peer_descent
from .standardize import Transform, prepare as standardize
from .stepsize import StepSize
from .timing import PHASES, imbalance, phase_stats

# The embedded default problem (`python -m mpigd` with no --data), generated once and reused.
DEFAULT_ROWS, DEFAULT_FEATURES, DEFAULT_SEED = 200_000, 32, 0
# cond(X^T X) of the embedded problem: about 900 iterations to the default tolerance, ~1.5 s
# on 2 ranks, so the phase table covers real training (with i.i.d. features it converged in
# 4 iterations and showed nothing).
DEFAULT_CONDITION = 100.0
DEFAULT_DATA_DIR = os.path.join("runs", "default-data")


@dataclass
class Job:
    """What every step of one run needs to know."""

    config: TrainConfig
    comm: MPI.Comm
    run_dir: str | None       # on rank 0; None elsewhere
    resume: checkpoint.Checkpoint | None
    straggle_s: "float | faults.Jitter"  # this rank's injected delay per iteration
    stop: StopRequest
    threads: dict
    started: str


@dataclass
class Prepared:
    """The data as this rank holds it, ready for the loop."""

    path: str
    info: data.DatasetInfo
    lo: int
    hi: int
    load_s: float
    fingerprint: dict
    transform: Transform
    shard: LeastSquaresShard
    watch: evaluation.Watch | None = None  # held-out rows, test rows, w* (evaluation.py)


def run(config: TrainConfig, comm: MPI.Comm = MPI.COMM_WORLD,
        resume: checkpoint.Checkpoint | None = None) -> Result | None:
    """Collective: train as `config` says (continuing `resume` if given); the Result on rank 0."""
    _check_ranks(config, comm.size)
    run_dir, fresh = _open_run_dir(config, comm, resume)
    try:
        # SIGTERM while loading is honoured too: the flag waits for the first iteration.
        with on_sigterm(StopRequest()) as stop, blas_threads(config.threads, comm.size) as threads, \
                watchdog.watching(comm, config.stall_timeout, run_dir,
                                  resume.iteration if resume else None):
            straggler = config.straggler
            delay = straggler.seconds if straggler and straggler.rank == comm.rank else 0.0
            if config.jitter:
                delay = faults.Jitter(delay, config.jitter, config.seed, comm.rank)
            job = Job(config, comm, run_dir, resume, delay,
                      stop, threads, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            prepared = prepare(job)
            step = resume.step if resume else stepsize.choose(
                comm, prepared.shard, prepared.info.features, config.lr, config.seed)
            saver, trajectory, alignment = descend(job, prepared, step)
            return finish(job, prepared, step, saver, trajectory, alignment)
    except BaseException:
        # A run that failed before writing anything leaves no empty directory behind.
        if fresh and run_dir and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)
        raise


def _check_ranks(config: TrainConfig, size: int) -> None:
    if config.dedicated_server and size < 2:
        raise MpigdError("--dedicated-server needs at least 2 ranks (1 server + workers)", collective=True)
    if config.straggler is not None and config.straggler.rank >= size:
        raise MpigdError(f"--straggler rank {config.straggler.rank} does not exist: ranks are "
                         f"0..{size - 1}", collective=True)


def _open_run_dir(config, comm, resume):
    """(run_dir on rank 0, whether it is new): created and checked before any data is read."""
    run_dir = fresh = None
    with agreed(comm, "preparing the output directory"):
        if comm.rank == 0:
            fresh = config.out is None or not os.path.exists(config.out)
            run_dir = rundir.choose_run_dir(config.out, config.force or resume is not None)
    return run_dir, fresh


# --- prepare -------------------------------------------------------------------------------

def prepare(job: Job) -> Prepared:
    """Collective: load every rank's rows, check them against a checkpoint, preprocess."""
    config, comm = job.config, job.comm
    path = config.data or _default_data(comm)
    load_started = time.perf_counter()
    info, X, y, lo, hi, checksum, scan_setup_s = _load(config, comm, path)
    load_s = time.perf_counter() - load_started - scan_setup_s  # numba's import: the kernel's
    fingerprint = {"rows": info.rows, "features": info.features, "dtype": X.dtype.name,
                   "checksum": checkpoint.data_checksum(comm, X, y, lo, local=checksum)}
    if job.resume is not None:
        checkpoint.check_fingerprint(job.resume.fingerprint, fingerprint, job.run_dir or config.out)
        if job.resume.iteration > config.iters and config.method != "sgd":  # sgd: rounds != steps
            raise MpigdError(f"the checkpoint is at iteration {job.resume.iteration}, past --iters "
                             f"{config.iters}; resume with a larger --iters", collective=True)
    train, held = evaluation.split_rows(comm, config, X, y, lo, info.rows, path)
    transform = standardize(comm, train.X, train.y, train.total, config.intercept, config.standardize)
    watch = evaluation.Watch.build(comm, config, train, held, transform, job.resume, info.features)
    workers = comm.size - 1 if config.dedicated_server else comm.size
    with agreed(comm, "preparing the gradient kernel"):
        kernel = job_kernel(info.rows, X.shape[1], X.itemsize, workers, config.kernel)
        shard = LeastSquaresShard(train.X, train.y, kernel=kernel)
        shard.setup_s += scan_setup_s
    return Prepared(path, info, lo, hi, load_s, fingerprint, transform, shard, watch)


def _default_data(comm, condition: float | None = DEFAULT_CONDITION) -> str:
    """The embedded default data set: generated by rank 0 on first use, reused after.

    `condition` is cond(X^T X) (synthetic.mixing); None gives i.i.d. features (cond ~ 1).
    """
    path = os.path.join(DEFAULT_DATA_DIR, synthetic.file_name(
        DEFAULT_ROWS, DEFAULT_FEATURES, DEFAULT_SEED, condition))
    with agreed(comm, f"generating the default data set {path}"):
        if comm.rank == 0:
            path, generated = synthetic.ensure(DEFAULT_DATA_DIR, DEFAULT_ROWS, DEFAULT_FEATURES,
                                               DEFAULT_SEED, condition)
            if generated:
                print(f"mpigd: generated the default data set {path} "
                      f"({DEFAULT_ROWS} x {DEFAULT_FEATURES} float64"
                      f"{'' if condition is None else f', cond(X^T X) ~ {condition:g}'})",
                      flush=True)
    return path


def _load(config, comm, path):
    """Collective: every rank opens the file, validates it, reads only its own rows."""
    if path.startswith(synthetic.SOURCE_PREFIX):  # --data synthetic:RxD[:S]: no file
        # No read to fuse the checksum into: None lets data_checksum make its own pass.
        return (*synthetic.generate_shard(comm, path, config.dtype, config.dedicated_server), None, 0.0)
    rank, size = comm.rank, comm.size
    workers = size - 1 if config.dedicated_server else size
    fault = faults.planned(rank)
    with agreed(comm, f"reading {path}"), data.readable(path):
        with data.open_input(path) as h5file:
            info = data.inspect(h5file, config.x_dataset, config.y_dataset)
            generate_parallel.require_parts(h5file)  # a joined file moved without its parts
            if info.rows < workers:
                most = info.rows + (size - workers)
                raise MpigdError(f"{info.rows} rows cannot be shared by {workers} workers; "
                                 f"start fewer ranks (`mpirun -n {most}` at most) or use more data")
            dtype = data.compute_dtype(info.x_dtype, config.dtype)
            lo, hi = data.shard_rows(info.rows, size, rank, config.dedicated_server)
            fast = fast_scan(info.rows, info.features, dtype.itemsize, workers, config.kernel)
            scan_setup_s = scan.warm_up(dtype) if fast else 0.0
            # read, NaN/Inf check and this rank's checksum in one pass (data.load_shard)
            X, y, checksum = data.load_shard(h5file, info, lo, hi, dtype, fast)
            if fault and fault[0] == "load":
                faults.fail("load", rank)
    return info, X, y, lo, hi, checksum, scan_setup_s


# --- descend -------------------------------------------------------------------------------

class _AfterIteration:
    """What rank 0 does between iterations: progress, periodic checkpoints; and faults."""

    def __init__(self, job: Job, rules: StopRules, saver: checkpoint.Saver, watch=None):
        self.watch = watch
        self.rank, self.root = job.comm.rank, job.comm.rank == 0
        self.rules, self.saver = rules, saver
        config = job.config
        start = job.resume.iteration if job.resume else 0
        self.progress = Progress(config.iters, enabled=self.root and not config.quiet, start=start,
                                 style=config.progress)
        self.fault = faults.planned(self.rank)

    def __call__(self, t: int, w: np.ndarray) -> None:
        progress.step(t + 1)  # the watchdog's sign of life: iteration t is done
        if self.watch is not None:
            self.watch(t, w, self.rules)  # collective when it evaluates held-out rows
        if self.root:
            self.progress(t, self.rules)
            if self.saver.due(t) and not self.rules.reason:
                self.saver.save(t + 1, w, *self.rules.history_before(t + 1))
        if self.fault and self.fault[0] == "loop" and t == self.fault[1]:
            faults.fail(f"loop iteration {t}", self.rank)


def descend(job: Job, prepared: Prepared, step: StepSize):
    """Collective: the training loop from w_0 (or the checkpoint's w_t) to an Outcome.

    Returns (the checkpoint saver, the Trajectory, the clock Alignment on rank 0), the
    clocks being compared with rank 0's just before and just after the loop.
    """
    config, resume = job.config, job.resume
    if resume is not None:
        w0 = resume.w
        rules = StopRules(config.iters, config.tol, resume.iteration, resume.loss, resume.grad_norm)
    else:
        w0 = np.zeros(prepared.info.features)
        rules = StopRules(config.iters, config.tol)
    saver = checkpoint.Saver(job.run_dir, step, config.to_dict(), prepared.fingerprint,
                             job.comm.size, config.checkpoint_every)
    loop = peer_to_peer_descent if config.mode is Mode.ALLREDUCE else gradient_descent
    method, setup = None, 0
    if config.method != "gd":  # --method (issue 14): the same four steps, in methods/loop.py
        rules = methods.stop_rules(config, prepared.info.rows, resume)
        method, setup = methods.build(config, job.comm, prepared.shard, step, prepared.info.features,
                                      prepared.info.rows, prepared.lo, prepared.hi, resume)
        saver.method_state = lambda: methods.state_of(method)

        def loop(comm, shard, w0, lr, rules, **hooks):  # w0 and lr live in the method's state
            return method_loop.run(comm, shard, method, rules, config.mode, **hooks)
    # Overflow is detected (rules.decide checks loss and |g| every iteration) and reported
    # as divergence: numpy's own warnings would only add noise to that one message.
    before = clocks.measure(job.comm)
    progress.enter(progress.LOOP, rules.start)
    with np.errstate(over="ignore", invalid="ignore"):
        trajectory = loop(job.comm, prepared.shard, w0, step.lr, rules, straggle_s=job.straggle_s,
                          stop=job.stop, on_iteration=_AfterIteration(job, rules, saver, prepared.watch))
    progress.enter(progress.FINISHING)
    after = clocks.measure(job.comm)
    trajectory.method, trajectory.setup_rounds = method, setup
    return saver, trajectory, (clocks.Alignment(before, after) if before is not None else None)


# --- finish --------------------------------------------------------------------------------

def finish(job: Job, prepared: Prepared, step: StepSize, saver: checkpoint.Saver,
           trajectory: Trajectory, alignment: clocks.Alignment | None) -> Result | None:
    """Collective: end a diverged or terminated run with its message, else write the results."""
    comm, root = job.comm, job.comm.rank == 0
    seconds, starts = trajectory.clock.gather(comm)
    if trajectory.outcome is Outcome.DIVERGED:
        _stop_diverged(job, prepared, step, trajectory, seconds)
    if trajectory.outcome is Outcome.TERMINATED:
        with agreed(comm, "saving the checkpoint after SIGTERM"):
            if root:
                saver.save(trajectory.rules.last, trajectory.w,
                           *trajectory.rules.history_before(trajectory.rules.last))
        raise _terminated(job, trajectory.rules.last if root else None)
    trajectory.wall_s -= prepared.watch.seconds  # evaluation is not training: untimed
    found = prepared.watch.final(trajectory.w, prepared.shard, trajectory.rules.last)
    facts = gather_rank_facts(comm, prepared.lo, prepared.hi, prepared.load_s)
    result = None
    with agreed(comm, "writing the results"):
        if root:
            result = _result(job, prepared, step, saver, trajectory, seconds, facts)
            result.clocks = {"method": "ping-pong with rank 0 before and after the loop, "
                             f"minimum round trip of {clocks.ROUNDS}; drift interpolated; "
                             "uncertainty = half that round trip", "per_rank": alignment.summary()}
            evaluation.annotate(result, job.config, prepared, trajectory, found)
            _write_run(job, prepared, result, trajectory, seconds,
                       clocks.aligned_starts(alignment, starts))
    return result


def _stop_diverged(job, prepared, step, trajectory, seconds):
    rules, run_dir = trajectory.rules, job.run_dir
    start = job.resume.iteration if job.resume else 0
    with agreed(job.comm, "saving the diverged history"):
        if job.comm.rank == 0:
            rundir.write_history(os.path.join(run_dir, rundir.HISTORY_DIVERGED), *rules.history(),
                                 seconds, PHASES, start)
    t = rules.last  # rank 0 speaks, and only rank 0 knows the history in server mode
    note = f"no result was written, the history so far is in {run_dir}/{rundir.HISTORY_DIVERGED}"
    if t == start:  # before any update: finite data whose loss or gradient overflows
        raise MpigdError(
            f"{rules.why} at iteration {t}, before any update: the data's values are too large "
            f"for {prepared.shard.X.dtype} arithmetic; use --dtype float64 or --standardize; {note}",
            collective=True)
    lr = step.lr
    advice = (f"step size {lr:.6g} (--lr auto = 1/lambda_max); pass a smaller --lr, e.g. "
              f"--lr {lr / 4:.3g}, or --standardize" if step.mode == "auto" else
              f"--lr {lr:.6g}; use a smaller --lr, or --lr auto (and --standardize for "
              "features of very different scales)")
    raise MpigdError(f"training diverged at iteration {t}: {rules.why}, with {advice}; {note}",
                     collective=True)


def _terminated(job: Job, iteration: int | None) -> Terminated:
    size, run_dir = job.comm.size, job.run_dir
    # In a Slurm job the next step is a new job: `sbatch slurm/train.sbatch --resume DIR`.
    again = (f"a new job running `srun -n {size} python -m mpigd --resume {run_dir}` (e.g. "
             f"`sbatch slurm/train.sbatch --resume {run_dir}`)" if "SLURM_JOB_ID" in os.environ
             else f"`mpirun -n {size} python -m mpigd --resume {run_dir}`")
    return Terminated(
        f"received SIGTERM: stopped cleanly at iteration {'?' if iteration is None else iteration}; "
        f"checkpoint saved to {run_dir}/{rundir.CHECKPOINT}; continue with {again}")


def _write_run(job, prepared, result, trajectory, seconds, starts):
    """Rank 0: history, weights, trace; result.json last; then the checkpoint is obsolete."""
    run_dir, config = job.run_dir, job.config
    start = job.resume.iteration if job.resume else 0
    loss, grad_norm = trajectory.rules.history()
    rundir.write_history(os.path.join(run_dir, rundir.HISTORY), loss, grad_norm, seconds, PHASES,
                         start, extra=prepared.watch.history_columns(len(loss)))
    w, intercept = prepared.transform.original_weights(trajectory.w)
    rundir.write_weights(os.path.join(run_dir, rundir.WEIGHTS), w,
                         intercept if config.intercept else None, result.config,
                         names=[row["name"] for row in result.weights[: len(w)]],
                         encoding=prepared.watch.encoding)
    if config.trace:
        trace.write(os.path.join(run_dir, rundir.TRACE), seconds, starts, start,
                    result.clocks["per_rank"])
    result.save(os.path.join(run_dir, rundir.RESULT))
    stale = os.path.join(run_dir, rundir.CHECKPOINT)
    if os.path.exists(stale):
        os.remove(stale)  # the run is complete: result.json and weights.h5 supersede it


def _per_rank(facts, totals) -> list[RankEntry]:
    return [RankEntry(rank=f.rank, host=f.host, rows=f.rows, row_range=list(f.row_range),
                      load_s=f.load_s, peak_rss_mb=f.peak_rss_bytes / 2**20, cpus=f.cpus,
                      **{f"{name}_s": float(totals[f.rank, i]) for i, name in enumerate(PHASES)})
            for f in facts]


def _result(job, prepared, step, saver, trajectory, seconds, facts) -> Result:
    config, info, rules = job.config, prepared.info, trajectory.rules
    holds_rows = np.array([f.rows > 0 for f in facts])
    totals, stats = phase_stats(seconds, holds_rows, len(facts) if config.mode is Mode.ALLREDUCE else 1)
    loss, grad_norm = rules.history()
    evaluations = seconds.shape[1]
    transform = prepared.transform
    return Result(
        version=__version__, config=config.to_dict(), mode=config.mode.value, ranks=len(facts),
        workers=len(facts) - 1 if config.dedicated_server else len(facts),
        rows=info.rows, features=info.features, dtype=prepared.shard.X.dtype.name,
        data=DataSource(path=prepared.path if prepared.path.startswith(synthetic.SOURCE_PREFIX)
                        else os.path.abspath(prepared.path), x_dataset=info.x_name,
                        y_dataset=info.y_name, x_dtype=info.x_dtype, y_dtype=info.y_dtype),
        run_dir=os.path.abspath(job.run_dir), iterations=rules.updates, evaluations=evaluations,
        stop_reason=trajectory.outcome.reason, final_loss=float(loss[-1]),
        converged=trajectory.outcome is Outcome.CONVERGED,
        more_iterations_estimate=rules.iterations_to_tol(),
        communication=methods.rounds(
            config, len(facts), info.features, evaluations,
            trajectory.setup_rounds + (0 if job.resume else step.power_iterations or 0),
            trajectory.outcome is Outcome.CONVERGED, trajectory.wall_s, trajectory.method),
        initial_loss=float(loss[0]),
        grad_norm_rel=float(grad_norm[-1] / grad_norm[0]) if grad_norm[0] > 0 else 0.0,
        lr=step.lr, lr_mode=step.mode, lambda_max=step.lambda_max,
        power_iterations=step.power_iterations, wall_s=trajectory.wall_s,
        s_per_iter=trajectory.wall_s / evaluations, load_s=max(f.load_s for f in facts),
        phases={name: PhaseSummary(**values) for name, values in stats.items()},
        per_rank=_per_rank(facts, totals), imbalance=imbalance(totals, holds_rows),
        threads=job.threads, slurm=slurm_info(), mpi=mpi_library(),
        timing={"clock": "time.perf_counter_ns",
                "sync": "the part of the wait at the Barrier before the Reduce that the slowest "
                        "rank's longer compute explains (max over ranks of compute - own compute)",
                "comm_wait": "the rest of that wait: messages in flight (w received late "
                             "elsewhere, the Barrier's latency)",
                "wall_s": "first Bcast to last update (this segment, if resumed)",
                "load_s": "max over ranks"},
        started=job.started, resumed_from=job.resume.iteration if job.resume else None,
        kernel=KernelInfo(name=prepared.shard.kernel, setup_s=prepared.shard.setup_s),  # rank 0's
        checkpoints=CheckpointStats(every=config.checkpoint_every, count=saver.count,
                                    seconds=saver.seconds),
        placement=placement(facts),
        preprocessing=Preprocessing(
            intercept=config.intercept, standardize=config.standardize,
            feature_mean=transform.mean.tolist(), feature_scale=transform.scale.tolist(),
            y_mean=transform.y_mean))
