"""An MPI ping-pong between rank 0 and every other rank, one at a time (run under mpiexec).

    mpiexec -n 2 python -m mpigd.cluster.pingpong [--sizes 8,1048576] [--repeat 50]

Rank 0 prints one JSON line: per partner rank and message size, the one-way time
(round trip / 2) in ms — median, min, max over --repeat timed round trips after warm-ups —
and the partner's host name. Buffer (uppercase) calls only.
"""

import argparse
import json
import socket
import statistics
import sys
import time

import numpy as np

WARMUP = 5


def _round_trips(comm, partner, buffer, repeat):
    """One-way times (s) of `repeat` round trips with `partner` (on rank 0), or []."""
    rank, times = comm.Get_rank(), []
    for i in range(WARMUP + repeat):
        if rank == 0:
            started = time.perf_counter()
            comm.Send(buffer, dest=partner, tag=7)
            comm.Recv(buffer, source=partner, tag=7)
            if i >= WARMUP:
                times.append((time.perf_counter() - started) / 2)
        elif rank == partner:
            comm.Recv(buffer, source=0, tag=7)
            comm.Send(buffer, dest=0, tag=7)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpigd.cluster.pingpong")
    parser.add_argument("--sizes", default="8", help="message sizes in bytes, comma-separated [8]")
    parser.add_argument("--repeat", type=int, default=50, help="timed round trips per size [50]")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    name = np.frombuffer(socket.gethostname().encode()[:64].ljust(64, b"\0"), dtype=np.uint8).copy()
    names = np.zeros((comm.Get_size(), 64), dtype=np.uint8)
    comm.Gather(name, names, root=0)
    results = []
    for partner in range(1, comm.Get_size()):
        for size in sizes:
            buffer = np.zeros(max(size, 1), dtype=np.uint8)
            comm.Barrier()
            times = _round_trips(comm, partner, buffer, args.repeat)
            if comm.Get_rank() == 0:
                results.append({
                    "partner": partner, "host": bytes(names[partner]).rstrip(b"\0").decode(),
                    "bytes": size, "median_ms": 1e3 * statistics.median(times),
                    "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)})
    if comm.Get_rank() == 0:
        print(json.dumps({"host": socket.gethostname(), "pingpong": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
