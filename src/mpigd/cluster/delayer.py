"""A host's one-way delay: a daemon that holds every queued packet D ms, then releases it.

This kernel has no netem, so delay is made in user space: iptables rules in the host's
network namespace send its packets to NFQUEUE queues (0 = arriving at the host, 1 =
leaving it, see shaping.py); this process, bound to both queues, notes when each packet
came and gives it its ACCEPT verdict D ms later. Packets of a queue leave in the order they
came (a delay that shrinks never lets a later packet overtake), and all due packets of a
queue leave with one batch verdict. It runs at real-time priority so that busy-polling MPI
ranks on the same cores do not make it late.

    nsenter --net=/run/netns/X python -m mpigd.cluster.delayer --config X.delayer.json \
        --pidfile X.delayer.pid --log X.delayer.log

is started inside the host's network namespace (NFQUEUE queues are per namespace); it
forks a daemon, prints `ready PID` once the queues are bound, and exits. The config is
{"delay_ms": {"0": in, "1": out}}; SIGHUP re-reads it, SIGUSR1 writes statistics next to
it (<config>.stats), SIGTERM releases every held packet and exits.
"""

import argparse
import collections
import gc
import json
import os
import select
import signal
import sys
import time

QUEUE_IN, QUEUE_OUT = 0, 1
QUEUES = (QUEUE_IN, QUEUE_OUT)
EARLY_S = 20e-6  # release a packet this close to its due time rather than sleep again
LATE_S = 0.5e-3  # a release later than this counts as late in the statistics


class _Stop(Exception):
    pass


def read_config(path):
    """{queue: delay in seconds} from the config file."""
    with open(path) as handle:
        delays = json.load(handle)["delay_ms"]
    return {int(q): max(0.0, float(ms)) / 1e3 for q, ms in delays.items()}


def write_config(path, in_delay_ms, out_delay_ms):
    """Write a delayer config atomically (the daemon may read it at any moment)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump({"delay_ms": {str(QUEUE_IN): in_delay_ms, str(QUEUE_OUT): out_delay_ms}}, handle)
    os.replace(temporary, path)


class Delayer:
    """The held packets of each queue, in arrival order, with the time each is due."""

    def __init__(self, queue_socket, delays):
        self.sock, self.delays = queue_socket, delays
        self.held = {q: collections.deque() for q in QUEUES}
        self.last_due = dict.fromkeys(QUEUES, 0.0)
        self.stats = {"packets": dict.fromkeys(QUEUES, 0), "late": 0, "max_late_ms": 0.0,
                      "max_held": 0, "realtime": False}

    def take(self, packets, now):
        for queue, packet_id in packets:
            held = self.held.setdefault(queue, collections.deque())
            due = max(now + self.delays.get(queue, 0.0), self.last_due.get(queue, 0.0))
            self.last_due[queue] = due
            held.append((due, packet_id))
            self.stats["max_held"] = max(self.stats["max_held"], len(held))

    def release_due(self, now):
        for queue, held in self.held.items():
            last = None
            while held and held[0][0] <= now + EARLY_S:
                due, last = held.popleft()
                self._count(queue, now - due)
            if last is not None:
                self.sock.release(queue, last)

    def release_all(self):
        for queue, held in self.held.items():
            if held:
                self.sock.release(queue, held[-1][1])
                held.clear()

    def next_due(self):
        heads = [held[0][0] for held in self.held.values() if held]
        return min(heads) if heads else None

    def _count(self, queue, late):
        stats = self.stats
        stats["packets"][queue] = stats["packets"].get(queue, 0) + 1
        if late > LATE_S:
            stats["late"] += 1
        stats["max_late_ms"] = max(stats["max_late_ms"], 1e3 * late)


def serve(delayer, config_path):
    """The loop: sleep until a packet comes, one is due, or a signal; take the new, release the due.

    Signals reach the loop through a wakeup pipe, so SIGHUP and SIGUSR1 take effect at once
    even while no packet flows."""
    flags = {"reload": False, "stats": False}
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)

    def on_stop(signum, frame):
        raise _Stop()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda s, f: flags.__setitem__("reload", True))
    signal.signal(signal.SIGUSR1, lambda s, f: flags.__setitem__("stats", True))
    try:
        while True:
            due = delayer.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            ready, _, _ = select.select([delayer.sock, wake_read], [], [], timeout)
            now = time.monotonic()
            if wake_read in ready:
                os.read(wake_read, 512)
            if flags["reload"]:
                flags["reload"] = False
                delayer.delays = read_config(config_path)
                _log(f"delays now {delayer.delays}")
            if delayer.sock in ready:
                delayer.take(delayer.sock.read_packets(), now)
            delayer.release_due(time.monotonic())
            if flags["stats"]:
                flags["stats"] = False
                _write_stats(config_path + ".stats", delayer.stats)
    except _Stop:
        delayer.release_all()
        _write_stats(config_path + ".stats", delayer.stats)
        _log(f"stopped; statistics {delayer.stats}")


def _write_stats(path, stats):
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(stats, handle)
    os.replace(temporary, path)


def _log(message):
    print(time.strftime("%H:%M:%S ") + message, file=sys.stderr, flush=True)


def _setup(args):
    """Bind both queues of this network namespace, go real-time. Returns the Delayer."""
    from .nfqueue import QueueSocket

    queue_socket = QueueSocket()
    for queue in QUEUES:
        queue_socket.bind(queue)
    delayer = Delayer(queue_socket, read_config(args.config))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.priority))
        delayer.stats["realtime"] = True
    except (OSError, AttributeError) as exc:
        _log(f"warning: no real-time priority ({exc}); delays will be less accurate under load")
    return delayer


def _daemon(args, report_fd):
    """The forked child: set up, say `ready PID` (or the error) through the pipe, serve."""
    os.setsid()
    log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    try:
        delayer = _setup(args)
        with open(args.pidfile, "w") as handle:
            handle.write(f"{os.getpid()}\n")
    except Exception as exc:  # noqa: BLE001 - told to the starting process, which reports it
        os.write(report_fd, f"error: {exc}".encode())
        os._exit(1)
    _log(f"delayer pid {os.getpid()}: delays {delayer.delays}, "
         f"real-time {delayer.stats['realtime']}")
    os.write(report_fd, f"ready {os.getpid()}".encode())
    os.close(report_fd)
    gc.freeze()
    gc.disable()  # the loop makes no reference cycles; a collection would only add jitter
    serve(delayer, args.config)
    os._exit(0)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpigd.cluster.delayer",
                                     description="NFQUEUE one-way delay daemon of one emulated host")
    parser.add_argument("--config", required=True, help='JSON {"delay_ms": {"0": in, "1": out}}')
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--priority", type=int, default=10, help="SCHED_FIFO priority [10]")
    args = parser.parse_args(argv)
    read_fd, write_fd = os.pipe()
    if os.fork() == 0:
        os.close(read_fd)
        _daemon(args, write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        said = pipe.read().decode(errors="replace")
    if not said.startswith("ready "):
        print(f"mpigd: error: delayer {args.config}: {said or 'exited before it was ready'} "
              f"(log: {args.log})", file=sys.stderr)
        return 1
    print(said)
    return 0


if __name__ == "__main__":
    sys.exit(main())
