"""The emulated cluster as one object: up, shape, partition, run, status, repair, down.

    from mpigd.cluster import Cluster

    with Cluster.up("t1", hosts=2, delay_ms=5, rate="1gbit") as c:
        c.run(["python", "-m", "mpigd", "--data", "x.h5"], n=2, timeout=120)
        c.shape("node1", delay_ms=10, direction="in")
        c.partition("node1"); c.heal("node1")
    # leaving the block (or c.down()) removes everything

The record (state.py) says what the cluster should be; `apply` makes the kernel agree with
it for one host, `problems` lists where the two differ, `repair` re-applies the record.
The CLI (cli.py) is a thin layer over this class.
"""

import os
import signal
import sys

from ..errors import MpigdError
from . import hosts as _hosts
from . import launch, shaping, state as _state
from .delayer import QUEUE_IN, QUEUE_OUT, write_config
from .health import find_problems
from .system import in_netns, require_root_and_tools, run

DIRECTIONS = ("in", "out", "both")
_DELAYER_TIMEOUT = 30.0


class Cluster:
    """An emulated cluster that is up (see the module docstring)."""

    def __init__(self, record):
        self.state = record

    # --- life cycle ---------------------------------------------------------------------------

    @classmethod
    def up(cls, name=_state.DEFAULT_NAME, hosts=2, delay_ms=0.0, rate=None, clock_offsets=None,
           subnet=_state.DEFAULT_SUBNET, root=None, say=None):
        """Build cluster `name`: `hosts` hosts, one-way delay `delay_ms` between any two (an
        ingress delay on every host), every host's link capped at `rate` both ways ('1gbit'),
        host i's monotonic clock shifted by clock_offsets[i] seconds. Leftovers of a previous
        cluster of that name (a crash, a dead delayer) are removed first; a healthy cluster of
        that name is refused. Verifies that the delay applies (ping) before it returns."""
        require_root_and_tools()
        say = say or (lambda message: None)
        name, root = _state.check_name(name), root or _state.state_root()
        _state.check_subnet(subnet)
        if not 1 <= int(hosts) <= 200:
            raise MpigdError(f"--hosts must be between 1 and 200, got {hosts}")
        offsets = _state.parse_clock_offsets(clock_offsets, int(hosts))
        delay, bits = shaping.check_delay(delay_ms or 0.0), shaping.parse_rate(rate)
        with _state.locked(name, root):
            _clear_leftovers(name, root, say)
            record = _state.new_state(name, root, subnet, int(hosts), offsets)
            record.python = sys.executable
            for host in record.hosts:
                host.in_delay_ms, host.in_rate_bps, host.out_rate_bps = delay, bits, bits
            cluster = cls(record)
            try:
                cluster._build(say)
            except BaseException:
                _hosts.remove(name, record.directory, [h.delayer_pid for h in record.hosts if h.delayer_pid])
                raise
            return cluster

    def _build(self, say):
        record = self.state
        record.save()  # first, so that `down` finds the name even if building fails midway
        _hosts.make_switch(record)
        for host in record.hosts:
            _hosts.make_host(record, host)
        launch.write_ssh(record.directory, record.python)
        for host in record.hosts:
            self._start_delayer(host)
            self._apply(host)
        shaping.set_partitions(record.switch, [])
        self.verify()
        record.phase = "up"
        record.save()
        say(f"cluster {record.name}: {len(record.hosts)} hosts up "
            f"({', '.join(f'{h.name} {h.address}' for h in record.hosts)})")

    @classmethod
    def attach(cls, name=_state.DEFAULT_NAME, root=None):
        """The cluster `name` that is up (refused if there is none)."""
        require_root_and_tools()
        return cls(_state.require(_state.check_name(name), root))

    def down(self):
        """Remove this cluster entirely (idempotent)."""
        return down(self.state.name, self.state.root)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.down()

    # --- what the hosts are -------------------------------------------------------------------

    @property
    def name(self):
        return self.state.name

    @property
    def hosts(self):
        """HostState of every host, node0 first (name, address, netns, shaping, ...)."""
        return list(self.state.hosts)

    def host(self, name_or_address):
        return self.state.host(name_or_address)

    # --- shaping --------------------------------------------------------------------------------

    def shape(self, host, delay_ms=None, rate=None, direction="both"):
        """Set `host`'s one-way delay (ms) and/or rate ('100mbit'; 'none' removes the cap) for
        packets arriving at it (in), leaving it (out) or both; unset arguments stay as they are."""
        if direction not in DIRECTIONS:
            raise MpigdError(f"--direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
        delay = shaping.check_delay(delay_ms)
        bits = shaping.parse_rate(rate) if rate is not None else None
        with _state.locked(self.name, self.state.root):
            self._reload()
            target = self.state.host(host)
            for side in ("in", "out"):
                if direction in (side, "both"):
                    if delay is not None:
                        setattr(target, f"{side}_delay_ms", delay)
                    if rate is not None:
                        setattr(target, f"{side}_rate_bps", bits)
            self._apply(target)
            self.state.save()

    def partition(self, host):
        """Cut `host` off: every frame from or to it is dropped in the switch (silently)."""
        self._set_partitioned(host, True)

    def heal(self, host):
        """Undo partition(host)."""
        self._set_partitioned(host, False)

    def _set_partitioned(self, host, value):
        with _state.locked(self.name, self.state.root):
            self._reload()
            self.state.host(host).partitioned = value
            shaping.set_partitions(self.state.switch, [h.name for h in self.state.hosts if h.partitioned])
            self.state.save()

    def _reload(self):
        self.state = _state.require(self.name, self.state.root)

    def _apply(self, host):
        """Make the kernel do what the record says for `host`'s link (idempotent).

        Delay first goes to the delayer, then the rule that feeds it is added: the rule is
        fail-closed, so a packet must never be queued before the delayer knows its delay."""
        write_config(self._delayer_file(host, "json"), host.in_delay_ms, host.out_delay_ms)
        if self.delayer_alive(host):
            os.kill(host.delayer_pid, signal.SIGHUP)
        shaping.set_queue_rule(host.netns, "in", host.in_delay_ms > 0)
        shaping.set_queue_rule(host.netns, "out", host.out_delay_ms > 0)
        shaping.set_rate(host.netns, shaping.IFACE, host.out_rate_bps)
        shaping.set_rate(self.state.switch, host.name, host.in_rate_bps)

    # --- delayers ---------------------------------------------------------------------------------

    def _delayer_file(self, host, kind):
        return self.state.path(f"{host.name}.delayer.{kind}")

    def _start_delayer(self, host):
        write_config(self._delayer_file(host, "json"), host.in_delay_ms, host.out_delay_ms)
        argv = ["nsenter", f"--net={host.netns_path}", "--", self.state.python, "-m",
                "mpigd.cluster.delayer", "--config", self._delayer_file(host, "json"),
                "--pidfile", self._delayer_file(host, "pid"), "--log", self._delayer_file(host, "log")]
        said = run(argv, timeout=_DELAYER_TIMEOUT).stdout.split()
        host.delayer_pid = int(said[1])

    def delayer_alive(self, host):
        """True if `host`'s delayer runs and holds both of its queues."""
        if not host.delayer_pid or not _hosts.is_delayer(host.delayer_pid, self.state.directory):
            return False
        queues = self.queue_stats(host)
        return all(queues.get(q, {}).get("portid") for q in (QUEUE_IN, QUEUE_OUT))

    def queue_stats(self, host):
        """{queue: {portid, queued, dropped, user_dropped, packets}} from the kernel's view."""
        proc = run(in_netns(host.netns, ["cat", "/proc/net/netfilter/nfnetlink_queue"]), check=False)
        stats = {}
        for line in proc.stdout.splitlines():
            fields = [int(f) for f in line.split()]
            if len(fields) >= 8:
                stats[fields[0]] = {"portid": fields[1], "queued": fields[2], "dropped": fields[5],
                                    "user_dropped": fields[6], "packets": fields[7]}
        return stats

    # --- checking -------------------------------------------------------------------------------

    def problems(self):
        """Where the kernel differs from the record: missing namespaces, a dead delayer,
        missing rules or shapers. [] for a healthy cluster."""
        return find_problems(self)

    def verify(self, pings=5):
        """Ping from node0 to every other host: each must answer, no faster than the delays
        asked (they apply) and not much slower (the delayer keeps up). Raises otherwise."""
        first = self.state.hosts[0]
        for other in self.state.hosts[1:]:
            if first.partitioned or other.partitioned:
                continue
            expected = first.out_delay_ms + other.in_delay_ms + other.out_delay_ms + first.in_delay_ms
            rtts = [r for r in self.ping(first.name, other.address, count=pings) if r is not None]
            if not rtts:
                raise MpigdError(f"{first.name} cannot reach {other.name} ({other.address}): no ping answered")
            best = min(rtts)
            if best < expected - 0.1 or best > expected + max(2.0, 0.2 * expected):
                raise MpigdError(
                    f"the delay does not apply: ping {first.name} -> {other.name} took {best:.2f} ms "
                    f"at best, expected {expected:g} ms + ~0.1 (delayer log: "
                    f"{self._delayer_file(other, 'log')})")

    def ping(self, source, address, count=5, interval=0.05):
        """RTTs (ms, None if lost) of ICMP echoes from host `source` to `address`."""
        import json

        src = self.host(source)
        argv = [*src.nsenter_argv(), "--", self.state.python, "-m", "mpigd.cluster.probes",
                "ping", address, "--count", str(count), "--interval", str(interval)]
        proc = run(argv, timeout=30 + count * (1 + interval))
        return json.loads(proc.stdout.strip().splitlines()[-1])["rtt_ms"]

    def counters(self, host):
        """Bytes and packets through `host`'s eth0 so far: {rx_bytes, tx_bytes, rx_packets, tx_packets}."""
        import json

        target = self.host(host)
        proc = run(["ip", "-n", target.netns, "-j", "-s", "link", "show", shaping.IFACE])
        stats = json.loads(proc.stdout)[0]["stats64"]
        return {f"{way}_{what}": stats[way][what] for way in ("rx", "tx") for what in ("bytes", "packets")}

    def repair(self, say=None):
        """Restart dead delayers and re-apply every host's shaping from the record."""
        say = say or (lambda message: None)
        with _state.locked(self.name, self.state.root):
            self._reload()
            missing = [ns for ns in [self.state.switch, *(h.netns for h in self.state.hosts)]
                       if ns not in _hosts.existing_netns()]
            if missing:
                raise MpigdError(f"cluster {self.name!r} cannot be repaired: namespace(s) {', '.join(missing)} "
                                 f"are gone; `python -m mpigd.cluster down --name {self.name}` and `up` again")
            for host in self.state.hosts:
                if not self.delayer_alive(host):
                    _hosts.kill_all([host.delayer_pid] if host.delayer_pid and _hosts.is_delayer(
                        host.delayer_pid, self.state.directory) else [])
                    self._start_delayer(host)
                    say(f"{host.name}: delayer restarted (pid {host.delayer_pid})")
                self._apply(host)
            shaping.set_partitions(self.state.switch, [h.name for h in self.state.hosts if h.partitioned])
            launch.write_ssh(self.state.directory, self.state.python)
            self.state.save()

    # --- running things in the hosts --------------------------------------------------------------

    def exec_argv(self, host, argv):
        """argv that runs `argv` inside `host` (its network, hostname and clock)."""
        return [*self.host(host).nsenter_argv(), "--", *map(str, argv)]

    def run(self, command, n=None, hosts=None, per_host=None, env=None, timeout=600.0, capture=True):
        """Run `command` as an MPI job across the hosts (see launch.py); returns JobResult.

        hosts: 'node0:2,node1:2' or {host: slots}; per_host: slots on every host; default
        one rank per host. Never outlives `timeout` (MpigdError with exit_code 124)."""
        argv, job_env, token = self.job(command, n=n, hosts=hosts, per_host=per_host, env=env)
        code, out, err = launch.run_job(argv, job_env, token, timeout, capture=capture)
        return JobResult(argv, code, out, err)

    def job(self, command, n=None, hosts=None, per_host=None, env=None):
        """(argv, environment, token) of a job, for a caller that starts it itself (then end it
        with launch.end_job(proc, token) if it must be stopped)."""
        spec, count = launch.placement(self.state, n, hosts, per_host)
        argv = launch.mpiexec_argv(self.state, command, count, spec, launch.hydra_mpiexec())
        job_env, token = launch.job_environment(env)
        return argv, job_env, token

    def launcher_template(self, per_host=None, timeout=None):
        """The `--launcher` of `python -m mpigd scale`: a command line with {n}."""
        argv = [self.state.python, "-m", "mpigd.cluster", "run", "--name", self.name]
        if per_host:
            argv += ["--per-host", str(per_host)]
        if timeout:
            argv += ["--timeout", str(timeout)]
        return " ".join(map(_quote, argv)) + " -n {n} --"

    def status(self):
        """The record plus what the kernel says: a dict (cli.py prints it as a table)."""
        self._reload()
        hosts = []
        for host in self.state.hosts:
            alive = self.delayer_alive(host)
            queues = self.queue_stats(host) if host.netns in _hosts.existing_netns() else {}
            hosts.append({**_host_record(host), "delayer_alive": alive,
                          "delayer_dropped": sum(q["dropped"] + q["user_dropped"] for q in queues.values())})
        return {"name": self.name, "directory": self.state.directory, "phase": self.state.phase,
                "created": self.state.created, "cpus": os.cpu_count(), "hosts": hosts,
                "problems": self.problems()}


class JobResult:
    """What a job left: argv, returncode, stdout, stderr (None unless captured)."""

    def __init__(self, argv, returncode, stdout, stderr):
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr

    def __repr__(self):
        return f"<JobResult rc={self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}>"


def down(name=_state.DEFAULT_NAME, root=None):
    """Remove cluster `name` and whatever a crash left of it; returns what was removed."""
    require_root_and_tools()
    name, root = _state.check_name(name), root or _state.state_root()
    with _state.locked(name, root):
        try:
            record = _state.load(name, root)
        except MpigdError:
            record = None  # unreadable: remove it by names alone
        pids = [h.delayer_pid for h in record.hosts if h.delayer_pid] if record else []
        return _hosts.remove(name, os.path.join(root, name), pids)


def _clear_leftovers(name, root, say):
    directory = os.path.join(root, name)
    try:
        record = _state.load(name, root)
    except MpigdError:
        record = None
    if record is not None and record.phase == "up":
        problems = Cluster(record).problems()
        if not problems:
            raise MpigdError(f"cluster {name!r} is already up ({len(record.hosts)} hosts); use it, or "
                             f"`python -m mpigd.cluster down --name {name}` first")
        say(f"cluster {name}: repairing a broken cluster of that name ({'; '.join(problems)})")
    pids = [h.delayer_pid for h in record.hosts if h.delayer_pid] if record else []
    removed = _hosts.remove(name, directory, pids)
    if removed:
        say(f"cluster {name}: removed leftovers: {', '.join(removed)}")


def _host_record(host):
    return {"name": host.name, "address": host.address, "netns": host.netns,
            "clock_offset_s": host.clock_offset_s, "in_delay_ms": host.in_delay_ms,
            "out_delay_ms": host.out_delay_ms, "in_rate_bps": host.in_rate_bps,
            "out_rate_bps": host.out_rate_bps, "partitioned": host.partitioned,
            "delayer_pid": host.delayer_pid}


def _quote(word):
    import shlex

    return shlex.quote(str(word))
