"""What rank 0 shows and writes: progress, the console summary, and the run directory.

Files of a run directory:
  result.json   the run's numbers (written last and atomically: its presence means the
                run completed)
  history.csv   per iteration: loss, gradient norm, per-phase max-over-ranks seconds
  weights.h5    w (original units), intercept, the config as attributes
"""

import json
import os
import sys
import time

import numpy as np

from .errors import MpigdError
from .timing import PHASES

RESULT = "result.json"


def choose_run_dir(out, force):
    """Create and check the run directory on rank 0, before any data is read.

    Without --out a fresh runs/<timestamp> is made; an explicit directory that already
    holds a result is refused unless --force, and an unwritable one is refused at once.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = os.path.join("runs", stamp)
        suffix = 1
        while os.path.exists(out):
            suffix += 1
            out = os.path.join("runs", f"{stamp}-{suffix}")
    elif os.path.exists(out) and not os.path.isdir(out):
        raise MpigdError(f"--out {out} is a file, not a directory; choose another --out")
    elif os.path.exists(os.path.join(out, RESULT)) and not force:
        raise MpigdError(
            f"{out} already holds a result ({RESULT}); choose another --out or pass --force"
        )
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise MpigdError(f"output directory {out} is not writable ({exc.strerror or exc}); "
                         "choose another --out") from None
    return out


def _atomic_write(path, text):
    partial = f"{path}.partial"
    with open(partial, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def write_history(path, loss, grad_norm, seconds, first_timed=0):
    """One row per gradient pass t: loss and gradient norm at w_t, phase max over ranks.

    In a resumed run the iterations before `first_timed` come from the checkpoint, which
    keeps no timings: their phase columns are empty.
    """
    worst = seconds.max(axis=0)  # iterations x phases
    header = "iteration,loss,grad_norm," + ",".join(f"{p}_max_s" for p in PHASES)
    lines = [header]
    for t in range(len(loss)):
        timed = t - first_timed
        phases = ",".join(f"{v:.9f}" for v in worst[timed]) if timed >= 0 else "," * (len(PHASES) - 1)
        lines.append(f"{t},{loss[t]:.17g},{grad_norm[t]:.17g},{phases}")
    _atomic_write(path, "\n".join(lines) + "\n")


def write_weights(path, w, intercept, config):
    import h5py

    partial = f"{path}.partial"
    with h5py.File(partial, "w") as f:
        f.create_dataset("w", data=w)
        if intercept is not None:
            f.create_dataset("intercept", data=intercept)
        for key, value in config.items():
            f.attrs[key] = "" if value is None else value
    os.replace(partial, path)


def write_result(path, result):
    _atomic_write(path, json.dumps(result, indent=2, default=to_jsonable) + "\n")


class Progress:
    """Rank 0's progress: a live line on a terminal, plain lines in batch logs."""

    def __init__(self, max_iters, enabled, stream=sys.stdout, start=0):
        self.max_iters, self.enabled, self.stream, self.start = max_iters, enabled, stream, start
        self.tty = enabled and stream.isatty()
        self.every = max(1, max_iters // 10)
        self.last = time.monotonic()

    def __call__(self, t, rules):
        if not self.enabled or rules is None:
            return
        now = time.monotonic()
        done = bool(rules.reason)
        if self.tty:
            if done or now - self.last > 0.1:
                self.last = now
                width = 30
                filled = int(width * min(t, self.max_iters) / self.max_iters)
                bar = "#" * filled + "." * (width - filled)
                self.stream.write(f"\r  [{bar}] {t}/{self.max_iters}  loss {rules.loss[t]:.6e}"
                                  + ("\n" if done else ""))
                self.stream.flush()
        elif done or t == self.start or t % self.every == 0 or now - self.last > 30:
            self.last = now
            rel = rules.grad_norm[t] / rules.grad_norm[0] if rules.grad_norm[0] else 0.0
            print(f"  iter {t:>6}/{self.max_iters}  loss {rules.loss[t]:.6e}  |g|/|g0| {rel:.3e}",
                  file=self.stream, flush=True)


def summary(result):
    """The console summary: what ran, how it ended, and where the time went."""
    wall = result["wall_s"]
    lines = [
        "",
        f"mpigd {result['version']}: {result['ranks']} ranks ({result['workers']} workers), "
        f"{result['rows']} rows x {result['features']} features, {result['dtype']}",
        f"  stopped: {result['stop_reason']} after {result['iterations']} iterations "
        f"({result['evaluations']} gradient passes), lr {result['lr']:.6g}",
        f"  final loss {result['final_loss']:.9e}   |g|/|g0| {result['grad_norm_rel']:.3e}",
        f"  load {result['load_s']:.3f} s   train {wall:.3f} s   "
        f"{1e3 * result['s_per_iter']:.3f} ms/iteration",
        "",
        f"  {'phase':<8} {'mean s':>10} {'max s':>10} {'% wall':>7}",
    ]
    for name in PHASES:
        stats = result["phases"][name]
        share = 100 * stats["mean_s"] / wall if wall > 0 else 0.0
        lines.append(f"  {name:<8} {stats['mean_s']:>10.4f} {stats['max_s']:>10.4f} {share:>6.1f}%")
    lines.append(f"  imbalance (max/mean compute): {result['imbalance']:.3f}")
    return "\n".join(lines)


def to_jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
