"""Read-bandwidth probe: how fast one core streams a shard from memory, alone or with others.

The floor of one iteration on one rank is reading its shard once. Two one-thread reads of
X, each touching every element exactly once, probe it: `X @ w` (BLAS) and a bitwise OR
of all its words (numpy's bitwise_or.reduce over X's bytes as unsigned integers of X's
item size: no floating point, so nothing but the read to wait for); the faster one is the
floor, and nbytes / time the bandwidth the kernel is judged against. Either alone can miss
the floor: on AMD Zen 4 with OpenBLAS, `X @ w` read at 10-20 GB/s, the OR at 26-30, and
a float sum (add.reduce) of float32 at 20-24.

Two ranks on a node share the memory system, so their ceiling for a memory-bound loop
is not 2x: `concurrent_bandwidth` starts P plain processes (no MPI), lets each allocate
and warm up its own array, releases them at once through their stdin, and sums what they
read. `python -m mpigd.studies.probe` is one such process.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def fill_random(X, seed=0):
    """Fill X in place (no temporary of X's size), with values of X's dtype."""
    rng = np.random.default_rng(seed)
    flat = X.reshape(-1)
    step = 1 << 22
    for lo in range(0, flat.size, step):
        part = flat[lo : lo + step]
        rng.standard_normal(part.size, dtype=part.dtype, out=part)
    return X


def median_seconds(fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_seconds(timed: dict, rounds: int) -> dict:
    """{name: [seconds per round]} of the functions in `timed`, called in turn, `rounds`
    times: a load that comes and goes (other jobs on the machine) then hits all of them
    alike, and their ratios stay fair. Results are dropped at once, so every call starts
    from the same memory state. The caller warms them up first."""
    seconds = {name: [] for name in timed}
    for _ in range(rounds):
        for name, fn in timed.items():
            started = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - started)
    return seconds


# The probes of `reads`, by what the bench's table calls them.
LABELS = {"dot": "X@w", "or": "OR"}


def reads(X) -> dict:
    """The probes over X (C-contiguous), as functions, keyed as LABELS: "dot" (X @ w) and
    "or" (the OR of its words)."""
    w = np.full(X.shape[1], 0.5, dtype=X.dtype)
    out = np.empty(X.shape[0], dtype=X.dtype)
    words = X.reshape(-1).view(f"u{X.itemsize}")
    return {"dot": lambda: np.dot(X, w, out=out), "or": lambda: np.bitwise_or.reduce(words)}


def read_seconds(X, repeat):
    """The read floor of one pass over X: the faster probe's median seconds."""
    return min(median_seconds(fn, repeat) for fn in reads(X).values())


def _worker(nbytes, features, dtype, repeat):
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    itemsize = np.dtype(dtype).itemsize
    X = fill_random(np.empty((max(1, nbytes // (features * itemsize)), features), dtype=dtype))
    read_seconds(X, 1)                                  # warm: pages touched, BLAS loaded
    print("ready", flush=True)
    sys.stdin.readline()                                # everyone starts together
    seconds = read_seconds(X, repeat)
    print(json.dumps({"seconds": seconds, "bytes": X.nbytes, "gb_s": X.nbytes / seconds / 1e9}),
          flush=True)


def concurrent_bandwidth(processes, nbytes, features=100, dtype="float64", repeat=5, timeout=600):
    """Total GB/s of `processes` processes each streaming its own `nbytes` array at once."""
    argv = [sys.executable, "-m", "mpigd.studies.probe", str(nbytes), str(features), dtype, str(repeat)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a bandwidth probe process failed to start")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sum(r["gb_s"] for r in results), [r["gb_s"] for r in results]


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
