#!/usr/bin/env python3
"""Exit codes and signal behaviour of one MPI launcher with mpigd: the README's table
"Launchers: exit codes and signals" comes from these runs (2 ranks, a small problem).

    python scripts/launcher_signals.py /usr/bin/mpiexec [WORKDIR]     # with the venv of that MPI

Each line: the case, the launcher's exit code, seconds from the event to its exit, how many
lines it wrote to stderr, whether checkpoint.h5 exists, and the first `mpigd:` line.
Set OMPI_MCA_odls_base_sigkill_timeout=N in the environment to see its effect.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

PYTHON = sys.executable


def ranks_of(marker):
    """PIDs of this interpreter's processes whose arguments contain marker (the ranks)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0] == PYTHON.encode() and marker.encode() in cmd:
            pids.append(int(entry))
    return sorted(pids)


def job(launcher, data, work, name, *args, extra=None, action=None, delay=6.0):
    out = os.path.join(work, name)
    argv = [launcher, "-n", "2", PYTHON, "-m", "mpigd", "--data", data, "--tol", "0", "--quiet",
            "--lr", "1e-4", "--out", out, "--force", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(extra or {})}, start_new_session=True)
    started = time.monotonic()
    if action:
        time.sleep(delay)  # the job is iterating by then
        started = time.monotonic()
        action(proc, out)
    _, stderr = proc.communicate(timeout=300)
    seconds = time.monotonic() - started
    said = [line for line in stderr.splitlines() if line.startswith("mpigd:")]
    saved = os.path.exists(os.path.join(out, "checkpoint.h5"))
    print(f"{name:28s} rc={proc.returncode:<4} {seconds:5.1f}s  stderr lines={len(stderr.splitlines()):<3} "
          f"checkpoint={saved!s:5} | {said[0][:110] if said else '-'}", flush=True)


def main():
    launcher = sys.argv[1]
    work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="launcher-signals-")
    data = os.path.join(work, "data.h5")
    subprocess.run([PYTHON, "-m", "mpigd", "generate", "--rows", "4000", "--features", "8",
                    "--out", data], check=True, capture_output=True)
    run = lambda *a, **k: job(launcher, data, work, *a, **k)  # noqa: E731
    term = lambda proc, out: proc.send_signal(signal.SIGTERM)  # noqa: E731
    run("ok", "--iters", "20")
    run("usage-error", "--iters", "20", "--x-dataset", "nope")
    run("crash-rank1", "--iters", "2000", "--straggler", "0:0.01", extra={"MPIGD_INJECT_FAULT": "1:loop:20"})
    run("sigkill-rank1", "--iters", "100000", "--straggler", "0:0.05",
        action=lambda proc, out: os.kill(ranks_of(out)[1], signal.SIGKILL))
    run("sigterm-launcher-0.05s-iter", "--iters", "100000", "--straggler", "0:0.05", action=term)
    run("sigterm-launcher-3s-iter", "--iters", "100000", "--straggler", "0:3", action=term, delay=10)
    run("sigterm-ranks-3s-iter", "--iters", "100000", "--straggler", "0:3", delay=10,
        action=lambda proc, out: [os.kill(pid, signal.SIGTERM) for pid in ranks_of(out)])
    run("sigint-launcher-0.05s-iter", "--iters", "100000", "--straggler", "0:0.05",
        action=lambda proc, out: proc.send_signal(signal.SIGINT))


if __name__ == "__main__":
    main()
