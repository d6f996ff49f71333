"""The MPI layer: collective agreement on errors, and aborting the whole job.

Only buffer-based (uppercase) mpi4py calls are used: no pickling on any path.
"""

from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from .errors import MpigdError

MESSAGE_BYTES = 4096


def agree(comm, error):
    """Collective. If any rank passes an error message, every rank raises it.

    The lowest failing rank's message wins, prefixed with its rank, so a failure seen
    by one rank (a file it cannot open, a NaN in its rows) ends all ranks together with
    one message instead of leaving the others blocked in the next collective.
    """
    mine = np.array([comm.rank if error is not None else comm.size], dtype=np.int64)
    first = np.empty(1, dtype=np.int64)
    comm.Allreduce(mine, first, op=MPI.MIN)
    failing = int(first[0])
    if failing == comm.size:
        return
    buffer = np.zeros(MESSAGE_BYTES, dtype=np.uint8)
    if comm.rank == failing:
        text = str(error).encode("utf-8", "replace")[: MESSAGE_BYTES - 1]
        buffer[: len(text)] = np.frombuffer(text, dtype=np.uint8)
    comm.Bcast(buffer, root=failing)
    text = bytes(buffer[: int(np.argmin(buffer))]).decode("utf-8", "replace")
    where = f"rank {failing}: " if comm.size > 1 else ""
    raise MpigdError(where + text, collective=True)


@contextmanager
def agreed(comm, doing):
    """Run a block that may fail on some ranks only; afterwards all ranks agree.

    Usage: `with agreed(comm, "reading the data"): ...`. Every rank must enter it.
    """
    error = None
    try:
        yield
    except MpigdError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure here must be agreed, not hang
        error = f"{doing} failed: {type(exc).__name__}: {exc}"
    agree(comm, error)


def abort(code):
    """End every rank of the job now (used for unexpected errors on one rank)."""
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.COMM_WORLD.Abort(code)
