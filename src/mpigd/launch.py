"""Starting MPI jobs from Python (sweeps, benchmarks, tests): the launcher and its processes.

Every launched job runs in its own process group with a timeout; a job that has to be
stopped (timeout, Ctrl-C, an exception in the caller) is ended with its whole group, so
no rank outlives the process that started it.
"""

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys

from .errors import MpigdError


# What an MPI runtime puts into a rank's environment to tie it to its job (Open MPI's
# singleton init also adds ~27 of them to the C environment, which os.environ does not
# show). A job started from such a process must not inherit them: Open MPI's mpiexec then
# takes itself for part of the old job and exits 1 without a word. Settings a user gives
# the MPI library by environment (OMPI_MCA_*, PMIX_MCA_*, run-as-root) are kept, except
# the MCA names that only the runtime sets, which name the old job's daemons and ids.
_JOB_PREFIXES = ("OMPI_", "PMIX_", "ORTE_", "OPAL_", "PMI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")
_USER_PREFIXES = ("OMPI_MCA_", "PMIX_MCA_", "OMPI_ALLOW_RUN_AS_ROOT")
_RUNTIME_MCA = ("OMPI_MCA_orte_", "OMPI_MCA_ess", "OMPI_MCA_pmix", "OMPI_MCA_initial_wdir",
                "OMPI_MCA_shmem_RUNTIME_QUERY_hint", "OMPI_MCA_mpi_oversubscribe")


def _job_variable(name: str) -> bool:
    if not name.startswith(_JOB_PREFIXES):
        return False
    return not name.startswith(_USER_PREFIXES) or name.startswith(_RUNTIME_MCA)


def child_env(extra: dict | None = None) -> dict:
    """The environment of a job this process launches: ours without the MPI job's state."""
    env = {k: v for k, v in os.environ.items() if not _job_variable(k)}
    env.update(extra or {})
    return env


# Which launcher belongs to which library: a word of `mpiexec --version` for a word of
# MPI_Get_library_version. A library not listed here is not judged.
_FAMILIES = (("Open MPI", ("OpenRTE", "Open MPI", "PRRTE")), ("Intel(R) MPI", ("Intel(R) MPI",)),
             ("MPICH", ("HYDRA",)), ("MVAPICH", ("HYDRA",)))


@functools.lru_cache(maxsize=1)
def mpi4py_library() -> str:
    """mpi4py's MPI library version line, asked in a child process (this one stays MPI-free)."""
    code = ("import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; "
            "print(MPI.Get_library_version().replace('\\x00', '').splitlines()[0])")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL, env=child_env())
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return " ".join(proc.stdout.split()) if proc.returncode == 0 else ""


def mpi_family() -> str | None:
    """"Open MPI", "MPICH", ... for the MPI library mpi4py uses; None if not known here."""
    library = mpi4py_library().upper()
    return next((family for family, _ in _FAMILIES if family.upper() in library), None)


# The srun --mpi plugin each MPI needs: Open MPI 4+ speaks PMIx (Debian's is built without
# Slurm's PMI2), MPICH and its derivatives PMI2. A wrong or missing one does not fail: srun
# then starts N separate 1-rank jobs.
SRUN_MPI = {"Open MPI": "pmix", "MPICH": "pmi2", "MVAPICH": "pmi2", "Intel(R) MPI": "pmi2"}


def srun_mpi() -> str:
    """The `srun --mpi=` value for the MPI mpi4py uses ('' when not known: the site's default)."""
    return SRUN_MPI.get(mpi_family() or "", "")


