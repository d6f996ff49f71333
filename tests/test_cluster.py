"""The emulated cluster (mpigd.cluster) with real namespaces, real shaping, real MPICH across hosts.

Each test's cluster has a private name and state directory (tmp_path), so it cannot meet a
user's cluster or another test session's; a fixture finalizer removes it even when the
test fails. Needs root: skips outside CI without it, fails with CI=true.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest

from mpigd.cluster import Cluster, down
from mpigd.cluster.hosts import cluster_netns, processes_of

from conftest import needs_hydra

TIMEOUT = 120


def _need_root():
    if os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "tc", "iptables", "ebtables", "nsenter")):
        return
    reason = "needs root and ip, tc, iptables, ebtables, nsenter (apt-get install iproute2 iptables util-linux)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def cluster_env(tmp_path, monkeypatch):
    """A private state root and name; everything of that name is removed at the end."""
    _need_root()
    root = str(tmp_path / "clusters")
    name = f"t{os.getpid() % 100000}{len(str(tmp_path)) % 10}"
    monkeypatch.setenv("MPIGD_CLUSTER_DIR", root)
    yield name, root
    down(name, root)


def _cli(*args, env=None, user=None):
    argv = [sys.executable, "-m", "mpigd.cluster", *map(str, args)]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def _iptables_root():
    return subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30).stdout


def test_up_status_down_leaves_nothing(cluster_env):
    name, root = cluster_env
    before_netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    before_rules = _iptables_root()
    up = _cli("up", "--name", name, "--hosts", 2, "--delay", 1)
    assert up.returncode == 0, up.stderr
    status = _cli("status", "--name", name, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert [h["name"] for h in report["hosts"]] == ["node0", "node1"]
    assert all(h["delayer_alive"] for h in report["hosts"]) and report["problems"] == []
    assert len(cluster_netns(name)) == 3
    gone = _cli("down", "--name", name)
    assert gone.returncode == 0, gone.stderr
    assert cluster_netns(name) == [] and processes_of(name, os.path.join(root, name)) == []
    after_netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after_netns - before_netns if n.startswith(f"mpigd-{name}-")}
    assert _iptables_root() == before_rules  # nothing was ever added to the root namespace
    assert not os.path.exists(os.path.join(root, name))
    again = _cli("down", "--name", name)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


@needs_hydra
def test_trainer_across_two_hosts_crosses_the_link(cluster_env, problem, tmp_path):
    name, root = cluster_env
    _, _, data = problem
    with Cluster.up(name, hosts=2, root=root) as c:
        before = c.counters("node1")
        out = tmp_path / "run"
        job = c.run([sys.executable, "-m", "mpigd", "--data", data, "--iters", 20, "--out", out, "--quiet"],
                    n=2, timeout=TIMEOUT)
        assert job.returncode == 0, job
        hosts = [r["host"] for r in json.loads((out / "result.json").read_text())["per_rank"]]
        assert hosts == ["node0", "node1"]
        after = c.counters("node1")
        assert after["rx_bytes"] - before["rx_bytes"] > 20 * 7 * 8  # at least the broadcasts of w


def _pingpong(c, repeat=40):
    job = c.run([sys.executable, "-m", "mpigd.cluster.pingpong", "--repeat", repeat], n=2, timeout=TIMEOUT)
    assert job.returncode == 0, job
    return json.loads(job.stdout.strip().splitlines()[-1])["pingpong"][0]["median_ms"]


@needs_hydra
def test_delay_shows_in_ping_and_mpi_pingpong(cluster_env):
    name, root = cluster_env
    with Cluster.up(name, hosts=2, delay_ms=4, root=root) as c:
        rtts = [r for r in c.ping("node0", c.host("node1").address, count=15, interval=0.02) if r]
        # Measured here: each delayed pass adds 0.1-0.5 ms (the user-space delayer); loaded
        # machines more: assert the delay applies and stays within +2 ms of what was asked.
        assert 8.0 <= statistics.median(rtts) <= 10.0, rtts
        one_way = _pingpong(c)
        assert 4.0 <= one_way <= 6.0, one_way
        c.shape("node1", delay_ms=10, direction="in")  # node0 -> node1 now 10 ms, back 4 ms
        assert 7.0 <= _pingpong(c) <= 9.0


def test_rate_cap_shows_in_a_bulk_transfer(cluster_env):
    from mpigd.cluster.measure import PAYLOAD_PER_FRAME, measure_bulk

    name, root = cluster_env
    with Cluster.up(name, hosts=2, rate="200mbit", root=root) as c:
        row = measure_bulk(c, "node0", "node1", size=12_000_000)
        expected = 200 * PAYLOAD_PER_FRAME
        assert abs(row["measured"] - expected) <= 0.12 * expected, row


def test_partition_stops_traffic_and_heal_restores_it(cluster_env):
    name, root = cluster_env
    with Cluster.up(name, hosts=3, root=root) as c:
        c.partition("node1")
        assert c.ping("node0", c.host("node1").address, count=3, interval=0.01) == [None] * 3
        assert all(c.ping("node0", c.host("node2").address, count=3))  # the others still talk
        assert c.problems() == []
        c.heal("node1")
        assert all(c.ping("node0", c.host("node1").address, count=3))


@needs_hydra
def test_clock_offsets_differ_across_hosts(cluster_env):
    name, root = cluster_env
    with Cluster.up(name, hosts=2, clock_offsets="0,1.5", root=root) as c:
        # Rank 0 prints both clocks: two ranks printing at once can interleave their lines.
        code = ("import time; from mpi4py import MPI; t = MPI.COMM_WORLD.gather(time.monotonic()); "
                "MPI.COMM_WORLD.Get_rank() or print(*(f'{r} {v}' for r, v in enumerate(t)), sep='\\n')")
        job = c.run([sys.executable, "-c", code], n=2, timeout=TIMEOUT)
        assert job.returncode == 0, job
        clocks = dict(line.split() for line in job.stdout.split("\n") if line.strip())
        assert 1.0 <= float(clocks["1"]) - float(clocks["0"]) <= 2.0, clocks


def test_refuses_without_root(cluster_env):
    name, _ = cluster_env
    proc = _cli("up", "--name", name, "--hosts", 2, user=65534)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mpigd: error: the emulated cluster needs root"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_dirty_state_is_repaired_by_up_and_removed_by_down(cluster_env):
    name, root = cluster_env
    c = Cluster.up(name, hosts=2, delay_ms=1, root=root)
    os.kill(c.host("node1").delayer_pid, 9)
    status = _cli("status", "--name", name)
    assert status.returncode == 1 and "node1: delayer" in status.stdout and "DEAD" in status.stdout
    refused = _cli("up", "--name", name, "--hosts", 2)  # broken: up rebuilds it
    assert refused.returncode == 0 and "repairing" in refused.stdout, refused.stdout + refused.stderr
    healthy = _cli("up", "--name", name, "--hosts", 2)
    assert healthy.returncode == 2 and "already up" in healthy.stderr
    subprocess.run(["ip", "netns", "delete", f"mpigd-{name}-node1"], check=True, timeout=30)
    assert _cli("repair", "--name", name).returncode == 2
    assert _cli("down", "--name", name).returncode == 0
    assert cluster_netns(name) == [] and processes_of(name, os.path.join(root, name)) == []


@needs_hydra
def test_run_exit_code_and_timeout(cluster_env):
    name, root = cluster_env
    with Cluster.up(name, hosts=2, root=root):
        failed = _cli("run", "--name", name, "-n", 2, "--", "sh", "-c", "exit 3")
        assert failed.returncode == 3
        slow = _cli("run", "--name", name, "-n", 2, "--timeout", 3, "--", "sleep", "60")
        assert slow.returncode == 124 and "did not finish within 3 s" in slow.stderr
        assert [p for p in processes_of(name, os.path.join(root, name))
                if b"sleep" in open(f"/proc/{p}/cmdline", "rb").read()] == []
