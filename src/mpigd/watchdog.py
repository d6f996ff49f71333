"""The stall watchdog: a job whose ranks stop answering ends with one message, exit 124.

MPI has no timeout: a rank frozen by SIGSTOP, a swapping node or a dropped link leaves the
others spinning inside the collective forever. So every rank also runs a daemon thread
with a side channel that never rides on the blocked collective:

* at start, one buffer Allgather exchanges each rank's host name, IPv4 addresses and the
  port of a UDP socket (plus rank 0's run directory and a job token);
* twice a second each thread sends every other rank a 64-byte heartbeat: rank, stage,
  step (iteration), phase, last checkpoint, and how long since its own last progress;
  the loops mark their position by storing ints into `progress.STATE`, nothing more;
* when this rank's step has not advanced for the stall limit, the job is stalled. Ranks
  that sent nothing for SILENT_S are frozen, dead or cut off; live ranks still in their
  map step (or loading, or writing) are the slow ones; the rest waited in a collective.
  The lowest live rank prints one line saying so, with the checkpoint and the resume
  command, and calls MPI_Abort(124): the launcher (mpiexec, srun) then kills every rank,
  a stopped one too (SIGKILL reaches a stopped process). The other live ranks abort
  themselves a few seconds later if the speaker could not.

UDP, not one-sided MPI: a window's passive-target progress can depend on the very rank
that froze, and an RMA call made from the thread would queue behind the blocked
collective in MPICH's global lock; a plain socket depends on nothing but the network.
"""

import fcntl
import os
import secrets
import select
import socket
import struct
import sys
import threading
import time

import numpy as np

from . import progress
from .errors import ExitCode

INTERVAL_S = 0.5         # heartbeat period
SILENT_S = 2.0           # a rank unheard this long counts as silent (frozen, dead, cut off)
FLOOR_S = 60.0           # default limit: at least this ...
FACTOR = 10.0            # ... and at least this many times the slowest step seen
GENEROUS_FACTOR = 10.0   # while some rank loads or writes, the limit is stretched ...
GENEROUS_FLOOR_S = 120.0  # ... to at least this
SPEAKER_GRACE_S = 3.0    # a non-speaker waits this long for the speaker's abort
RECORD_BYTES = 1024
_PACKET = struct.Struct("<8q")
_MAGIC = 0x6D70696764776431  # "mpigdwd1"


def _addresses() -> list[str]:
    """This host's IPv4 addresses (loopback last), read from the interfaces themselves."""
    found = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe.fileno(), 0x8915,  # SIOCGIFADDR
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            found.append(socket.inet_ntoa(raw[20:24]))
    finally:
        probe.close()
    outside = [a for a in found if not a.startswith("127.")]
    return outside[:4] or ["127.0.0.1"]


