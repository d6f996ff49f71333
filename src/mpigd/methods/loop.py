"""The one loop every method runs: Broadcast -> Map -> Reduce -> Update, in either mode.

A method (momentum.py, cg.py, sgd.py) says what point to broadcast and which map to run
on it ("kind": the gradient at a point, X^T X p for a direction, a mini-batch gradient),
and how to update from the reduced sums; this loop moves the buffers and times them the
way solver.py does (same PhaseClock phases, same StopRules, same on_iteration hook).

    Bcast [x, control, kind, aux]   (server mode only; d + 3 doubles)
    map   packed = [vector, loss, stop]  over this rank's rows
    Reduce / Allreduce (SUM) of packed  (d + 2 doubles)
    update on the server (server mode) or on every rank (allreduce: the same sums
           everywhere, so the same decisions everywhere)
"""

import time

import numpy as np
from mpi4py import MPI

from .. import progress
from ..config import Mode
from ..signals import StopRequest
from ..solver import CONTINUE, Outcome, StopRules, Trajectory
from ..timing import PhaseClock


def run(comm, shard, method, rules: StopRules, mode: Mode, straggle_s: float = 0.0,
        stop: StopRequest | None = None, on_iteration=None) -> Trajectory:
    """Collective: iterate `method` until its update returns an Outcome."""
    d, server = method.d, mode is Mode.SERVER
    updates = comm.rank == 0 or not server  # who holds the method's state and decides
    stop = stop or StopRequest()
    xbuf = np.zeros(d + 3)                      # [point, control, kind, aux]: Bcast payload
    packed = np.zeros(d + 2)                    # [vector_k, loss_k, stop_k]: Reduce payload
    total = np.zeros(d + 2) if updates else None
    if updates:
        method.next_point(xbuf)
    clock = PhaseClock(rules.max_iters + 1 - rules.start, comm)
    now = time.perf_counter_ns
    started = t0 = now()
    t = rules.start
    while True:
        t0 = now()
        if server:
            comm.Bcast(xbuf, root=0)                         # 1. Broadcast the point
        t1 = now()
        if xbuf[d] != CONTINUE:
            break
        progress.STATE[progress.PHASE] = progress.MAPPING    # for the stall watchdog: ~20 ns
        method.map(shard, int(xbuf[d + 1]), xbuf[:d], xbuf[d + 2], packed)  # 2. Map
        packed[d + 1] = stop.raised
        if straggle_s:  # seconds, or a faults.Jitter drawing them per iteration
            time.sleep(straggle_s() if callable(straggle_s) else straggle_s)
        progress.STATE[progress.PHASE] = progress.WAITING
        t2 = now()
        comm.Barrier()                                       #    wait for the slowest (sync)
        t3 = now()
        if server:                                           # 3. Reduce the sums
            comm.Reduce(packed, total, op=MPI.SUM, root=0)
        else:
            comm.Allreduce(packed, total, op=MPI.SUM)
        t4 = now()
        if updates:                                          # 4. Update (and the next point)
            outcome = method.update(t, int(xbuf[d + 1]), total, rules)
            xbuf[d] = CONTINUE if outcome is None else float(outcome)
            if outcome is None:
                method.next_point(xbuf)
        t5 = now()
        clock.record(t0, t2 - t1, t1 - t0, t4 - t3, t5 - t4 if updates else 0, t3 - t2)
        if on_iteration is not None:
            on_iteration(t, method.w)
        t += 1
        if not server and xbuf[d] != CONTINUE:
            break
    w = method.w.copy() if updates else np.zeros(d)
    if server:
        comm.Bcast(w, root=0)  # the final w on every rank, as gradient_descent returns it
    return Trajectory(w=w, outcome=Outcome(int(xbuf[d])), rules=rules, clock=clock,
                      wall_s=(t0 - started) * 1e-9)
