"""Starting MPI jobs from Python (sweeps, benchmarks, tests): the launcher and its processes.

Every launched job runs in its own process group with a timeout; a job that has to be
stopped (timeout, Ctrl-C, an exception in the caller) is ended with its whole group, so
no rank outlives the process that started it.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys

from .errors import MpigdError


def find_mpiexec() -> str:
    """mpiexec next to sys.executable (the mpich wheel puts it there), then $MPIEXEC, then PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    explicit = os.environ.get("MPIEXEC")
    if explicit:
        return explicit
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found:
        return found
    raise FileNotFoundError(
        "no mpiexec found: install one with `pip install mpich` (or `pip install .[mpich]`), "
        "set $MPIEXEC, or load your site's MPI module"
    )


def mpi_command(ranks: int, *args, python: str = sys.executable) -> list[str]:
    """argv that runs `python -m mpigd ARGS` on `ranks` ranks."""
    return [find_mpiexec(), "-n", str(ranks), python, "-m", "mpigd", *map(str, args)]


def default_launcher() -> str:
    """The launcher template of sweeps without --launcher: this MPI's mpiexec."""
    return shlex.quote(find_mpiexec()) + " -n {n}"


def launcher_argv(template: str, n: int) -> list[str]:
    """The launcher's argv for n ranks: "mpirun -n {n}", "srun -n {n} --cpu-bind=cores", ..."""
    if "{n}" not in template:
        raise MpigdError(f'--launcher must contain {{n}} where the rank count goes, e.g. "mpirun -n {{n}}" '
                         f"or \"srun -n {{n}}\"; got {template!r}")
    argv = shlex.split(template.replace("{n}", str(n)))
    if not argv or shutil.which(argv[0]) is None:
        raise MpigdError(f"--launcher {template!r}: {argv[0] if argv else 'nothing'} is not an executable "
                         "on PATH; give a full path, or load your MPI module")
    return argv


def kill_group(proc: subprocess.Popen) -> None:
    """End a launched job and everything it started (mpiexec's ranks, srun's tasks)."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def quoted(argv: list) -> str:
    """argv as a shell would need it typed."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def _tail(text: str, lines: int = 60) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n".join("  | " + line for line in kept) if kept else "  | (no output)"


def run_job(argv: list, timeout: float, what: str, env: dict | None = None) -> str:
    """Run one launched job to completion and return its stdout.

    Any failure raises one MpigdError with the job's stderr; a job past `timeout` is
    killed with its whole process group.
    """
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
    except OSError as exc:
        raise MpigdError(f"cannot start {what}: {argv[0]}: {exc.strerror or exc}; check --launcher") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        raise MpigdError(f"{what} did not finish within --timeout {timeout:g} s and was killed\n"
                         f"  $ {quoted(argv)}\n{_tail(stderr or stdout)}") from None
    except BaseException:  # Ctrl-C or anything else: never leave ranks running
        kill_group(proc)
        raise
    if proc.returncode != 0:
        raise MpigdError(f"{what} failed (exit code {proc.returncode})\n  $ {quoted(argv)}\n"
                         f"{_tail(stderr or stdout)}")
    return stdout


def run_mpigd(ranks: int, *args, timeout: float, env: dict | None = None) -> str:
    """stdout of `mpiexec -n ranks python -m mpigd ARGS`, through run_job."""
    what = f"`mpirun -n {ranks} python -m mpigd {' '.join(map(str, args))}`"
    return run_job(mpi_command(ranks, *args), timeout, what, env=env)
