"""slurm/*.sbatch and slurm/submit_scaling.sh against a real one-node Slurm cluster.

The module fixture installs Debian's slurmctld, slurmd, slurm-client and munge (if they
are missing), starts a private munged (own socket, so it neither needs nor disturbs
/run/munge) and a private one-node cluster whose config, state, spool, logs, ports and job
ids are its own (SLURM_CONF points the clients at it), so two test sessions on one machine
do not meet; at the end it stops every daemon it started, waiting on their PIDs. Jobs run as root
in a temporary directory with this interpreter's venv (MPIGD_VENV and PATH are exported to
them by sbatch). Job states come from `sacct -c` (jobcomp/filetxt: no slurmdbd needed).
"""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import pytest

from mpigd.launch import srun_mpi

REPO = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO / "slurm"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
TIMEOUT = 120  # seconds, for any one command or job

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="needs root: installs Slurm with apt-get and runs its daemons"),
    pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-query") is None,
                       reason="needs apt-get (Debian/Ubuntu) to install slurmctld, slurmd, munge"),
]


def _run(argv, timeout=TIMEOUT, check=True, **kwargs):
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _installed(packages):
    proc = _run(["dpkg-query", "-W", "-f", "${Status}\n", *packages], check=False)
    return proc.returncode == 0 and proc.stdout.count("install ok installed") == len(packages)


