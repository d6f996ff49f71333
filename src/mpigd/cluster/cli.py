"""`python -m mpigd.cluster COMMAND`: the command line over cluster.Cluster.

    up --hosts N [--delay MS] [--rate RATE] [--clock-offset S[,S...]] [--subnet A.B.C]
    status [--json]
    shape HOST [--delay MS] [--rate RATE|none] [--direction in|out|both] [--partition|--heal]
    run [-n N] [--hosts node0:2,node1:2 | --per-host K] [--env K=V]... [--timeout S] -- CMD...
    exec HOST -- CMD...
    measure [--from HOST] [--to HOST] [--json]
    repair
    down

Every command takes --name (default $MPIGD_CLUSTER_NAME, else "default"). For the
project's own CLI, add_parser(subparsers) adds all of this as `mpigd cluster ...` and
command(args) runs it.
"""

import argparse
import json
import os
import signal
import sys

from ..errors import MpigdError
from . import state as _state

COMMANDS = ("up", "status", "shape", "run", "exec", "measure", "repair", "down")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise MpigdError(f"{message} (see `python -m mpigd.cluster --help`)")


def _name_option(p):
    p.add_argument("--name", default=os.environ.get("MPIGD_CLUSTER_NAME") or _state.DEFAULT_NAME,
                   help="which cluster (several may be up side by side) [$MPIGD_CLUSTER_NAME or default]")


