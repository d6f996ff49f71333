"""The MPI layer: collective agreement on errors, text through buffers, aborting the job.

Only buffer-based (uppercase) mpi4py calls are used: no pickling on any path. Text
(an error message, a host name) travels as a zero-padded uint8 buffer.
"""

import time
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from .errors import ExitCode, MpigdError

MESSAGE_BYTES = 4096
HOST_BYTES = 64


def _encode(text: str, width: int) -> np.ndarray:
    buffer = np.zeros(width, dtype=np.uint8)
    raw = text.encode("utf-8", "replace")[: width - 1]
    buffer[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return buffer


def _decode(buffer: np.ndarray) -> str:
    end = int(np.argmin(buffer)) if (buffer == 0).any() else buffer.size
    return bytes(buffer[:end]).decode("utf-8", "replace")


def gather_text(comm, text: str, width: int = HOST_BYTES) -> list[str] | None:
    """Collective: every rank's `text` (cut to width-1 bytes), in rank order, on rank 0."""
    table = np.empty((comm.size, width), dtype=np.uint8) if comm.rank == 0 else None
    comm.Gather(_encode(text, width), table, root=0)
    return None if table is None else [_decode(row) for row in table]


def agree(comm, error: str | None, exit_code: int = ExitCode.USAGE) -> None:
    """Collective. If any rank passes an error message, every rank raises it.

    The lowest failing rank's message (and exit code) wins, prefixed with its rank, so a
    failure seen by one rank (a file it cannot open, a NaN in its rows) ends all ranks
    together with one message instead of leaving the others blocked in the next collective.
    """
    mine = np.array([comm.rank if error is not None else comm.size], dtype=np.int64)
    first = np.empty(1, dtype=np.int64)
    comm.Allreduce(mine, first, op=MPI.MIN)
    failing = int(first[0])
    if failing == comm.size:
        return
    buffer = _encode(str(error), MESSAGE_BYTES) if comm.rank == failing else \
        np.zeros(MESSAGE_BYTES, dtype=np.uint8)
    code = np.array([exit_code], dtype=np.int64)
    comm.Bcast(buffer, root=failing)
    comm.Bcast(code, root=failing)
    where = f"rank {failing}: " if comm.size > 1 else ""
    raise MpigdError(where + _decode(buffer), collective=True, exit_code=int(code[0]))


@contextmanager
def agreed(comm, doing: str):
    """Run a block that may fail on some ranks only; afterwards all ranks agree.

    Usage: `with agreed(comm, "reading the data"): ...`. Every rank must enter it.
    """
    error, code = None, ExitCode.USAGE
    try:
        yield
    except MpigdError as exc:
        error, code = str(exc), exc.exit_code
    except Exception as exc:  # noqa: BLE001 - any failure here must be agreed, not hang
        error = f"{doing} failed: {type(exc).__name__}: {exc}"
    agree(comm, error, code)


def barrier_within(comm, seconds: float) -> bool:
    """A barrier that gives up after `seconds`: False if some rank never came.

    For exit paths only, where every rank should be at the same point but a wait that never
    ends would be worse than the message it protects.
    """
    request = comm.Ibarrier()
    deadline = time.monotonic() + seconds
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def abort(code: int) -> None:
    """End every rank of the job now (used for unexpected errors on one rank)."""
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.COMM_WORLD.Abort(code)
