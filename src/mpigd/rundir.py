"""The run directory: its file names, the one way files are written, and its tables.

A run directory holds (rank 0 writes them):
  result.json           the run's numbers (result.Result); written last, so its presence
                        means the run completed
  history.csv           per gradient pass: loss, gradient norm, per-phase max over ranks
  history-diverged.csv  the same, when the run diverged (then there is no result.json)
  weights.h5            w in original units, the intercept, the config as attributes
  trace.json            the phases of every rank on one timeline (--trace)
  checkpoint.h5         where an unfinished run stood (checkpoint.py)
  stalled.txt           the stall watchdog's message, if it ended the run (watchdog.py)

A sweep directory (mpigd.studies) holds sweep.json, comm_model.json and the scaling
report files next to one run directory per run.

Every file is written through `atomic_write`: under a temporary name in the same
directory, flushed and fsynced, renamed over the target, and the directory fsynced, so a
reader (or a crash) sees the old file or the new one, never a torn one.
"""

import csv
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from . import diskfull
from .errors import MpigdError

RESULT = "result.json"
HISTORY = "history.csv"
HISTORY_DIVERGED = "history-diverged.csv"
WEIGHTS = "weights.h5"
TRACE = "trace.json"
CHECKPOINT = "checkpoint.h5"
STALLED = "stalled.txt"  # the stall watchdog's message, when it ended the run

SWEEP = "sweep.json"
MODEL = "comm_model.json"
REPORT_FILES = ("scaling.csv", "scaling.json", "scaling.txt")


def fsync_path(path: str) -> None:
    """Flush a file's (or a directory's) data to disk: what makes a rename durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def start_writeback(path: str) -> None:
    """Ask Linux to start writing `path`'s dirty pages to disk now, without waiting for it.

    Called by the generator after every block, so that the disk works while the next block
    is computed and the fsync of `atomic_write` finds little left (3e6 x 40 here, medians of
    6 interleaved rounds: -n 1 2.76 -> 2.34 s, -n 2 1.96 -> 1.65 s). Only a hint: elsewhere,
    or if the call fails, the fsync does all the writing as before.
    """
    if _sync_file_range is None:
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        _sync_file_range(descriptor, 0, 0, _SYNC_FILE_RANGE_WRITE)  # 0, 0: the whole file
    finally:
        os.close(descriptor)


def drop_cached_pages(path: str) -> None:
    """Ask the kernel to drop `path`'s clean pages from the page cache (a hint; nothing if
    `path` is absent or the call is missing). Dirty pages stay; the file is unchanged.

    For a file about to be replaced: its pages are of no more use, and freed now they are the
    ones the new file's pages reuse, instead of both files' pages held at once until the
    rename. On this VM freed memory goes back to the host at once (free page reporting) and
    costs 1.5-2.5 s per GiB to touch again, so reusing the old file's pages matters:
    generating 3e6 x 40 over its own earlier file took 3.9-4.4 s with one rank, 2.3-2.6 s
    with the old file's pages dropped first (2 ranks: 2.4-2.6 s, 1.5-1.6 s).
    """
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def _libc_sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages, do not wait
_sync_file_range = _libc_sync_file_range()


def atomic_write(path: str, write: Callable[[str], None], size: int = 0) -> str:
    """Create `path` atomically: `write(partial_path)` fills a temporary file, then rename.

    The temporary file is removed if anything fails (including KeyboardInterrupt), so no
    half-written file is ever left under either name.
    """
    directory = os.path.dirname(os.path.abspath(path))
    partial = f"{path}.partial-{os.getpid()}"
    try:
        write(partial)
        fsync_path(partial)
        os.replace(partial, path)
        fsync_path(directory)  # make the rename itself durable
    except BaseException as exc:
        failure = None if isinstance(exc, MpigdError) else diskfull.reason(exc)
        problem = diskfull.error(exc, path, partial, CHECKPOINT, size) if failure else None
        if os.path.exists(partial):
            os.remove(partial)
        if problem is not None:
            raise problem from None
        raise
    return path


def write_text(path: str, text: str) -> str:
    """Write a text file atomically."""
    def write(partial):
        with open(partial, "w", newline="") as handle:
            handle.write(text)

    return atomic_write(path, write, len(text.encode()))


def write_json(path: str, payload, default: Callable | None = None) -> str:
    """Write `payload` as indented JSON, atomically."""
    return write_text(path, json.dumps(payload, indent=2, default=default) + "\n")


def check_writable(directory: str, what: str) -> None:
    """Create `directory` and prove a file can be written there, or say why not."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise MpigdError(f"{what} {directory} is not writable ({exc.strerror or exc}); "
                         "choose another --out") from None


def choose_run_dir(out: str | None, force: bool) -> str:
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
    check_writable(out, "output directory")
    return out


def write_history(path: str, loss: np.ndarray, grad_norm: np.ndarray, seconds: np.ndarray,
                  phases: tuple[str, ...], first_timed: int = 0,
                  extra: "dict[str, np.ndarray] | None" = None) -> str:
    """One row per gradient pass t: loss and gradient norm at w_t, phase max over ranks.

    In a resumed run the iterations before `first_timed` come from the checkpoint, which
    keeps no timings: their phase columns are empty. `extra` columns follow (held-out
    loss, distance to w*); a NaN there is an empty cell (not evaluated at that iteration).
    """
    worst = seconds.max(axis=0)  # iterations x phases
    extra = extra or {}
    lines = ["iteration,loss,grad_norm," + ",".join([f"{p}_max_s" for p in phases] + list(extra))]
    for t in range(len(loss)):
        timed = t - first_timed
        cells = ",".join(f"{v:.9f}" for v in worst[timed]) if timed >= 0 else "," * (len(phases) - 1)
        more = "".join("," + (f"{v[t]:.17g}" if np.isfinite(v[t]) else "") for v in extra.values())
        lines.append(f"{t},{loss[t]:.17g},{grad_norm[t]:.17g},{cells}{more}")
    return write_text(path, "\n".join(lines) + "\n")


def read_history(run_dir: str) -> list[dict[str, str]]:
    """The rows of a run's history.csv as dicts of strings (OSError if it is missing)."""
    with open(os.path.join(run_dir, HISTORY), newline="") as handle:
        return list(csv.DictReader(handle))


def history_mean(run_dir: str, column: str) -> float | None:
    """Mean of one numeric column of history.csv; None if absent or unreadable."""
    try:
        values = [float(row[column]) for row in read_history(run_dir)]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return sum(values) / len(values) if values else None


def write_weights(path: str, w: np.ndarray, intercept: float | None, config: dict,
                  names: "list[str] | None" = None, encoding: "str | None" = None) -> str:
    """weights.h5: w (original units), the intercept if fitted, the config as attributes;
    `feature_names` (one per weight) and the import's `encoding` (for predict) if known."""
    import h5py

    def write(partial):
        with h5py.File(partial, "w") as f:
            f.create_dataset("w", data=w)
            if names is not None:
                f.create_dataset("feature_names", data=names, dtype=h5py.string_dtype())
            if encoding is not None:
                f.attrs["encoding"] = encoding
            if intercept is not None:
                f.create_dataset("intercept", data=intercept)
            for key, value in config.items():
                f.attrs[key] = "" if value is None else value

    return atomic_write(path, write)
