"""Checkpoints: where a run stood, saved so that a crash loses at most a few iterations.

A checkpoint holds w_t, the iteration t to continue from, the history before t, the step
size, the run's config and a fingerprint of the data. It is written atomically: a
temporary file is written, flushed and fsynced, then renamed over the old one (and the
directory fsynced), so the file on disk is always either the old or the new checkpoint,
never a torn one.

Resuming with the same rank count reproduces the uninterrupted run bitwise: the
gradient at w_t depends only on w_t, the data and the partition.
"""

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from . import __version__, progress, rundir
from .errors import MpigdError
from .stepsize import StepSize

FILE = rundir.CHECKPOINT

# Position weights for the data checksum: an odd 64-bit constant (the golden ratio's) makes
# swapped or shifted values change the sum.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BLOCK_VALUES = 1 << 16  # 512 KB temporaries per block, whatever the shard size


def _weighted_sum(values, first_index):
    """sum(bits(v_i) * (first_index + i + 1) * GOLDEN) mod 2^64 over a flat array."""
    bits = values.view(np.uint32 if values.itemsize == 4 else np.uint64)
    total = np.uint64(0)
    with np.errstate(over="ignore"):
        for lo in range(0, bits.size, _BLOCK_VALUES):
            part = bits[lo : lo + _BLOCK_VALUES].astype(np.uint64)  # one block at a time
            index = np.arange(first_index + lo + 1, first_index + lo + 1 + part.size, dtype=np.uint64)
            total += np.sum(part * (index * _GOLDEN), dtype=np.uint64)
    return total


def data_checksum(comm, X: np.ndarray, y: np.ndarray, first_row: int, local: int | None = None) -> int:
    """Collective. A 64-bit checksum of the data as loaded, independent of the partition.

    Integer addition modulo 2^64 is associative, so any split of the rows over any number
    of ranks gives the same value. `local` is this rank's part when the load already
    computed it (data.load_shard, in the same pass as the read); else one pass here.
    """
    if local is None:
        d = X.shape[1]
        with np.errstate(over="ignore"):
            local = int(_weighted_sum(np.ascontiguousarray(X).reshape(-1), first_row * d)
                        + _weighted_sum(np.ascontiguousarray(y), first_row) * np.uint64(3))
    mine = np.array([local], dtype=np.uint64)
    from mpi4py import MPI  # here: reading a checkpoint (tests, --resume checks) needs no MPI

    total = np.zeros(1, dtype=np.uint64)
    comm.Allreduce(mine, total, op=MPI.SUM)
    return int(total[0])


@dataclass
class Checkpoint:
    iteration: int           # the next iteration to run: w is w_iteration
    w: np.ndarray            # in training units (after --standardize / --intercept)
    loss: np.ndarray         # history of iterations 0 .. iteration-1
    grad_norm: np.ndarray
    step: StepSize
    config: dict
    fingerprint: dict        # rows, features, dtype, checksum
    ranks: int
    method_state: dict | None = None  # --method momentum/cg/sgd: their vectors and counters


def save(run_dir: str, state: Checkpoint) -> str:
    """Atomically write `state` to run_dir/checkpoint.h5."""
    import h5py

    def write(partial):
        with h5py.File(partial, "w") as f:
            f.create_dataset("w", data=state.w)
            f.create_dataset("loss", data=state.loss)
            f.create_dataset("grad_norm", data=state.grad_norm)
            f.attrs["iteration"] = state.iteration
            if state.method_state:
                group = f.create_group("method")
                for name, value in state.method_state.items():
                    group.create_dataset(name, data=value)
            f.attrs["lr"] = state.step.lr
            f.attrs["meta"] = json.dumps({
                "version": __version__, "lambda_max": state.step.lambda_max,
                "power_iterations": state.step.power_iterations, "config": state.config,
                "fingerprint": state.fingerprint, "ranks": state.ranks,
            })

    return rundir.atomic_write(os.path.join(run_dir, FILE), write)


@dataclass
class Saver:
    """Rank 0's checkpoints of one run: what they all share, and how many were written."""

    run_dir: str
    step: StepSize
    config: dict
    fingerprint: dict
    ranks: int
    every: int                 # --checkpoint-every; 0 = only on SIGTERM
    method_state: object = None  # a callable giving the method's state (methods.state_of)
    count: int = 0
    seconds: float = 0.0

    def due(self, t: int) -> bool:
        """True after iteration t when a periodic checkpoint is asked for."""
        return bool(self.every) and (t + 1) % self.every == 0

    def save(self, iteration: int, w: np.ndarray, loss: np.ndarray, grad_norm: np.ndarray) -> str:
        """Write w_iteration and the history before it; counted and timed for result.json."""
        began = time.perf_counter()
        stage = progress.STATE[progress.STAGE]
        progress.enter(progress.SAVING, iteration)  # the watchdog waits longer meanwhile
        try:
            path = save(self.run_dir, Checkpoint(
                iteration=iteration, w=w.copy(), loss=loss, grad_norm=grad_norm, step=self.step,
                config=self.config, fingerprint=self.fingerprint, ranks=self.ranks,
                method_state=self.method_state() if self.method_state else None))
        finally:
            progress.enter(stage, iteration)
        progress.saved(iteration)
        self.count += 1
        self.seconds += time.perf_counter() - began
        return path


def load(run_dir: str) -> Checkpoint:
    """Read run_dir/checkpoint.h5, with a message saying what to do when it is not there."""
    import h5py

    path = os.path.join(run_dir, FILE)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(run_dir, rundir.RESULT)):
            raise MpigdError(f"{run_dir} holds a finished run (result.json) and no checkpoint; "
                             "nothing to resume")
        raise MpigdError(f"no checkpoint in {run_dir} ({FILE} missing); a run writes one with "
                         "--checkpoint-every K, or when it receives SIGTERM")
    try:
        with h5py.File(path, "r") as f:
            meta = json.loads(f.attrs["meta"])
            return Checkpoint(
                iteration=int(f.attrs["iteration"]), w=f["w"][()], loss=f["loss"][()],
                grad_norm=f["grad_norm"][()],
                step=StepSize(lr=float(f.attrs["lr"]), lambda_max=meta["lambda_max"],
                              power_iterations=meta["power_iterations"]),
                config=meta["config"], fingerprint=meta["fingerprint"], ranks=meta["ranks"],
                method_state={name: v[()] for name, v in f["method"].items()} if "method" in f else None,
            )
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise MpigdError(f"cannot read checkpoint {path} ({exc}); it is damaged or not an mpigd "
                         "checkpoint: start a new run (another --out, or delete it)") from None


def check_fingerprint(saved: dict, current: dict, run_dir: str) -> None:
    """Refuse to resume on data other than the data the checkpoint was made from.

    Collective: both fingerprints are the same on every rank, so every rank raises.
    """
    for key, what in (("features", "features"), ("rows", "rows"), ("dtype", "compute dtype")):
        if saved.get(key) != current.get(key):
            raise MpigdError(
                f"cannot resume {run_dir}: its checkpoint was made from data with {what} "
                f"{saved.get(key)}, but the data now has {current.get(key)}; resume with the "
                "same data, or start a new run", collective=True)
    if saved.get("checksum") != current.get("checksum"):
        # Same shape and dtype, other values: say so plainly; the checksums only identify them.
        raise MpigdError(
            f"cannot resume {run_dir}: the data has the same shape and dtype as when the "
            "checkpoint was made, but other values (content checksum "
            f"{saved.get('checksum')} then, {current.get('checksum')} now): was the file "
            "regenerated or edited? Resume with the original data, or start a new run",
            collective=True)
