"""The hosts themselves: namespaces, the switch, addresses, clocks — made, and removed again.

Layout (nothing is added to the root network namespace; the kernel objects of a cluster
live in namespaces named after it):

    mpigd-<name>-switch    a namespace holding bridge br0 and one port per host
    mpigd-<name>-nodeI     host I: eth0 = 10.x.y.(10+I)/24, veth to port nodeI of br0,
                           TCP congestion control reno, IPv6 off (every packet is IPv4,
                           so every packet meets the delay rules)
    <dir>/ns/nodeI.uts     host I's UTS namespace, hostname nodeI (a bind mount)
    <dir>/ns/nodeI.time    host I's time namespace if it has a clock offset (a bind mount)

Removal works from the names alone, so it also cleans up after a crash that left no record.
"""

import os
import shutil
import signal
import time

from ..errors import MpigdError
from .state import switch_netns
from .system import in_netns, run

BRIDGE = "br0"
# The kernel default here is bbr, which paces multi-packet sends (+1.4 ms for 8 KB over a
# 5 ms link); a namespace may choose from tcp_allowed_congestion_control, which has reno.
_SYSCTLS = {
    "net/ipv4/tcp_congestion_control": "reno",
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
}


def _sysctl(netns, values):
    for key, value in values.items():
        run(in_netns(netns, ["tee", f"/proc/sys/{key}"]), input=value + "\n")


def existing_netns():
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def cluster_netns(name):
    """The network namespaces that belong to cluster `name` (its names have no dash)."""
    prefix = f"mpigd-{name}-"
    return [ns for ns in existing_netns() if ns.startswith(prefix)]


def make_switch(state):
    switch = state.switch
    run(["ip", "netns", "add", switch])
    _sysctl(switch, {k: v for k, v in _SYSCTLS.items() if "ipv6" in k})
    run(["ip", "-n", switch, "link", "set", "lo", "up"])
    run(["ip", "-n", switch, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", switch, "link", "set", BRIDGE, "up"])


def make_host(state, host):
    """Network namespace, veth into the switch, address, sysctls, hostname, clock."""
    run(["ip", "netns", "add", host.netns])
    _sysctl(host.netns, _SYSCTLS)
    run(["ip", "-n", state.switch, "link", "add", host.name, "type", "veth",
         "peer", "name", "eth0", "netns", host.netns])
    run(["ip", "-n", state.switch, "link", "set", host.name, "master", BRIDGE, "up"])
    run(["ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
    run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
    os.makedirs(os.path.dirname(host.uts), exist_ok=True)
    open(host.uts, "w").close()
    run(["unshare", f"--uts={host.uts}", "hostname", host.name])
    if host.time:
        open(host.time, "w").close()
        run([state.python, "-m", "mpigd.cluster.timens", host.time, repr(host.clock_offset_s)])


def same_namespace(proc_ns_link, bound_path):
    """True if /proc/PID/ns/<kind> is the namespace bound at bound_path (same nsfs inode)."""
    try:
        a, b = os.stat(proc_ns_link), os.stat(bound_path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def processes_of(name, directory):
    """PIDs of every process inside cluster `name`: in one of its network, UTS or time
    namespaces, or started from its directory (delayers); never this process."""
    netns = [f"/run/netns/{ns}" for ns in cluster_netns(name)]
    bound = [os.path.join(directory, "ns", f) for f in _listdir(os.path.join(directory, "ns"))]
    found = []
    for entry in _listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        links = {kind: f"/proc/{pid}/ns/{kind}" for kind in ("net", "uts", "time")}
        inside = any(same_namespace(links["net"], path) for path in netns) or any(
            same_namespace(links["uts"], path) or same_namespace(links["time"], path) for path in bound)
        cmdline = _cmdline(pid)
        if inside or (directory.encode() in cmdline and b"mpigd.cluster" in cmdline):
            found.append(pid)
    return found


def _listdir(path):
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def is_delayer(pid, directory):
    """True if pid is a delayer of the cluster in `directory` (not a reused PID)."""
    cmdline = _cmdline(pid)
    return b"mpigd.cluster.delayer" in cmdline and directory.encode() in cmdline and alive(pid)


def alive(pid):
    """True if pid runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_all(pids, grace=3.0):
    """SIGTERM, wait up to `grace` s, then SIGKILL what is left; returns the PIDs that were alive."""
    pids = [pid for pid in pids if alive(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
    return pids


def _mounts_under(directory):
    prefix = os.path.realpath(directory) + "/"
    found = []
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix):
                    found.append(point)
    except OSError:
        pass
    return sorted(found, key=len, reverse=True)


def remove(name, directory, delayer_pids=()):
    """Remove every trace of cluster `name` (processes, namespaces, mounts, its directory).

    Delayers go first and gently (SIGTERM releases the packets they hold), then every other
    process in the cluster, then the namespaces. Returns a list of what was removed.
    """
    removed = []
    gone = kill_all([pid for pid in delayer_pids if is_delayer(pid, directory)])
    gone += kill_all(processes_of(name, directory))
    if gone:
        removed.append(f"{len(gone)} process{'es' if len(gone) != 1 else ''}")
    for netns in cluster_netns(name):
        run(["ip", "netns", "delete", netns])
        removed.append(f"network namespace {netns}")
    for point in _mounts_under(directory):
        run(["umount", point])
        removed.append(f"mount {point}")
    if os.path.isdir(directory):
        shutil.rmtree(directory)
        removed.append(f"directory {directory}")
    if switch_netns(name) in existing_netns():
        raise MpigdError(f"network namespace {switch_netns(name)} is still there after removal")
    return removed
