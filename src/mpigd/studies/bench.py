"""`python -m mpigd bench`: how close one iteration comes to what the hardware forces.

From one run it measures, next to each other, and prints one table (or --json):
  kernels      read probes (X @ w, an OR of X's words), the faster = the floor; blocked
               BLAS and the fused numba kernel as % of that floor, per feature count and dtype
  comm         bare Bcast+Reduce of the trainer's buffers vs the real solver loop
               (solver.gradient_descent on a tiny shard, so only communication is left)
  clocks       the instrumentation's own cost per iteration, vs an iteration at 1e6 x 100
  load         mpigd's load of a shard (read + NaN/Inf check + checksum) vs plain h5py X[a:b]
  memory       peak RSS per rank of real trainer runs vs their shard bytes
  start-up     wall time of a tiny 10-iteration 2-rank run, end to end (mpirun included)
  scaling      2-rank speedup of the trainer vs the two-process read-bandwidth ceiling
  generate     `generate` by 2 ranks vs 1, into a new file and over its earlier one
               (generate_bench.py)

Run without mpirun, it launches the MPI parts itself (mpirun -n 2). Under `mpirun -n M`
every rank measures its kernels at once (so the table shows the kernels under M-way
memory contention) and the comm part uses those M ranks; the parts that start runs of
their own (memory, start-up, scaling, generate) are skipped there.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI
from threadpoolctl import threadpool_limits

from .. import rundir
from ..config import kernel_setting
from ..launch import run_mpigd
from ..objective import NUMBA_MIN_BYTES, LeastSquaresShard, choose_kernel, numba_available
from ..result import Result
from ..solver import StopRules, gradient_descent
from ..synthetic import generate
from ..timing import BCAST, REDUCE, SYNC, PhaseClock
from . import probe
from .generate_bench import generate_case
from .load_bench import load_case
from .bench_table import RSS_EXTRA_MB, RSS_FACTOR, table

REFERENCE_ROWS, REFERENCE_FEATURES = 1_000_000, 100    # "an iteration at 1e6 x 100"



# ---------------------------------------------------------------- kernels vs read floor

def kernel_case(comm, rows_bytes, features, dtype, repeat):
    """Probe and kernels on a fresh random shard of ~rows_bytes (every rank at once)."""
    dtype = np.dtype(dtype)
    rows = max(4, rows_bytes // (features * dtype.itemsize))
    X = probe.fill_random(np.empty((rows, features), dtype=dtype), seed=comm.rank)
    y = probe.fill_random(np.empty(rows, dtype=dtype), seed=comm.rank + 1000)
    w = np.full(features, 0.01)
    g = np.empty(features)
    case = {"features": features, "dtype": dtype.name, "rows": rows, "bytes": X.nbytes}
    probes = probe.reads(X)
    timed = {f"probe_{name}": fn for name, fn in probes.items()}
    shards = {}
    for name in ("blas", "numba"):
        if name == "numba" and not numba_available():
            continue
        shards[name] = LeastSquaresShard(X, y, kernel=name)
        timed[name] = lambda s=shards[name]: s.gradient(w, g)
    for fn in timed.values():
        fn()  # warm: pages, caches, lazy imports
    comm.Barrier()
    seconds = probe.interleaved_seconds(timed, repeat)  # probes, blas, numba in turn
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name in probes:
        case[f"probe_{name}_s"] = median[f"probe_{name}"]
    case["probe_s"] = min(median[f"probe_{name}"] for name in probes)  # the floor
    case["probe_gb_s"] = X.nbytes / case["probe_s"] / 1e9
    for name in ("blas", "numba"):
        if name not in shards:
            case[name] = None
            continue
        case[name] = {"seconds": median[name], "pct_of_floor": 100.0 * case["probe_s"] / median[name],
                      "setup_s": shards[name].setup_s}
    return case  # X, y and the shards are freed here, before the next case


# ---------------------------------------------------------------- communication

def comm_case(comm, features, iterations, repeat):
    """Median per-iteration seconds on rank 0: bare Bcast+Reduce vs the real solver loop."""
    d = features
    wbuf, packed = np.zeros(d + 1), np.zeros(d + 2)
    total = np.zeros(d + 2) if comm.rank == 0 else None
    per_iteration = np.empty(iterations, dtype=np.int64)
    now = time.perf_counter_ns

    def bare():
        comm.Barrier()
        for i in range(iterations):
            t0 = now()
            comm.Bcast(wbuf, root=0)
            comm.Reduce(packed, total, op=MPI.SUM, root=0)
            per_iteration[i] = now() - t0
        return float(np.median(per_iteration)) * 1e-9

    # The trainer's own loop on 8 rows per rank: compute is a few microseconds, so what
    # is left per iteration is its communication (and its Barrier, counted as sync).
    rng = np.random.default_rng(comm.rank)
    shard = LeastSquaresShard(rng.standard_normal((8, d)), rng.standard_normal(8), kernel="blas")

    def trainer():
        rules = StopRules(iterations, tol=0.0)
        run = gradient_descent(comm, shard, np.zeros(d), 0.0, rules)  # lr 0: w never changes
        table = run.clock.table[: run.clock.rows, :]
        comm_ns = table[:, BCAST] + table[:, REDUCE]
        return float(np.median(comm_ns)) * 1e-9, float(np.median(comm_ns + table[:, SYNC])) * 1e-9

    bare(), trainer()  # warm-up: connections and buffers set up
    bares, comms, syncs = [], [], []
    for _ in range(repeat):
        bares.append(bare())
        c, s = trainer()
        comms.append(c)
        syncs.append(s)
    b, c, s = statistics.median(bares), statistics.median(comms), statistics.median(syncs)
    return {"ranks": comm.size, "features": d, "iterations": iterations, "bare_s": b,
            "trainer_comm_s": c, "trainer_comm_sync_s": s, "ratio": c / b, "ratio_with_sync": s / b}


# ---------------------------------------------------------------- instrumentation

def clock_cost_s(comm, iterations=100_000):
    """Seconds per iteration of exactly what the solver adds to time one iteration.

    Six perf_counter_ns calls and one PhaseClock.record, against the same loop without
    them: the difference is what the clocks cost (clocks on vs off).
    """

    class _NoComm:
        def Barrier(self):
            pass

    clock = PhaseClock(iterations, _NoComm())
    now = time.perf_counter_ns

    def on():
        for _ in range(iterations):
            t0 = now()
            t1 = now()
            t2 = now()
            t3 = now()
            t4 = now()
            t5 = now()
            clock.record(t0, t2 - t1, t1 - t0, t4 - t3, t5 - t4, t3 - t2)
        clock.rows = 0

    def off():
        for _ in range(iterations):
            pass

    return max(0.0, (probe.median_seconds(on, 5) - probe.median_seconds(off, 5)) / iterations)


# ---------------------------------------------------------------- runs of the trainer

def _mpirun(ranks, *args, timeout):
    """(stdout, wall seconds) of `mpirun -n ranks python -m mpigd ARGS` (launch.run_mpigd)."""
    started = time.perf_counter()
    stdout = run_mpigd(ranks, *args, timeout=timeout)
    return stdout, time.perf_counter() - started


def _trainer_run(ranks, data, out, iters, timeout) -> Result:
    # The same kernel for 1 and 2 ranks (auto would choose by shard size, and the 2-rank
    # shards are half as big): what auto takes for big shards, unless --kernel/MPIGD_KERNEL say.
    kernel = choose_kernel(NUMBA_MIN_BYTES)
    _mpirun(ranks, "--data", data, "--iters", iters, "--tol", 0, "--lr", "1e-9", "--quiet",
            "--threads", 1, "--out", out, "--force", "--kernel", kernel, timeout=timeout)
    return Result.load(os.path.join(out, rundir.RESULT))


def trainer_runs(work, rows_bytes, features, iters, repeat, timeout):
    """1- and 2-rank trainer runs on the same data: speedup, and peak RSS vs shard bytes."""

    rows = max(8, rows_bytes // (features * 8))
    data = os.path.join(work, f"bench-{rows}x{features}.h5")
    generate(data, rows, features)
    runs = {1: [], 2: []}
    for _ in range(repeat):  # alternate 1 and 2 ranks: a passing load hits both alike
        for ranks in runs:
            runs[ranks].append(_trainer_run(ranks, data, os.path.join(work, f"run-{ranks}"), iters, timeout))
    per_ranks = {}
    for ranks, results in runs.items():
        s_per_iter = statistics.median(r.s_per_iter for r in results)
        worst = max(results, key=lambda r: max(p.peak_rss_mb for p in r.per_rank))
        memory = []
        for p in worst.per_rank:
            shard_mb = p.rows * (features + 1) * 8 / 2**20
            limit_mb = RSS_FACTOR * shard_mb + RSS_EXTRA_MB
            memory.append({"rank": p.rank, "shard_mb": shard_mb, "peak_rss_mb": p.peak_rss_mb,
                           "rss_over_shard": p.peak_rss_mb / shard_mb, "limit_mb": limit_mb,
                           "within_limit": p.peak_rss_mb <= limit_mb})
        # Where an iteration goes (median run): the slowest rank's compute, and the wait
        # at the Barrier, which grows when a rank loses time slices to other jobs.
        middle = sorted(results, key=lambda r: r.s_per_iter)[len(results) // 2]
        per_iteration = {"compute_s": middle.phase_per_iteration("compute", "max_s"),
                         "sync_s": middle.phase_per_iteration("sync")}
        kernel = results[0].kernel
        per_ranks[ranks] = {"s_per_iter": s_per_iter, "memory": memory, **per_iteration,
                            "kernel": {"name": kernel.name, "setup_s": kernel.setup_s} if kernel else None}
    os.remove(data)
    return rows, per_ranks


def startup_runs(work, repeat, timeout):
    """Median wall seconds of `mpirun -n 2 python -m mpigd` on a tiny problem, 10 iterations."""

    data = os.path.join(work, "tiny.h5")
    generate(data, 1000, 10)
    args = ("--data", data, "--iters", 10, "--tol", 0, "--quiet", "--out", os.path.join(work, "tiny"),
            "--force")
    _mpirun(2, *args, timeout=timeout)  # warm: page cache, .pyc files
    return statistics.median(_mpirun(2, *args, timeout=timeout)[1] for _ in range(repeat))


# ---------------------------------------------------------------- the command

def measure_all(comm, rows_mb, features, dtypes, repeat, comm_iters=2000, train_iters=50,
        skip_runs=False, timeout=900, work_dir=None, generate_rows=0):
    """Collective. Returns the results dict on rank 0 (None elsewhere)."""
    threadpool_limits(limits=1, user_api="blas")  # one core per rank, like the trainer
    rows_bytes = int(rows_mb * 2**20)
    result = {"ranks": comm.size, "rows_mb": rows_mb, "repeat": repeat, "cpus": os.cpu_count(),
              "kernel_env": kernel_setting(None), "numba": numba_available(),
              "kernels": [kernel_case(comm, rows_bytes, d, t, repeat) for t in dtypes for d in features]}
    result["clock_s"] = clock_cost_s(comm)
    reference = [c for c in result["kernels"] if c["features"] == REFERENCE_FEATURES
                 and c["dtype"] == "float64"]
    if reference:  # the trainer's iteration at 1e6 x 100: its best kernel, scaled to 1e6 rows
        c = reference[0]
        best = min(k["seconds"] for k in (c["blas"], c["numba"]) if k)
        result["reference_iteration_s"] = best * REFERENCE_ROWS / c["rows"]
        result["clock_pct"] = 100.0 * result["clock_s"] / result["reference_iteration_s"]
    comm_features = REFERENCE_FEATURES if REFERENCE_FEATURES in features else features[0]
    if comm.size > 1:
        result["comm"] = comm_case(comm, comm_features, comm_iters, repeat)
    elif not skip_runs:
        result["comm"] = _comm_subprocess(comm_features, comm_iters, repeat, timeout)
    if comm.size == 1:  # the load row: mpigd's load vs a plain h5py read, same file
        load_dir = tempfile.mkdtemp(prefix="mpigd-load-", dir=work_dir)
        try:
            result["load"] = load_case(load_dir, rows_bytes, REFERENCE_FEATURES, repeat)
        finally:
            shutil.rmtree(load_dir, ignore_errors=True)
    if comm.size == 1 and not skip_runs:
        work = work_dir or tempfile.mkdtemp(prefix="mpigd-bench-")
        os.makedirs(work, exist_ok=True)
        try:
            ceiling_bytes = rows_bytes // 2  # what each rank reads in the 2-rank run
            one, _ = probe.concurrent_bandwidth(1, ceiling_bytes, REFERENCE_FEATURES, repeat=repeat)
            two, each = probe.concurrent_bandwidth(2, ceiling_bytes, REFERENCE_FEATURES, repeat=repeat)
            rows, runs = trainer_runs(work, rows_bytes, REFERENCE_FEATURES, train_iters, repeat, timeout)
            speedup = runs[1]["s_per_iter"] / runs[2]["s_per_iter"]
            result["scaling"] = {"rows": rows, "features": REFERENCE_FEATURES,
                                 "s_per_iter_1": runs[1]["s_per_iter"], "s_per_iter_2": runs[2]["s_per_iter"],
                                 "speedup": speedup, "bandwidth_1_gb_s": one, "bandwidth_2_gb_s": two,
                                 "bandwidth_2_each_gb_s": each, "ceiling": two / one,
                                 "pct_of_ceiling": 100.0 * speedup / (two / one),
                                 "compute_s_1": runs[1]["compute_s"], "compute_s_2": runs[2]["compute_s"],
                                 "sync_s_2": runs[2]["sync_s"],
                                 "kernel": runs[2]["kernel"]}
            result["memory"] = {"runs": {str(k): v["memory"] for k, v in runs.items()},
                                "factor": RSS_FACTOR, "extra_mb": RSS_EXTRA_MB}
            result["startup_s"] = startup_runs(work, repeat, timeout)
            if generate_rows:
                result["generate"] = generate_case(work, generate_rows, repeat, timeout)
        finally:
            if work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
    return result if comm.rank == 0 else None


def _comm_subprocess(features, iterations, repeat, timeout):
    """The comm part on 2 ranks, for a bench started without mpirun."""
    stdout, _ = _mpirun(2, "bench", "--part", "comm", "--features", features, "--comm-iters",
                      iterations, "--repeat", repeat, "--json", timeout=timeout)
    return json.loads(stdout)["comm"]


def run_comm_only(comm, features, iterations, repeat):
    result = {"ranks": comm.size, "comm": comm_case(comm, features, iterations, repeat)}
    return result if comm.rank == 0 else None


def run_generate_only(work_dir, rows, repeat, timeout=900):
    """`bench --part generate`: the generation rows alone (the bench started without mpirun)."""
    work = tempfile.mkdtemp(prefix="mpigd-bench-", dir=work_dir)
    try:
        case = generate_case(work, rows, repeat, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"ranks": 1, "rows_mb": 0, "repeat": repeat, "cpus": os.cpu_count(),
            "numba": numba_available(), "kernels": [], "generate": case}


def command(args):
    """The `bench` subcommand (arguments already parsed and checked)."""
    comm = MPI.COMM_WORLD
    if args.part == "comm":
        result = run_comm_only(comm, args.features[0], args.comm_iters, args.repeat)
    elif args.part == "generate":
        result = run_generate_only(args.work_dir, args.generate_rows, args.repeat)
    else:
        result = measure_all(comm, args.rows_mb, args.features, args.dtype, args.repeat,
                     comm_iters=args.comm_iters, train_iters=args.train_iters,
                     skip_runs=args.no_runs, work_dir=args.work_dir,
                     generate_rows=args.generate_rows)
    if comm.rank == 0:
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            print(table(result), flush=True)
    sys.stdout.flush()
    return 0