def _install(packages=PACKAGES):
    if _installed(packages):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if _run(argv, timeout=600, check=False, env=env).returncode != 0:
        _run(["apt-get", "update"], timeout=600, env=env)  # stale package lists
        _run(argv, timeout=600, env=env)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc, name):
    """SIGTERM, then wait on the PID (pid files vanish at once, the daemons take ~2 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


SLURM_CONF = """\
ClusterName=mpigdtest
# Job ids differ from run to run: MPICH names its /dev/shm segments after the job, and a
# segment left by a killed rank must not meet a later job with the same id.
FirstJobId={first_job_id}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
# No systemd, no cgroups here: plain process tracking, no task binding, no accounting
# daemon; finished jobs go to a text file that `sacct -c` reads.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The PMI of the MPI under test (pmi2 for MPICH, pmix for Open MPI): with MpiDefault=none,
# `srun -n 2` starts two separate MPI jobs of size 1.
MpiDefault={mpi_default}
# One rank dying ends the step instead of leaving the others blocked until the limit.
KillOnBadExit=1
# An impossible request is refused at submission instead of pending forever.
EnforcePartLimits=ALL
MailProg=/bin/true
ReturnToService=2
# CPUs=8 on a 2-core machine: slurmd warns and accepts, so 4 ranks (or a few jobs) fit.
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    def __init__(self, directory, workdir, env):
        self.dir, self.workdir, self.env = directory, workdir, env

    def run(self, *argv, timeout=TIMEOUT, check=True, cwd=None):
        return _run(argv, timeout=timeout, check=check, cwd=cwd or self.workdir, env=self.env)

    def sbatch(self, *args, wait=True, timeout=TIMEOUT, env=None):
        """Submit; returns (job id, the sbatch process). With wait, returns when the job ended."""
        proc = _run(["sbatch", "--parsable", *(["--wait"] if wait else []), *args], timeout=timeout,
                    check=False, cwd=self.workdir, env={**self.env, **(env or {})})
        found = re.match(r"\s*(\d+)", proc.stdout)
        assert found, f"sbatch printed no job id\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return found.group(1), proc

    def jobs(self):
        """Every finished job of this cluster, from jobcomp/filetxt via `sacct -c`."""
        fields = ("JobID", "JobName", "State", "ExitCode", "Start", "End", "NCPUS")
        out = self.run("sacct", "-c", "-n", "-P", "-o", ",".join(fields)).stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]

    def job(self, job_id):
        found = [j for j in self.jobs() if j["JobID"] == str(job_id)]
        assert len(found) == 1, f"job {job_id} not (once) in sacct -c: {self.jobs()}"
        return found[0]

    def wait(self, *job_ids, timeout=TIMEOUT):
        """Poll squeue until the jobs have left the queue (finer than sbatch --wait's 2-10 s)."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i", check=False).stdout.strip():
            assert time.monotonic() < deadline, f"jobs {job_ids} still queued after {timeout} s"
            time.sleep(0.5)
        return [self.job(j) for j in job_ids]

    def log_tail(self):
        return "\n".join(Path(self.dir, name).read_text(errors="replace")[-3000:]
                         for name in ("slurmctld.log", "slurmd.log") if Path(self.dir, name).exists())


def _munge_works(socket_path):
    try:
        token = _run(["munge", "-n", f"--socket={socket_path}"], timeout=10, check=False)
        return token.returncode == 0 and _run(["unmunge", f"--socket={socket_path}"], timeout=10,
                                              check=False, input=token.stdout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_munged(munge_dir, started):
    """A private munged on its own socket in munge_dir; appended to `started`; its socket."""
    # munged runs as the munge user, which cannot enter pytest's root-only tmp directories.
    shutil.chown(munge_dir, "munge", "munge")
    munge_dir.chmod(0o755)
    munge_socket = munge_dir / "munge.socket"
    started.append(("munged", subprocess.Popen(
        ["/usr/sbin/munged", "--foreground", f"--socket={munge_socket}",
         f"--pid-file={munge_dir}/munged.pid", f"--seed-file={munge_dir}/munged.seed"],
        user="munge", group="munge", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)))
    deadline = time.monotonic() + 20
    while not _munge_works(munge_socket):
        assert started[-1][1].poll() is None, f"munged exited: {started[-1][1].stderr.read()}"
        assert time.monotonic() < deadline, "munged did not answer within 20 s"
        time.sleep(0.2)
    return munge_socket


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _install()
    started = []
    munge_dir = Path(tempfile.mkdtemp(prefix="mpigd-munge-"))
    try:
        munge_socket = start_munged(munge_dir, started)
        directory = tmp_path_factory.mktemp("slurm")
        for sub in ("state", "spool", "work"):
            (directory / sub).mkdir()
        host = socket.gethostname().split(".")[0]  # what `hostname -s` says; slurmd must match
        conf = directory / "slurm.conf"
        conf.write_text(SLURM_CONF.format(host=host, dir=directory, munge_socket=munge_socket,
                                          ctld_port=_free_port(),
                                          d_port=_free_port(),
                                          first_job_id=random.randrange(1_000, 60_000_000),
                                          mpi_default=srun_mpi() or "pmi2"))
        venv = sys.prefix if sys.prefix != sys.base_prefix else ""
        env = {**os.environ, "SLURM_CONF": str(conf), "MPIGD_VENV": venv,
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        for daemon in ("slurmctld", "slurmd"):
            with open(directory / f"{daemon}.out", "w") as log:
                started.append((daemon, subprocess.Popen(
                    [f"/usr/sbin/{daemon}", "-D", "-f", str(conf)], env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)))
        cluster = Cluster(directory, directory / "work", env)

        deadline = time.monotonic() + 60
        while cluster.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() != "idle":
            for name, proc in started:
                assert proc.poll() is None, f"{name} exited {proc.returncode}\n{cluster.log_tail()}"
            assert time.monotonic() < deadline, f"the node is not idle after 60 s\n{cluster.log_tail()}"
            time.sleep(0.3)
        yield cluster
        if os.environ.get("MPIGD_SLURM_SACCT_OUT"):  # the jobs this cluster ran, for a report
            Path(os.environ["MPIGD_SLURM_SACCT_OUT"]).write_text(cluster.run(
                "sacct", "-c", "-o", "JobID,JobName%20,NCPUS,State,ExitCode,Start,End,Timelimit",
                check=False).stdout)
        # Leave nothing running: cancel what a failed test left queued, then stop the daemons.
        cluster.run("scancel", "--user=root", check=False)
        deadline = time.monotonic() + 60
        while cluster.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for name, proc in reversed(started):
            _stop(proc, name)
        shutil.rmtree(munge_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def data(cluster):
    path = cluster.workdir / "data.h5"
    _run([sys.executable, "-m", "mpigd", "generate", "--rows", 20000, "--features", 8,
          "--out", path])
    return path


def _sbatch_script(name):
    return str(SLURM_SCRIPTS / name)


def test_train_sbatch_runs_one_two_rank_mpi_job(cluster, data):
    job, proc = cluster.sbatch(_sbatch_script("train.sbatch"), "--data", data, "--iters", 30)
    log = (cluster.workdir / f"mpigd-{job}.out").read_text()
    assert proc.returncode == 0, log
    assert cluster.job(job)["State"] == "COMPLETED" and cluster.job(job)["ExitCode"] == "0:0"
    result = json.loads((cluster.workdir / "runs" / job / "result.json").read_text())
    # One communicator of size 2, not two size-1 jobs (what MpiDefault=none would give).
    assert result["ranks"] == 2 and len(result["per_rank"]) == 2, log
    slurm = result["slurm"]
    assert slurm["job_id"] == job and slurm["ntasks"] == "2" and slurm["cpus_per_task"] == "1"
    assert slurm["tasks_per_node"] == "2" and slurm["cluster_name"] == "mpigdtest"
    assert f"results: {cluster.workdir}/runs/{job}" in log and "trainer exited with code 0" in log


@pytest.mark.parametrize("options, message", [
    (("--data", "missing.h5"), "missing.h5 does not exist"),     # found collectively, after MPI_Init
    (("--lr", "-1"), "--lr must be > 0"),                         # found by every rank before MPI_Init
])
def test_a_failing_run_fails_the_job_with_one_clear_error(cluster, data, options, message):
    # Every rank exits 2; with srun's kill-on-bad-exit the first exit would kill the others
    # (job 143, rank 0's message sometimes lost): train.sbatch turns it off.
    job, proc = cluster.sbatch(_sbatch_script("train.sbatch"), "--data", data, *options)
    log = (cluster.workdir / f"mpigd-{job}.out").read_text()
    assert proc.returncode == 2, log
    state = cluster.job(job)
    assert (state["State"], state["ExitCode"]) == ("FAILED", "2:0"), (state, log)
    assert log.count("mpigd: error:") == 1 and message in log, log
    assert "Traceback" not in log and not (cluster.workdir / "runs" / job).exists()


def test_a_rank_that_never_starts_mpi_fails_the_job_soon(cluster, data):
    # Rank 1 sleeps instead of starting MPI: rank 0 waits in MPI_Init (srun's PMI fence)
    # until its deadline, says so once, and the step ends long before the time limit.
    started = time.monotonic()
    job, proc = cluster.sbatch(_sbatch_script("train.sbatch"), "--data", data, "--iters", 30,
                               env={"MPIGD_INJECT_FAULT": "1:init", "MPIGD_INIT_TIMEOUT": "3"})
    seconds = time.monotonic() - started
    log = (cluster.workdir / f"mpigd-{job}.out").read_text()
    assert proc.returncode != 0 and seconds < 60, (seconds, log)
    assert cluster.job(job)["State"] == "FAILED", (cluster.job(job), log)
    assert log.count("mpigd: error:") == 1 and "MPI did not start within 3 s" in log, log


def _pids_of_rank(job, rank):
    """The PIDs of `python -m mpigd` with this job id and task rank (read from /proc)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job}".encode() in env and f"SLURM_PROCID={rank}".encode() in env \
                and b"mpigd" in cmd:
            pids.append(int(pid))
    return pids


