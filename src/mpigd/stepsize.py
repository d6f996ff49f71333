"""The step size: 1/lambda_max(X^T X) by distributed power iteration, or the user's number.

`StepSize` is the value that a run, its checkpoint and its result carry: the step, how it
was found, and (for --lr auto) the estimate and the passes it took.
"""

import math
import time
from dataclasses import dataclass

import numpy as np

from . import faults, progress
from .errors import MpigdError


@dataclass(frozen=True)
class StepSize:
    lr: float
    lambda_max: float | None = None       # --lr auto: the Rayleigh quotient reached
    power_iterations: int | None = None   # --lr auto: Bcast/Reduce passes it took

    @property
    def mode(self) -> str:
        """'auto' (estimated here) or 'fixed' (the user's --lr)."""
        return "auto" if self.lambda_max is not None else "fixed"


def choose(comm, shard, features: int, lr: "float | str", seed: int) -> StepSize:
    """Collective: the user's --lr, or 1/lambda_max estimated over every rank's rows."""
    if lr != "auto":
        return StepSize(lr=float(lr))
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite lmax is reported
        lmax, passes = estimate_lmax(comm, shard, features, seed=seed)
    if not lmax > 0:
        raise MpigdError("X^T X is zero (all features are zero after preprocessing); "
                         "nothing to fit", collective=True)
    return StepSize(lr=1.0 / lmax, lambda_max=lmax, power_iterations=passes)


def estimate_lmax(comm, shard, d: int, seed: int = 0, rtol: float = 1e-4,
                  max_steps: int = 200) -> tuple[float, int]:
    """Largest eigenvalue of X^T X by distributed power iteration (same Bcast/Reduce).

    Returns the Rayleigh quotient v^T X^T X v of the unit iterate, a lower bound on
    lambda_max that converges from below; valid on every rank. Raises (on every rank)
    when X^T X v overflows the shard's dtype: no step size can be derived then.
    """
    from mpi4py import MPI  # here: StepSize (in checkpoints) is read without starting MPI

    root = comm.rank == 0
    vbuf = np.zeros(d + 1)
    local = np.zeros(d)
    total = np.zeros(d) if root else None
    v = vbuf[:d]
    if root:
        v[:] = np.random.default_rng(seed).standard_normal(d)
        v /= np.linalg.norm(v)
    estimate, steps = 0.0, 0
    hang = faults.planned(comm.rank)  # MPIGD_INJECT_FAULT=RANK:power:STEP hangs that pass
    hang = hang[1] if hang and hang[0] == "power" else -1
    progress.enter(progress.POWER)
    while True:
        comm.Bcast(vbuf, root=0)
        if vbuf[d] != 0.0:  # the server's stop flag
            break
        progress.STATE[progress.PHASE] = progress.MAPPING
        shard.normal_product(v, local)
        if steps == hang:
            time.sleep(3600)  # a rank stuck in its map step, for the watchdog's tests
        progress.STATE[progress.PHASE] = progress.WAITING
        comm.Reduce(local, total, op=MPI.SUM, root=0)
        steps += 1
        progress.step(steps)
        if root:
            previous, estimate = estimate, float(np.dot(v, total))
            norm = float(np.linalg.norm(total))
            done = (norm == 0.0 or steps >= max_steps or not math.isfinite(norm)
                    or abs(estimate - previous) <= rtol * estimate)
            if norm > 0.0 and math.isfinite(norm):
                v[:] = total / norm
            vbuf[d] = 1.0 if done else 0.0
    result = np.array([estimate])
    comm.Bcast(result, root=0)
    if not math.isfinite(result[0]):
        dtype = getattr(getattr(shard, "X", None), "dtype", "the compute dtype's")
        raise MpigdError(
            f"--lr auto: lambda_max(X^T X) is not finite ({result[0]}): the data's values are "
            f"too large for {dtype} arithmetic; use --dtype float64 or --standardize "
            "(or rescale the data)", collective=True)
    return float(result[0]), steps
