"""`python -m mpigd` and the `mpigd` console script.

Unlike `python -m mpi4py`, a plain `python -m mpigd` gets no abort-on-exception from
mpi4py: a rank that raises or exits non-zero would leave the others blocked in their
next collective forever. This entry point gives the same guarantee itself:

* errors every rank agreed on (MpigdError with collective=True, and argument errors,
  which every rank hits alike) are printed once by rank 0 and all ranks exit with 2,
  none before rank 0 has written the line;
* anything else on any rank — an unexpected exception, a non-zero sys.exit, Ctrl-C —
  is reported by that rank and ends the whole job through MPI_Abort;
* MPI_Init itself gets a deadline (mpistart.py), the one wait no watchdog can see.
"""

import os
import sys
import time
import traceback

from . import faults, mpistart
from .cli import main as cli_main
from .errors import ExitCode, MpigdError, launcher_size, world_rank, world_size


# Between a rank's last message and MPI_Abort: the launcher forwards the rank's output from
# a pipe, and an abort right after the write once cut a traceback off mid-way (CI, 3 ranks).
_FORWARD_GRACE_S = 0.2

# How long a rank that hit an agreed error waits for the others to reach it too. They get
# there together (same arguments, same agreed error), so this bounds only a broken case.
_SAME_ERROR_WAIT_S = 10.0


def _abort_job(code: int) -> int:
    if world_size() > 1:
        sys.stderr.flush()
        sys.stdout.flush()
        time.sleep(_FORWARD_GRACE_S)
        from .comm import abort

        abort(code)
    return code


def _report(text: str) -> None:
    """Write `text` to stderr in one write: the launcher then gets it whole or not at all,
    never interleaved with another rank's lines or cut between two of its own."""
    sys.stderr.flush()
    data = text.encode(errors="replace")
    while data:
        data = data[os.write(2, data):]


def _say_once(message: str, code: int) -> int:
    """Rank 0 reports an error every rank hit; the others stay silent. No rank exits first.

    Open MPI ends the whole job at the first non-zero exit: a silent rank that left at once
    took rank 0's only line with it (CI, 3 ranks, --iters 0). So every rank waits until
    rank 0 has written it; an argument error, found before MPI is up, starts MPI for that.
    """
    if world_rank() == 0:
        faults.slow_report(0)  # MPIGD_INJECT_FAULT=0:report (tests)
        _report(message + "\n")
    if launcher_size() > 1 and not _all_ranks_reached_it():
        return _abort_job(code)
    return code


def _all_ranks_reached_it() -> bool:
    try:
        from mpi4py import MPI

        from .comm import barrier_within
    except ImportError:  # no MPI here, so no job for a rank to end early
        return True
    return barrier_within(MPI.COMM_WORLD, _SAME_ERROR_WAIT_S)


def guarded_main(argv: list[str] | None = None) -> int:
    try:
        mpistart.install()
        return cli_main(argv)
    except MpigdError as exc:
        if exc.collective or world_size() == 1:
            return _say_once(f"mpigd: error: {exc}", exc.exit_code)
        print(f"mpigd: error on rank {world_rank()}: {exc}", file=sys.stderr, flush=True)
        return _abort_job(exc.exit_code)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code if code == 0 else _abort_job(code)
    except BrokenPipeError:
        # `mpigd ... | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"mpigd: interrupted on rank {world_rank()}", file=sys.stderr, flush=True)
        return _abort_job(130)
    except BaseException:  # noqa: BLE001 - a bug on one rank must not hang the others
        _report(f"mpigd: unexpected error on rank {world_rank()} (this is a bug in mpigd or "
                "its environment; the job is being aborted):\n" + traceback.format_exc())
        return _abort_job(ExitCode.BUG)


def main(argv: list[str] | None = None) -> None:
    sys.exit(guarded_main(argv))


if __name__ == "__main__":
    main()