def test_a_rank_killed_without_mpi_abort_ends_the_step_soon(cluster, data):
    # SIGKILL (say, out of memory) gives mpigd no chance to call MPI_Abort: rank 0 blocks in
    # its next collective, and srun --wait ends the step (train.sbatch: 30 s; here 5 s).
    job, _ = cluster.sbatch(_sbatch_script("train.sbatch"), "--data", data, "--iters", 1_000_000,
                            "--tol", 0, wait=False, env={"MPIGD_SRUN_ARGS": f"{os.environ.get('MPIGD_SRUN_ARGS', '')} --wait=5"})
    log = cluster.workdir / f"mpigd-{job}.out"
    deadline = time.monotonic() + 60
    while not (log.exists() and "iter " in log.read_text(errors="replace")):
        assert time.monotonic() < deadline, "the job never started iterating"
        time.sleep(0.3)
    victims = _pids_of_rank(job, 1)
    assert len(victims) == 1, victims
    # MPICH's shared-memory segment outlives killed ranks; its name derives from the job
    # id, so a later cluster's job with that id would attach to it and fail in MPI_Init.
    segments = set(re.findall(r"/dev/shm/mpich_\S+", Path(f"/proc/{victims[0]}/maps").read_text()))
    os.kill(victims[0], signal.SIGKILL)
    killed = time.monotonic()
    state, = cluster.wait(job, timeout=60)
    for segment in segments:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment)
    assert time.monotonic() - killed < 30, "the step outlived its --wait by far"
    assert state["State"] == "FAILED" and state["ExitCode"] != "0:0", state
    assert "task 1: Killed" in log.read_text(), log.read_text()


