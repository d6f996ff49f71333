"""SIGTERM as a request to stop cleanly, not a kill.

Slurm sends SIGTERM at the time limit (or earlier with --signal), and mpirun forwards it
to every rank. The handler only sets a flag; the training loop carries the flag to the
server inside the Reduce it does anyway, and the server stops everyone at the next
iteration boundary, where a checkpoint can be written.
"""

import signal

from .errors import ExitCode, MpigdError

EXIT_CODE = ExitCode.TERMINATED  # 128 + SIGTERM: what a shell reports for a job ended by SIGTERM


class StopRequest:
    """A flag the map step reads once per iteration (1.0 once a SIGTERM arrived)."""

    def __init__(self):
        self.raised = 0.0


class Terminated(MpigdError):
    """Raised on every rank after a clean stop on SIGTERM."""

    def __init__(self, message: str) -> None:
        super().__init__(message, collective=True, exit_code=EXIT_CODE)


class on_sigterm:
    """Context manager: while inside, SIGTERM sets `request.raised` instead of killing."""

    def __init__(self, request):
        self.request = request

    def _handle(self, signum, frame):
        self.request.raised = 1.0

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self.request

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)
        return False
