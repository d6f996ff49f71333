"""A host's link as shaped: delay and rate per direction, and partitions. Applied and read back.

Where each knob sits (direction seen from the host; `in` = arriving at it):

    out delay   iptables mangle POSTROUTING -o eth0 -> NFQUEUE 1 -> the host's delayer
    in delay    iptables mangle PREROUTING  -i eth0 -> NFQUEUE 0 -> the host's delayer
    out rate    tc tbf on the host's eth0 (egress into the switch)
    in rate     tc tbf on the switch's port to the host (the switch's egress toward it)
    partition   ebtables DROP in the switch, for frames from and to the host's port

tbf shapes egress only; putting the `in` limiter on the switch side of the host's veth
shapes what the host receives without an ifb device. The NFQUEUE rules have no
--queue-bypass: a dead delayer then cuts the host off rather than silently dropping the
delay from every measurement (status reports it, repair restarts it). A partition drops
in the switch, as a failed link would: the hosts' own stacks see no error, their packets
simply never arrive (issue 12's fault).
"""

import json
import re

from ..errors import MpigdError
from .delayer import QUEUE_IN, QUEUE_OUT
from .system import in_netns, run

IFACE = "eth0"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)?\s*$", re.IGNORECASE)
_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_COMMENT = ["-m", "comment", "--comment", "mpigd-cluster"]


def parse_rate(text):
    """Bits per second from '1gbit', '200mbit', '500kbit', '1e6' is refused; None/'' -> None."""
    if text in (None, "", "none", "0"):
        return None
    match = _RATE.match(str(text))
    if not match:
        raise MpigdError(f"--rate must be a number with a unit bit, kbit, mbit or gbit (bits per "
                         f"second, as tc writes them), e.g. 1gbit or 200mbit; got {text!r}")
    bits = float(match.group(1)) * _UNITS[(match.group(2) or "bit").lower()]
    if bits < 8e3 or bits > 1e11:
        raise MpigdError(f"--rate {text!r} is outside 8kbit..100gbit")
    return int(bits)


def format_rate(bits):
    if bits is None:
        return "-"
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits}bit"


def same_rate(a, b):
    """Rates equal up to tc's rounding to whole bytes per second (None = no shaper)."""
    if a is None or b is None:
        return a is b
    return abs(a - b) <= max(8, 1e-6 * b)


def check_delay(ms):
    if ms is None:
        return None
    if not 0 <= float(ms) <= 10_000:
        raise MpigdError(f"--delay must be milliseconds between 0 and 10000; got {ms}")
    return float(ms)


# --- delay: NFQUEUE rules -------------------------------------------------------------------

def _queue_rule(direction):
    if direction == "in":
        return ["PREROUTING", "-i", IFACE, *_COMMENT, "-j", "NFQUEUE", "--queue-num", str(QUEUE_IN)]
    return ["POSTROUTING", "-o", IFACE, *_COMMENT, "-j", "NFQUEUE", "--queue-num", str(QUEUE_OUT)]


def _iptables(netns, action, rule, check=True):
    return run(in_netns(netns, ["iptables", "-w", "5", "-t", "mangle", action, *rule]), check=check)


def has_queue_rule(netns, direction):
    return _iptables(netns, "-C", _queue_rule(direction), check=False).returncode == 0


def set_queue_rule(netns, direction, wanted):
    """Make the NFQUEUE rule of `direction` present or absent (idempotent)."""
    present = has_queue_rule(netns, direction)
    if wanted and not present:
        _iptables(netns, "-A", _queue_rule(direction))
    elif present and not wanted:
        _iptables(netns, "-D", _queue_rule(direction))


# --- rate: tc tbf ------------------------------------------------------------------------------

def tbf_arguments(bits):
    """tc tbf arguments for `bits` per second.

    burst: at least 64 KiB (one GSO super-packet passes unsplit) and 1 ms of traffic, so the
    shaper's timer need not fire per packet; latency 50 ms bounds the queue (bytes beyond it
    are dropped, as a switch's buffer would). tbf counts Ethernet frames without FCS: TCP
    goodput over a 1500-byte MTU is 1448/1514 = 95.6 % of the rate.
    """
    burst = max(64 * 1024, int(bits / 8 * 1e-3))
    return ["rate", f"{bits}bit", "burst", str(burst), "latency", "50ms"]


def set_rate(netns, device, bits):
    """tbf at `bits`/s as the root qdisc of `device` in `netns`, or the default qdisc if None."""
    if bits is None:
        if read_rate(netns, device) is not None:
            run(in_netns(netns, ["tc", "qdisc", "del", "dev", device, "root"]))
        return
    run(in_netns(netns, ["tc", "qdisc", "replace", "dev", device, "root", "tbf", *tbf_arguments(bits)]))


def read_rate(netns, device):
    """The tbf rate (bits/s) at the root of `device`, or None if it has no tbf."""
    proc = run(in_netns(netns, ["tc", "-j", "qdisc", "show", "dev", device]))
    for qdisc in json.loads(proc.stdout or "[]"):
        if qdisc.get("kind") == "tbf" and qdisc.get("root", False):
            rate = qdisc.get("options", {}).get("rate")
            return int(rate * 8) if isinstance(rate, (int, float)) else rate
    return None


# --- partition: ebtables in the switch ---------------------------------------------------------

def set_partitions(switch_netns, ports):
    """Drop every frame from or to each switch port in `ports` (the partitioned hosts); others pass.

    The switch namespace holds only the cluster's rules, so the chain is rewritten whole.
    """
    run(in_netns(switch_netns, ["ebtables", "-F", "FORWARD"]))
    for port in ports:
        run(in_netns(switch_netns, ["ebtables", "-A", "FORWARD", "-i", port, "-j", "DROP"]))
        run(in_netns(switch_netns, ["ebtables", "-A", "FORWARD", "-o", port, "-j", "DROP"]))


def read_partitions(switch_netns):
    """The switch ports whose frames are dropped both ways."""
    listing = run(in_netns(switch_netns, ["ebtables", "-L", "FORWARD"])).stdout
    dropped_in = set(re.findall(r"^-i (\S+) -j DROP", listing, re.MULTILINE))
    dropped_out = set(re.findall(r"^-o (\S+) -j DROP", listing, re.MULTILINE))
    return dropped_in & dropped_out