def test_sigterm_before_the_time_limit_checkpoints_and_resumes(cluster, data):
    long_run = ("--data", data, "--iters", 1_000_000, "--tol", 0)
    # Slurm's own warning. slurmctld checks limits every 30 s and signals once
    # end - now <= warn + 30 (measured on 22.05): with --time=1 and TERM@15 the ranks get
    # SIGTERM 15..45 s in, late enough for Python to start even on a loaded machine.
    timed, _ = cluster.sbatch("--time=1", "--signal=TERM@15", _sbatch_script("train.sbatch"),
                              *long_run, wait=False)
    # And by hand, as a user would to stop a run now and keep it resumable.
    cancelled, _ = cluster.sbatch(_sbatch_script("train.sbatch"), *long_run, wait=False)
    deadline = time.monotonic() + 60
    log = cluster.workdir / f"mpigd-{cancelled}.out"
    while not (log.exists() and "iter " in log.read_text(errors="replace")):
        assert time.monotonic() < deadline, "the job to cancel never started iterating"
        time.sleep(0.3)
    cluster.run("scancel", "--signal=TERM", cancelled)
    for job, state in zip((timed, cancelled), cluster.wait(timed, cancelled, timeout=150)):
        log = (cluster.workdir / f"mpigd-{job}.out").read_text()
        # Stopped cleanly before the limit: FAILED with the trainer's 143, not TIMEOUT.
        assert (state["State"], state["ExitCode"]) == ("FAILED", "143:0"), (state, log)
        assert log.count("received SIGTERM: stopped cleanly at iteration") == 1, log
        assert f"sbatch slurm/train.sbatch --resume runs/{job}" in log, log
        assert "trainer exited with code 143" in log and "Traceback" not in log, log
        run_dir = cluster.workdir / "runs" / job
        assert (run_dir / "checkpoint.h5").exists() and not (run_dir / "result.json").exists()

    stopped_at = int(re.search(r"stopped cleanly at iteration (\d+)",
                               (cluster.workdir / f"mpigd-{timed}.out").read_text()).group(1))
    # Resume in a new job; --tol may change on resume, and this problem has long converged.
    resumed, proc = cluster.sbatch(_sbatch_script("train.sbatch"), "--resume", f"runs/{timed}",
                                   "--tol", "1e-9")
    log = (cluster.workdir / f"mpigd-{resumed}.out").read_text()
    assert proc.returncode == 0 and cluster.job(resumed)["State"] == "COMPLETED", log
    result = json.loads((cluster.workdir / "runs" / timed / "result.json").read_text())
    assert result["resumed_from"] == stopped_at and result["slurm"]["job_id"] == resumed
    assert not (cluster.workdir / "runs" / timed / "checkpoint.h5").exists()