@functools.lru_cache(maxsize=8)
def launcher_family(path: str) -> str | None:
    """The MPI family of the launcher at path (from --version), or None if unknown."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, env=child_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    said = (proc.stdout + proc.stderr).upper()
    library = mpi4py_library()
    if "CRAY" in library.upper():  # Cray MPICH is started by srun/aprun wrappers: not judged
        return None
    for family, words in _FAMILIES:
        if family.upper() in library.upper():
            return family if any(w.upper() in said for w in words) else "another MPI"
    return None


def _mismatch(path: str) -> str:
    """Why the launcher at path cannot start this mpi4py's ranks, or '' if it can."""
    library = mpi4py_library()
    if launcher_family(path) != "another MPI":
        return ""
    return f"{path} is not a launcher of the MPI that mpi4py uses ({library})"


def find_mpiexec() -> str:
    """The launcher of mpi4py's MPI: $MPIEXEC, else mpiexec next to sys.executable (where the
    mpich wheel puts it), else mpiexec/mpirun on PATH; one of another MPI is refused."""
    return _find_mpiexec(os.environ.get("MPIEXEC"), os.environ.get("PATH"), sys.executable)


@functools.lru_cache(maxsize=4)
def _find_mpiexec(explicit: str | None, path_variable: str | None, python: str) -> str:
    if explicit:
        path = shutil.which(explicit) or explicit
        why = _mismatch(path)
        if why:
            raise FileNotFoundError(f"$MPIEXEC: {why}; point $MPIEXEC at that MPI's mpiexec")
        return path
    here = os.path.join(os.path.dirname(python), "mpiexec")
    found = [here] if os.access(here, os.X_OK) else []
    found += [p for p in (shutil.which("mpiexec", path=path_variable),
                          shutil.which("mpirun", path=path_variable)) if p and p not in found]
    for path in found:
        if not _mismatch(path):
            return path
    if found:
        raise FileNotFoundError(f"{_mismatch(found[0])} (nor is any of {', '.join(found[1:]) or 'PATH'}): "
                                "set $MPIEXEC to the mpiexec of the MPI mpi4py was built against, "
                                "or rebuild mpi4py: MPICC=$(which mpicc) pip install --no-binary=mpi4py mpi4py")
    raise FileNotFoundError(
        "no mpiexec found: install one with `pip install mpich` (or `pip install .[mpich]`), "
        "set $MPIEXEC, or load your site's MPI module"
    )


def mpi_command(ranks: int, *args, python: str = sys.executable) -> list[str]:
    """argv that runs `python -m mpigd ARGS` on `ranks` ranks."""
    return [find_mpiexec(), "-n", str(ranks), python, "-m", "mpigd", *map(str, args)]


def default_launcher() -> str:
    """The launcher template of sweeps without --launcher: this MPI's mpiexec."""
    try:
        return shlex.quote(find_mpiexec()) + " -n {n}"
    except FileNotFoundError as exc:
        raise MpigdError(f"{exc}; or give --launcher") from None


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


def session_members(session: int) -> list[int]:
    """PIDs of the processes of a session (Linux /proc), the session leader first."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # after "pid (comm)": state ppid pgrp session
            found.append(int(entry))
    return sorted(found, key=lambda pid: pid != session)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_group(proc: subprocess.Popen, grace: float = 5) -> None:
    """End a launched job and everything it started (mpiexec's ranks, srun's tasks).

    The job runs in a session of its own (start_new_session). SIGTERM goes to every process
    of it, the ranks included, as srun delivers it: Open MPI's mpirun puts each rank in a
    process group of its own, and if only mpirun is signalled it passes SIGTERM on a second
    later and SIGKILLs a second after that (odls_base_sigkill_timeout), too soon for a clean
    stop. Whatever is left after `grace` seconds gets SIGKILL.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        members = session_members(proc.pid)
        if not members:
            proc.poll()
            return
        _signal_all(members, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        _signal_all(session_members(proc.pid), signal.SIGKILL)  # ranks the launcher left behind
        return


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
                                env=child_env(env))
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
    try:
        argv = mpi_command(ranks, *args)
    except FileNotFoundError as exc:
        raise MpigdError(str(exc)) from None
    return run_job(argv, timeout, what, env=env)
