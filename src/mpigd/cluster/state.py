"""What an emulated cluster is made of, recorded on disk: the truth for status, down, repair.

One directory per cluster, <root>/<name>/ (root = $MPIGD_CLUSTER_DIR or /run/mpigd-cluster,
a tmpfs that is gone after a reboot, like the namespaces themselves):

    state.json            this module's ClusterState (hosts, addresses, shaping, pids)
    ssh                   hydra's ssh stand-in for this cluster (launch.py)
    ns/<host>.uts         the host's UTS namespace (hostname), a bind mount
    ns/<host>.time        the host's time namespace (monotonic offset), a bind mount
    <host>.delayer.*      the host's delayer: config (json), pid, log

Every name the kernel sees carries the cluster name (network namespaces
mpigd-<name>-<host>, mpigd-<name>-switch), so clusters of different names never meet.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import time

from ..errors import MpigdError

DEFAULT_NAME = "default"
DEFAULT_SUBNET = "10.200.0"
STATE = "state.json"
_NAME = re.compile(r"^[a-z][a-z0-9]{0,19}$")
_SUBNET = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


def state_root():
    """Where clusters are recorded: $MPIGD_CLUSTER_DIR, else /run/mpigd-cluster."""
    return os.environ.get("MPIGD_CLUSTER_DIR") or "/run/mpigd-cluster"


def check_name(name):
    if not _NAME.match(name or ""):
        raise MpigdError(f"--name must be a lower-case letter and up to 19 more letters or digits "
                         f"(it becomes part of namespace names); got {name!r}")
    return name


def check_subnet(subnet):
    """The first three octets of the cluster's /24, e.g. 10.200.0 (hosts are .10, .11, ...)."""
    match = _SUBNET.match(subnet or "")
    if not match or any(int(part) > 255 for part in match.groups()):
        raise MpigdError(f"--subnet must be three octets like 10.200.0 (the hosts get "
                         f"10.200.0.10, 10.200.0.11, ...); got {subnet!r}")
    return subnet


def parse_clock_offsets(offsets, count):
    """Per-host offsets (s): a list of `count` numbers, or one number = step between hosts."""
    if offsets in (None, "", 0, [], ()):
        return None
    if isinstance(offsets, str):
        try:
            offsets = [float(x) for x in offsets.split(",") if x.strip()]
        except ValueError:
            raise MpigdError(f"--clock-offset must be seconds, one per host (0,1.5,3) or one step "
                             f"(1.5 gives host i an offset of i*1.5 s); got {offsets!r}") from None
    if isinstance(offsets, (int, float)):
        offsets = [offsets]
    offsets = [float(x) for x in offsets]
    if len(offsets) == 1:
        offsets = [i * offsets[0] for i in range(count)]
    if len(offsets) != count:
        raise MpigdError(f"--clock-offset gives {len(offsets)} offsets for {count} hosts; give one per "
                         "host or a single step")
    if any(abs(x) > 1e6 for x in offsets):
        raise MpigdError("--clock-offset values must be within +-1e6 s")
    return offsets


def netns_name(cluster, host):
    return f"mpigd-{cluster}-{host}"


def switch_netns(cluster):
    return f"mpigd-{cluster}-switch"


@dataclasses.dataclass
class HostState:
    """One emulated host: namespaces, address, and its link's shaping per direction.

    Direction is seen from the host: `in` = packets arriving at it, `out` = leaving it.
    The one-way delay from A to B is A.out_delay_ms + B.in_delay_ms; what A sends to B is
    capped at min(A.out_rate_bps, B.in_rate_bps).
    """

    name: str
    index: int
    address: str
    netns: str
    uts: str
    time: str | None = None
    clock_offset_s: float = 0.0
    in_delay_ms: float = 0.0
    out_delay_ms: float = 0.0
    in_rate_bps: int | None = None  # bits per second; None = unshaped
    out_rate_bps: int | None = None
    partitioned: bool = False
    delayer_pid: int | None = None

    @property
    def netns_path(self):
        return f"/run/netns/{self.netns}"

    def nsenter_argv(self):
        """`nsenter` options that put a command into this host (net, hostname, clock)."""
        argv = ["nsenter", f"--net={self.netns_path}", f"--uts={self.uts}"]
        if self.time:
            argv.append(f"--time={self.time}")
        return argv


@dataclasses.dataclass
class ClusterState:
    name: str
    root: str
    subnet: str
    hosts: list
    phase: str = "building"  # "up" once every part is in place and verified
    created: str = ""
    python: str = ""  # the interpreter of the delayers and the ssh stand-in

    @property
    def directory(self):
        return os.path.join(self.root, self.name)

    @property
    def switch(self):
        return switch_netns(self.name)

    def path(self, *parts):
        return os.path.join(self.directory, *parts)

    def host(self, name_or_address):
        for host in self.hosts:
            if name_or_address in (host.name, host.address):
                return host
        names = ", ".join(h.name for h in self.hosts)
        raise MpigdError(f"cluster {self.name!r} has no host {name_or_address!r} (hosts: {names})")

    def save(self):
        os.makedirs(self.directory, exist_ok=True)
        data = dataclasses.asdict(self)
        temporary = self.path(STATE + ".tmp")
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(temporary, self.path(STATE))


def new_state(name, root, subnet, host_count, clock_offsets):
    hosts = []
    for i in range(host_count):
        host = f"node{i}"
        offset = float(clock_offsets[i]) if clock_offsets else 0.0
        hosts.append(HostState(
            name=host, index=i, address=f"{subnet}.{10 + i}", netns=netns_name(name, host),
            uts=os.path.join(root, name, "ns", f"{host}.uts"),
            time=os.path.join(root, name, "ns", f"{host}.time") if offset else None,
            clock_offset_s=offset))
    return ClusterState(name=name, root=root, subnet=subnet, hosts=hosts,
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def load(name, root=None):
    """The recorded cluster, or None if there is none; a damaged record raises."""
    root = root or state_root()
    path = os.path.join(root, name, STATE)
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MpigdError(f"{path} is unreadable ({exc}); `python -m mpigd.cluster down --name "
                         f"{name}` removes what is left of that cluster") from None
    try:
        hosts = [HostState(**h) for h in data.pop("hosts")]
        return ClusterState(hosts=hosts, **data)
    except (TypeError, KeyError) as exc:
        raise MpigdError(f"{path} is not a cluster record of this mpigd version ({exc}); "
                         f"`python -m mpigd.cluster down --name {name}` removes it") from None


def require(name, root=None):
    state = load(name, root)
    if state is None:
        raise MpigdError(f"no cluster {name!r} is up (in {root or state_root()}); start one with "
                         f"`python -m mpigd.cluster up --name {name} --hosts N`")
    return state


@contextlib.contextmanager
def locked(name, root=None, timeout=120.0):
    """Serialize the commands that change clusters (up, shape, repair, down).

    The lock is the state root directory itself (flock on it), so no lock file is left
    behind; clusters of one root take turns, which costs seconds at most."""
    root = root or state_root()
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MpigdError(f"cluster {name!r}: another command has been changing the clusters "
                                     f"in {root} for {timeout:g} s (lock held); try again") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
