"""Is the cluster what its record says? The checks behind `status`, `up` and `repair`."""

from . import hosts as _hosts
from . import shaping
from ..errors import MpigdError


def find_problems(cluster):
    """Where the kernel differs from the record of `cluster`; [] when healthy."""
    record, problems = cluster.state, []
    present = set(_hosts.existing_netns())
    if record.switch not in present:
        return [f"switch namespace {record.switch} is gone"]
    try:
        partitioned = shaping.read_partitions(record.switch)
    except MpigdError as exc:
        partitioned, problems = set(), [str(exc)]
    for host in record.hosts:
        if host.netns not in present:
            problems.append(f"{host.name}: namespace {host.netns} is gone")
            continue
        if not cluster.delayer_alive(host):
            problems.append(f"{host.name}: delayer (pid {host.delayer_pid}) is not running"
                            + (": packets of its delayed directions are dropped" if
                               host.in_delay_ms or host.out_delay_ms else ""))
        for side in ("in", "out"):
            wanted = getattr(host, f"{side}_delay_ms") > 0
            if shaping.has_queue_rule(host.netns, side) != wanted:
                problems.append(f"{host.name}: {side} delay rule {'missing' if wanted else 'unexpected'}")
        if not shaping.same_rate(shaping.read_rate(host.netns, shaping.IFACE), host.out_rate_bps):
            problems.append(f"{host.name}: out rate is not {shaping.format_rate(host.out_rate_bps)}")
        if not shaping.same_rate(shaping.read_rate(record.switch, host.name), host.in_rate_bps):
            problems.append(f"{host.name}: in rate is not {shaping.format_rate(host.in_rate_bps)}")
        if (host.name in partitioned) != host.partitioned:
            problems.append(f"{host.name}: partition is {'missing' if host.partitioned else 'unexpected'}")
    return problems