def test_strong_scaling_sweep_with_collector_job(cluster):
    sweep = cluster.workdir / "sweep"
    proc = cluster.run(_sbatch_script("submit_scaling.sh"), "--mode", "strong", "--ranks", "1,2",
                       "--rows", 20000, "--features", 8, "--iters", 20, "--repeat", 2,
                       "--bench-comm", "--out", sweep, "--wait", check=False, timeout=180)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    ids = dict(re.findall(r"^(run p\d+|bench-comm p\d+|collect): job (\d+)", proc.stdout, re.M))
    assert set(ids) == {"run p001", "run p002", "bench-comm p001", "bench-comm p002", "collect"}, proc.stdout

    for name in ("scaling.csv", "scaling.json", "scaling.txt", "speedup.png", "efficiency.png"):
        assert (sweep / name).stat().st_size > 0, name
    report = json.loads((sweep / "scaling.json").read_text())
    points = {p["ranks"]: p for p in report["series"][0]["points"]}
    assert report["series"][0]["kind"] == "strong" and sorted(points) == [1, 2]
    assert all(p["repeats"] == 2 for p in points.values()), points
    # The bench-comm jobs fitted both rank counts, so every point has a prediction.
    assert sorted(json.loads((sweep / "comm_model.json").read_text())["fits"]) == ["1", "2"]
    assert all(p["predicted_s"] > 0 for p in points.values()), points
    for n in (1, 2):  # each repeat is one array task with its own run directory
        results = sorted((sweep / f"p{n:03d}").glob("*/result.json"))
        assert [json.loads(r.read_text())["ranks"] for r in results] == [n, n], results

    jobs = cluster.jobs()
    runs = [j for j in jobs if j["JobName"].startswith(("mpigd-strong-p", "mpigd-bench-p"))]
    assert len(runs) == 6 and all(j["State"] == "COMPLETED" for j in runs), runs
    # Whole nodes by default: no two timed jobs of the sweep ever shared the node.
    spans = sorted((j["Start"], j["End"]) for j in runs)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), runs
    # The data were generated inside an allocation, on 2 ranks, before the first run started.
    generate = [j for j in jobs if j["JobName"] == "mpigd-generate-p002"]
    assert len(generate) == 1 and generate[0]["State"] == "COMPLETED", jobs
    assert min(j["Start"] for j in runs if j["JobName"].startswith("mpigd-strong")) >= generate[0]["End"]
    with h5py.File(sweep / "data" / "synthetic-20000x8-seed0.h5", "r") as f:
        assert f["X"].is_virtual  # joined from the ranks' parts
    collect = cluster.job(ids["collect"])
    assert collect["State"] == "COMPLETED" and collect["ExitCode"] == "0:0"
    assert collect["Start"] >= max(j["End"] for j in runs), (collect, runs)  # ISO times sort


def test_a_failed_run_cancels_the_collector_and_fails_the_sweep(cluster):
    sweep = cluster.workdir / "failed-sweep"
    proc = cluster.run(_sbatch_script("submit_scaling.sh"), "--ranks", "1,2", "--rows", 2000,
                       "--features", 4, "--iters", 5, "--train-args", "--lr -1", "--out", sweep,
                       "--wait", check=False)
    assert proc.returncode == 1, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    collect = re.search(r"^collect: job (\d+)", proc.stdout, re.M).group(1)
    assert f"the collector job {collect} ended CANCELLED" in proc.stderr, proc.stderr
    assert cluster.job(collect)["State"] == "CANCELLED" and not (sweep / "scaling.csv").exists()
    # Runs are exclusive, so one at a time: one fails, the collector is cancelled, and the
    # script cancels the runs still queued or running instead of leaving them to burn the
    # allocation. Whether the other run had already started when it was cancelled depends
    # on the scheduler's timing: what is guaranteed is that no run completed, each run that
    # started either failed with the error or says it was cancelled, and none is left.
    runs = re.findall(r"^run p\d+: job (\d+)", proc.stdout, re.M)
    assert len(runs) == 2
    assert not cluster.run("squeue", "-h", "-j", ",".join(runs), "-o", "%i", check=False).stdout.strip()
    states = {job: cluster.job(job)["State"] for job in runs}
    assert "FAILED" in states.values() and set(states.values()) <= {"FAILED", "CANCELLED"}, states
    logs = {p: p.read_text() for p in sorted((sweep / "logs").glob("p*.out"))}
    error = "mpigd: error: --lr must be > 0"
    assert any(error in text for text in logs.values()), logs
    assert all(error in text or "CANCELLED" in text for text in logs.values()), logs
    if "CANCELLED" in states.values():
        assert "cancelled the sweep's jobs still queued or running" in proc.stderr, proc.stderr
