"""`python -m mpigd` and the `mpigd` console script.

Unlike `python -m mpi4py`, a plain `python -m mpigd` gets no abort-on-exception from
mpi4py: a rank that raises or exits non-zero would leave the others blocked in their
next collective forever. This entry point gives the same guarantee itself:

* errors every rank agreed on (MpigdError with collective=True, and argument errors,
  which every rank hits alike) are printed once by rank 0 and all ranks exit with 2;
* anything else on any rank — an unexpected exception, a non-zero sys.exit, Ctrl-C —
  is reported by that rank and ends the whole job through MPI_Abort.
"""

import os
import sys
import time
import traceback

from .cli import main as cli_main
from .errors import ExitCode, MpigdError, world_rank, world_size


# Between a rank's last message and MPI_Abort: the launcher forwards the rank's output from
# a pipe, and an abort right after the write once cut a traceback off mid-way (CI, 3 ranks).
_FORWARD_GRACE_S = 0.2


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


def guarded_main(argv: list[str] | None = None) -> int:
    try:
        return cli_main(argv)
    except MpigdError as exc:
        if exc.collective or world_size() == 1:
            if world_rank() == 0:
                print(f"mpigd: error: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
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
