"""Starting MPI jobs across the emulated hosts with MPICH's own launcher (hydra).

    nsenter <node0's namespaces> mpiexec -launcher ssh -launcher-exec <dir>/ssh \
        -iface eth0 -hosts node0:1,node1:1 -n 2 CMD...

mpiexec runs inside node0 (its proxies connect back to node0's eth0 address), and hydra's
"ssh" is a stand-in (ssh_main below) that enters the named host's namespaces and runs the
proxy there with `sh -c`, as sshd would. UCX_TLS=tcp,self is set because the wheel's UCX
netmod otherwise sees ranks of different namespaces as one node and uses shared memory
across them, never touching the link (design.md §8).

Hydra puts each proxy and rank in a session of its own, so killing mpiexec's process group
does not reach them. Every job's environment therefore carries a token
(MPIGD_CLUSTER_JOB=...), which hydra passes to every proxy and rank; a job that times out
or is interrupted is ended by SIGTERM to mpiexec, then SIGKILL to every process that
carries its token.
"""

import json
import os
import re
import secrets
import signal
import subprocess
import sys

from ..errors import MpigdError
from .hosts import kill_all
from .state import STATE, HostState

JOB_TOKEN = "MPIGD_CLUSTER_JOB"
SSH = "ssh"
_SLOTS = re.compile(r"^([a-z0-9]+):(\d+)$")
# ssh options that take a value (hydra passes only -x today; skip others safely).
_SSH_VALUE_OPTIONS = set("bcDEeFIiJLlmOopQRSWw")


# --- the ssh stand-in ------------------------------------------------------------------------

def write_ssh(directory, python):
    """The executable hydra runs instead of ssh for the cluster recorded in `directory`."""
    path = os.path.join(directory, SSH)
    with open(path + ".tmp", "w") as handle:
        handle.write(f"#!{python}\n"
                     f'"""hydra\'s ssh for the emulated cluster in {directory}: `ssh [-x] HOST '
                     f'COMMAND` runs COMMAND inside HOST."""\n'
                     "import sys\n\nfrom mpigd.cluster.launch import ssh_main\n\n"
                     f"sys.exit(ssh_main({json.dumps(directory)}, sys.argv[1:]))\n")
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)
    return path


def _split_ssh_arguments(args):
    """(host, command words) from ssh's argument list."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        option = args[i]
        i += 2 if len(option) == 2 and option[1] in _SSH_VALUE_OPTIONS else 1
    if i >= len(args):
        raise ValueError("no host given")
    return args[i], args[i + 1:]


def ssh_main(directory, args):
    """`ssh [options] HOST COMMAND...`: exec COMMAND with `sh -c` in HOST's namespaces."""
    try:
        host_name, words = _split_ssh_arguments(args)
        with open(os.path.join(directory, STATE)) as handle:
            hosts = [HostState(**h) for h in json.load(handle)["hosts"]]
        host = next((h for h in hosts if host_name in (h.name, h.address)), None)
        if host is None:
            raise ValueError(f"no host {host_name!r} in this cluster")
        if not words:
            raise ValueError("no command given (an interactive login is not supported)")
        argv = [*host.nsenter_argv(), "--", "sh", "-c", " ".join(words)]
        os.execvp(argv[0], argv)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"mpigd cluster ssh ({directory}): {exc}", file=sys.stderr)
        return 255  # what ssh returns when it could not run the command


# --- the mpiexec command line ----------------------------------------------------------------