def _exchange(comm, record: dict) -> list[dict]:
    """Collective: every rank's record (JSON text in a uint8 buffer, never a pickle)."""
    import json

    mine = np.zeros(RECORD_BYTES, dtype=np.uint8)
    raw = json.dumps(record).encode()[:RECORD_BYTES - 1]
    mine[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    table = np.zeros((comm.size, RECORD_BYTES), dtype=np.uint8)
    comm.Allgather(mine, table)
    return [json.loads(bytes(row[: int(np.argmin(row))]).decode()) for row in table]


class Peer:
    """What this rank last heard from another rank."""

    def __init__(self, record: dict, same_host: bool):
        self.host, self.port = record["host"], record["port"]
        self.targets = [("127.0.0.1", self.port)] if same_host else \
            [(a, self.port) for a in record["addresses"]]
        self.heard = time.monotonic()   # the start counts as heard: all were alive at the Allgather
        self.state = (progress.LOADING, 0, progress.WAITING, -1)
        self.idle_s = 0.0


def default_limit(slowest_step_s: float) -> float:
    """The stall limit without --stall-timeout: FLOOR_S, or FACTOR x the slowest step."""
    return max(FLOOR_S, FACTOR * slowest_step_s)


def generous(limit_s: float) -> float:
    """The limit while some rank loads data or writes files (no iterations happen then)."""
    return max(GENEROUS_FACTOR * limit_s, GENEROUS_FLOOR_S)


class Watchdog:
    """One rank's watchdog thread; start() is collective, stop() is local."""

    def __init__(self, comm, limit_s: float | None, run_dir: str | None, option_text: str):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.fixed = limit_s            # None: the default rule
        self.option_text = option_text
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        self.host = socket.gethostname()
        record = {"host": self.host, "port": self.sock.getsockname()[1], "addresses": _addresses(),
                  "token": secrets.randbits(62) if self.rank == 0 else 0,
                  "run_dir": os.path.abspath(run_dir) if run_dir else None}
        records = _exchange(comm, record)
        self.token, self.run_dir = records[0]["token"], records[0]["run_dir"]
        self.hosts = [r["host"] for r in records]
        self.peers = {r: Peer(rec, rec["host"] == self.host) for r, rec in enumerate(records)
                      if r != self.rank}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpigd-watchdog", daemon=True)
        self._seq = 0
        self._position = (progress.STATE[progress.STAGE], progress.STATE[progress.STEP])
        self._progressed = time.monotonic()
        self._slowest = 0.0

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=2 * INTERVAL_S)
        self.sock.close()

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        due = 0.0
        while not self._halt.is_set():
            now = time.monotonic()
            if now >= due:
                self._note_progress(now)
                self._beat(now)
                due = now + INTERVAL_S
                if self._stalled(now):
                    self._fire(now)
                    return
            try:
                readable, _, _ = select.select([self.sock], [], [], max(0.0, due - time.monotonic()))
            except (OSError, ValueError):  # stop() closed the socket under a late thread
                return
            if readable:
                self._drain()

    def _note_progress(self, now: float) -> None:
        position = (progress.STATE[progress.STAGE], progress.STATE[progress.STEP])
        if position != self._position:
            if position[0] == self._position[0] and position[0] in (progress.LOOP, progress.POWER):
                self._slowest = max(self._slowest, now - self._progressed)
            self._position, self._progressed = position, now

    def _beat(self, now: float) -> None:
        state = progress.STATE
        self._seq += 1
        packet = _PACKET.pack(_MAGIC, self.token, self.rank, state[progress.STAGE],
                              state[progress.STEP], state[progress.PHASE],
                              state[progress.CHECKPOINT], int((now - self._progressed) * 1000))
        for peer in self.peers.values():
            for target in peer.targets:
                try:
                    self.sock.sendto(packet, target)
                except OSError:  # a dropped link (EPERM from a firewall, no route): stay silent
                    pass

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) != _PACKET.size:
                continue
            magic, token, rank, stage, step, phase, ckpt, idle_ms = _PACKET.unpack(data)
            peer = self.peers.get(rank)
            if magic != _MAGIC or token != self.token or peer is None:
                continue
            peer.heard, peer.state, peer.idle_s = time.monotonic(), (stage, step, phase, ckpt), idle_ms / 1000

    def limit(self, now: float) -> float:
        """The stall limit now: generous while this rank or a live peer loads or writes."""
        base = self.fixed if self.fixed is not None else default_limit(self._slowest)
        stages = [progress.STATE[progress.STAGE]] + [
            p.state[0] for p in self.peers.values() if now - p.heard < SILENT_S]
        return generous(base) if any(s in progress.GENEROUS for s in stages) else base

    def _stalled(self, now: float) -> bool:
        return now - self._progressed > self.limit(now)

    # --- firing ----------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        """Leave the message in the run directory (stalled.txt): srun reports a job ended by
        MPI_Abort as tasks Killed (137), and slurm/train.sbatch turns that back into 124."""
        if self.run_dir:
            from .rundir import STALLED, write_text

            try:
                write_text(os.path.join(self.run_dir, STALLED), text + "\n")
            except Exception:  # noqa: BLE001 - a hung or full disk must not delay the abort
                pass

    def _fire(self, now: float) -> None:
        from .stall import describe

        live = [r for r, p in self.peers.items() if now - p.heard < SILENT_S]
        speaker = min(live + [self.rank])
        if speaker == self.rank:
            mine = tuple(progress.STATE)
            states = {r: p.state for r, p in self.peers.items()}
            states[self.rank] = mine
            silent = {r: now - p.heard for r, p in self.peers.items() if r not in live}
            waited = {r: self.peers[r].idle_s + (now - self.peers[r].heard) for r in live}
            waited[self.rank] = now - self._progressed
            text = describe(states, silent, waited, self.hosts, self.limit(now), self.option_text,
                            self.run_dir, self.size, heard_anyone=bool(live) or not self.peers)
            print(f"mpigd: error: {text}", file=sys.stderr, flush=True)
            self._note(text)
        else:
            time.sleep(SPEAKER_GRACE_S)  # the speaker's abort normally ends this process first
        end_job()


class watching:
    """Context manager around a run: the watchdog thread of this rank (collective to enter).

    `limit_s` is --stall-timeout: None = the default rule, 0 = no watchdog. A single rank
    has nobody to wait for: no watchdog either."""

    def __init__(self, comm, limit_s: float | None, run_dir: str | None, resumed_at: int | None):
        self.args = (comm, limit_s, run_dir, resumed_at)
        self.dog = None

    def __enter__(self):
        comm, limit_s, run_dir, resumed_at = self.args
        progress.enter(progress.LOADING)
        progress.saved(resumed_at if resumed_at is not None else -1)
        if comm.size > 1 and limit_s != 0:
            option = (f"--stall-timeout {limit_s:g}" if limit_s is not None else
                      f"the default: the larger of {FLOOR_S:g} s and {FACTOR:g} x the slowest "
                      "iteration; set it with --stall-timeout SECONDS, 0 = off")
            self.dog = Watchdog(comm, limit_s, run_dir, option).start()
        return self.dog

    def __exit__(self, *exc):
        if self.dog is not None:
            self.dog.stop()
        return False


def end_job() -> None:
    """MPI_Abort(124) from this thread; os._exit(124) if the abort itself does not return."""
    sys.stdout.flush()
    sys.stderr.flush()
    threading.Timer(5.0, os._exit, (int(ExitCode.STALLED),)).start()
    from mpi4py import MPI

    MPI.COMM_WORLD.Abort(int(ExitCode.STALLED))