def _add_commands(sub):
    p = sub.add_parser("up", help="create the hosts, the switch and the shaping",
                       description="Create N emulated hosts node0..node{N-1}: each its own network, "
                       "hostname and (with --clock-offset) monotonic clock, joined by a switch "
                       "that lives in a namespace of its own. --delay is the one-way delay between "
                       "any two hosts (added where packets arrive), --rate caps every host's link "
                       "both ways. Verifies the delay with a ping before it returns.")
    _name_option(p)
    p.add_argument("--hosts", type=int, default=2, metavar="N", help="number of hosts [2]")
    p.add_argument("--delay", type=float, default=0.0, metavar="MS", help="one-way delay in ms [0]")
    p.add_argument("--rate", metavar="RATE", help="link rate per host and direction, e.g. 1gbit, 200mbit")
    p.add_argument("--clock-offset", metavar="S", help="monotonic clock offset of each host in seconds: "
                   "one per host (0,1.5,3) or one step (1.5: host i gets i*1.5 s)")
    p.add_argument("--subnet", default=_state.DEFAULT_SUBNET, metavar="A.B.C",
                   help=f"hosts get A.B.C.10, A.B.C.11, ... [{_state.DEFAULT_SUBNET}]")
    p = sub.add_parser("status", help="hosts, addresses, shaping, delayers; problems found")
    _name_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("shape", help="change one host's delay or rate, or cut it off",
                       description="Change HOST's link. Direction is seen from the host: in = packets "
                       "arriving at it, out = leaving it; the one-way delay A->B is A's out + B's in.")
    _name_option(p)
    p.add_argument("host")
    p.add_argument("--delay", type=float, metavar="MS", help="one-way delay in ms (0 removes it)")
    p.add_argument("--rate", metavar="RATE", help="rate cap, e.g. 100mbit; none removes it")
    p.add_argument("--direction", choices=("in", "out", "both"), default="both", help="[both]")
    fault = p.add_mutually_exclusive_group()
    fault.add_argument("--partition", action="store_true", help="drop every packet from and to HOST")
    fault.add_argument("--heal", action="store_true", help="undo --partition")
    p = sub.add_parser("run", help="run an MPI job across the hosts (hydra mpiexec)",
                       description="Start CMD with MPICH's mpiexec across the hosts, one rank per host "
                       "unless told otherwise; more ranks than slots wrap around the hosts. Usable as "
                       "`python -m mpigd scale --launcher 'python -m mpigd.cluster run -n {n} --'`. "
                       "Exits with the job's exit code.")
    _name_option(p)
    p.add_argument("-n", type=int, metavar="N", help="number of ranks [all slots]")
    p.add_argument("--hosts", dest="placement", metavar="HOST:SLOTS,...", help="e.g. node0:2,node1:2")
    p.add_argument("--per-host", type=int, metavar="K", help="K slots on every host [1]")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="set for every rank (repeatable)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="kill the job after S seconds (exit code 124) [3600]")
    p.add_argument("argv", metavar="CMD", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p = sub.add_parser("exec", help="run a command inside one host (no MPI)")
    _name_option(p)
    p.add_argument("host")
    p.add_argument("argv", metavar="CMD", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p = sub.add_parser("measure", help="measure the emulation: ping, MPI ping-pong, bulk transfer")
    _name_option(p)
    p.add_argument("--from", dest="source", default="node0", metavar="HOST", help="[node0]")
    p.add_argument("--to", dest="target", default="node1", metavar="HOST", help="[node1]")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, text in (("repair", "restart dead delayers, re-apply the recorded shaping"),
                       ("down", "remove the cluster and everything it left (idempotent)")):
        _name_option(sub.add_parser(name, help=text))


def add_parser(subparsers, name="cluster"):
    """Add `name` (e.g. `mpigd cluster`) with all commands to an argparse subparsers object."""
    p = subparsers.add_parser(name, help="an emulated cluster on this machine (needs root)",
                              description=__doc__.split("\n\n")[0])
    _add_commands(p.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND"))
    return p


def build_parser():
    parser = _Parser(prog="python -m mpigd.cluster",
                     description="An emulated cluster on this Linux machine: hosts are namespaces "
                     "joined by a switch, links really carry the traffic, with delay and rate as "
                     "asked. Needs root. See docs/cluster.md.")
    _add_commands(parser.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND",
                                        parser_class=_Parser))
    return parser


def _command_words(words):
    words = list(words or [])
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise MpigdError("give the command after --, e.g. `-- python -m mpigd --data x.h5`")
    return words


def _parse_env(pairs):
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MpigdError(f"--env takes KEY=VALUE; got {pair!r}")
        env[key] = value
    return env


def command(args):
    """Run the parsed command; returns the exit code."""
    from .cluster import Cluster, down

    say = lambda message: print(message, flush=True)  # noqa: E731
    what = args.cluster_command
    if what == "up":
        Cluster.up(args.name, hosts=args.hosts, delay_ms=args.delay, rate=args.rate,
                   clock_offsets=args.clock_offset, subnet=args.subnet, say=say)
        return 0
    if what == "down":
        removed = down(args.name)
        say(f"cluster {args.name}: " + (f"removed {', '.join(removed)}" if removed else "nothing to remove"))
        return 0
    cluster = Cluster.attach(args.name)
    if what == "status":
        from .report import format_status

        report = cluster.status()
        say(json.dumps(report, indent=2) if args.json else format_status(report))
        return 1 if report["problems"] else 0
    if what == "shape":
        return _shape(cluster, args, say)
    if what == "run":
        return _run(cluster, args)
    if what == "exec":
        argv = cluster.exec_argv(args.host, _command_words(args.argv))
        os.execvp(argv[0], argv)
    if what == "measure":
        from .measure import measure
        from .report import format_measure

        result = measure(cluster, args.source, args.target)
        say(json.dumps(result, indent=2) if args.json else format_measure(result))
        return 0
    cluster.repair(say=say)
    problems = cluster.problems()
    say(f"cluster {args.name}: " + ("healthy" if not problems else "still broken: " + "; ".join(problems)))
    return 1 if problems else 0


def _shape(cluster, args, say):
    if args.partition or args.heal:
        (cluster.partition if args.partition else cluster.heal)(args.host)
    if args.delay is not None or args.rate is not None:
        cluster.shape(args.host, delay_ms=args.delay, rate=args.rate, direction=args.direction)
    elif not (args.partition or args.heal):
        raise MpigdError("shape needs --delay, --rate, --partition or --heal")
    from .report import format_status

    say(format_status(cluster.status(), only=args.host))
    return 0


class _Signalled(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, frame):
    raise _Signalled(signum)


def _run(cluster, args):
    """Run the job with the terminal's stdout/stderr; a SIGTERM/SIGHUP (e.g. from `scale`
    ending a run) ends the job across every host before this process exits."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_signalled)
    try:
        result = cluster.run(_command_words(args.argv), n=args.n, hosts=args.placement,
                             per_host=args.per_host, env=_parse_env(args.env), timeout=args.timeout,
                             capture=False)
    except _Signalled as stop:
        return 128 + stop.signum
    except KeyboardInterrupt:
        return 130
    return result.returncode


def main(argv=None):
    """Entry point: one `mpigd: error: ...` line and exit code 2 (or the error's) on failure."""
    try:
        return command(build_parser().parse_args(argv))
    except MpigdError as exc:
        print(f"mpigd: error: {exc}", file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", 2)