def hydra_mpiexec():
    """MPICH's mpiexec (mpigd.launch.find_mpiexec), refused if it is not hydra's."""
    from ..launch import find_mpiexec

    try:
        path = find_mpiexec()
    except FileNotFoundError as exc:
        raise MpigdError(str(exc)) from None
    try:
        info = subprocess.run([path, "-info"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MpigdError(f"cannot run {path} -info: {exc}") from None
    if "HYDRA" not in info.stdout.upper():
        raise MpigdError(f"{path} is not MPICH's hydra mpiexec, which the emulated cluster launches "
                         "with (-launcher ssh -launcher-exec); `pip install mpich` gives one")
    return path


def placement(state, n=None, hosts=None, per_host=None):
    """(-hosts spec, rank count). hosts: 'node0:2,node1:2' or {name: slots}; per_host: slots
    on every host; default one slot per host. n defaults to the number of slots; more ranks
    than slots wrap around the hosts again (oversubscription), as hydra does."""
    if hosts and per_host:
        raise MpigdError("give --hosts or --per-host, not both")
    if isinstance(hosts, str):
        hosts = _parse_hosts(hosts)
    if not hosts:
        slots = per_host or 1
        if slots < 1:
            raise MpigdError(f"--per-host must be >= 1, got {slots}")
        hosts = {h.name: slots for h in state.hosts}
    for name in hosts:
        state.host(name)  # raises with the list of hosts
    total = sum(hosts.values())
    n = total if n is None else int(n)
    if n < 1:
        raise MpigdError(f"-n must be >= 1, got {n}")
    return ",".join(f"{name}:{slots}" for name, slots in hosts.items()), n


def _parse_hosts(text):
    hosts = {}
    for part in text.split(","):
        match = _SLOTS.match(part.strip()) or re.match(r"^([a-z0-9]+)()$", part.strip())
        if not match or (match.group(2) and int(match.group(2)) < 1):
            raise MpigdError(f"--hosts must be HOST:SLOTS pairs like node0:2,node1:2; got {text!r}")
        hosts[match.group(1)] = int(match.group(2) or 1)
    return hosts


def mpiexec_argv(state, command, n, hosts_spec, mpiexec):
    """The full argv of a job: mpiexec inside node0 with the ssh stand-in, then `command`."""
    if not command:
        raise MpigdError("give the command to run after --, e.g. `cluster run -n 2 -- python -m mpigd ...`")
    return [*state.hosts[0].nsenter_argv(), "--", mpiexec, "-launcher", "ssh",
            "-launcher-exec", os.path.join(state.directory, SSH), "-iface", "eth0",
            "-hosts", hosts_spec, "-n", str(n), *map(str, command)]


def job_environment(user_env=None):
    """This process's environment + UCX over TCP + the user's variables + a fresh job token."""
    token = secrets.token_hex(8)
    env = {**os.environ, "UCX_TLS": "tcp,self", **(user_env or {}), JOB_TOKEN: token}
    return env, token


# --- running a job ---------------------------------------------------------------------------

def tagged_processes(token):
    """PIDs of the processes whose environment carries this job's token."""
    needle = f"{JOB_TOKEN}={token}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if needle in handle.read() + b"\0":
                        found.append(int(entry))
            except OSError:
                continue
    return found


def end_job(proc, token, grace=2.0):
    """Stop a job and all it started: SIGTERM to mpiexec's group (hydra passes it on to its
    proxies and ranks), then SIGKILL to every process that carries the job's token."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    kill_all(tagged_processes(token), grace=0.0)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_job(argv, env, token, timeout, capture=False):
    """Run a job to its end (or `timeout` seconds); returns (exit code, stdout, stderr).

    Never leaves a process of the job behind: on a timeout, an exception or a signal the job
    is ended (end_job); after a normal end, stragglers that carry its token are killed.
    """
    pipe = subprocess.PIPE if capture else None
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                                text=True, start_new_session=True)
    except OSError as exc:
        raise MpigdError(f"cannot start {argv[0]}: {exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_job(proc, token)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a pipe still held by something outside the job
            out, err = "", ""
        error = MpigdError(f"the job did not finish within {timeout:g} s and was killed"
                           + (f"; its last output:\n{(err or out or '')[-2000:]}" if capture else ""))
        error.exit_code = 124
        raise error from None
    except BaseException:
        end_job(proc, token)
        raise
    kill_all(tagged_processes(token), grace=1.0)
    code = proc.returncode
    return (128 - code if code < 0 else code), out, err
