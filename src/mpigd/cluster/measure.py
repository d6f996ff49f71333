"""How well the emulation does what was asked: ping RTT and MPI ping-pong vs the asked delay,
a bulk TCP transfer vs the asked rate, between two hosts of a cluster that is up.

The expected figures come from the record: one-way A->B = A.out + B.in, RTT = both ways;
TCP goodput = rate x 1448/1514 (tbf counts 1514-byte Ethernet frames, of which 1448 bytes
are payload with TCP timestamps over a 1500-byte MTU). Nothing about the machine's own
base latency is subtracted: the error column is what a user of the emulation sees.
"""

import json
import statistics
import subprocess
import sys

from ..errors import MpigdError
from .launch import end_job, job_environment

PAYLOAD_PER_FRAME = 1448 / 1514
_PORT = 47001


def expected_one_way_ms(cluster, source, target):
    a, b = cluster.host(source), cluster.host(target)
    return a.out_delay_ms + b.in_delay_ms


def expected_rate_bps(cluster, source, target):
    a, b = cluster.host(source), cluster.host(target)
    rates = [r for r in (a.out_rate_bps, b.in_rate_bps) if r]
    return min(rates) if rates else None


def measure_ping(cluster, source, target, count=20):
    rtts = [r for r in cluster.ping(source, cluster.host(target).address, count=count, interval=0.02)
            if r is not None]
    if not rtts:
        raise MpigdError(f"ping {source} -> {target}: no answer (partitioned?)")
    asked = expected_one_way_ms(cluster, source, target) + expected_one_way_ms(cluster, target, source)
    return {"what": "ping RTT (median)", "unit": "ms", "asked": asked, "measured": statistics.median(rtts),
            "note": f"min {min(rtts):.3f}, {len(rtts)} pings"}


def measure_pingpong(cluster, source, target, sizes=(8, 65536), repeat=50, timeout=120):
    """MPI ping-pong rank 0 on `source`, rank 1 on `target` (UCX over TCP, one rank per host)."""
    command = [cluster.state.python, "-m", "mpigd.cluster.pingpong", "--sizes",
               ",".join(map(str, sizes)), "--repeat", str(repeat)]
    result = cluster.run(command, n=2, hosts={source: 1, target: 1}, timeout=timeout)
    if result.returncode != 0:
        raise MpigdError(f"MPI ping-pong {source} <-> {target} failed (exit code {result.returncode}):\n"
                         f"{(result.stderr or '')[-2000:]}")
    rows = json.loads(result.stdout.strip().splitlines()[-1])["pingpong"]
    one_way = (expected_one_way_ms(cluster, source, target) + expected_one_way_ms(cluster, target, source)) / 2
    rate = expected_rate_bps(cluster, source, target)
    measured = []
    for row in rows:
        asked = one_way + (8e3 * row["bytes"] / (rate * PAYLOAD_PER_FRAME) if rate else 0.0)
        measured.append({"what": f"MPI ping-pong {row['bytes']} B one way (median)", "unit": "ms",
                         "asked": asked, "measured": row["median_ms"],
                         "note": f"min {row['min_ms']:.3f}, {repeat} round trips"})
    return measured


def measure_bulk(cluster, source, target, size=None, timeout=120):
    """One TCP stream source -> target; the steady goodput (after the first quarter)."""
    rate = expected_rate_bps(cluster, source, target)
    if size is None:  # about a second's worth at the asked rate, within 8..128 MB
        size = int(min(128e6, max(8e6, (rate or 1e9) / 8)))
    python = cluster.state.python
    server_argv = cluster.exec_argv(target, [python, "-m", "mpigd.cluster.probes", "serve",
                                             "--port", _PORT, "--bytes", size])
    client_argv = cluster.exec_argv(source, [python, "-m", "mpigd.cluster.probes", "send",
                                             cluster.host(target).address, "--port", _PORT, "--bytes", size])
    env, token = job_environment()
    server = subprocess.Popen(server_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        if server.stdout.readline().strip() != "listening":
            raise MpigdError(f"bulk transfer: the receiver on {target} did not start: {server.stderr.read()}")
        subprocess.run(client_argv, check=True, timeout=timeout, capture_output=True, env=env)
        out, _ = server.communicate(timeout=timeout)
    except (subprocess.SubprocessError, OSError) as exc:
        raise MpigdError(f"bulk transfer {source} -> {target} failed: {exc}") from None
    finally:
        if server.poll() is None:
            end_job(server, token)
    got = json.loads(out.strip().splitlines()[-1])
    asked = rate * PAYLOAD_PER_FRAME / 1e6 if rate else None
    return {"what": f"TCP goodput, {size / 1e6:g} MB stream (steady)", "unit": "Mbit/s", "asked": asked,
            "measured": got["steady_goodput_bps"] / 1e6,
            "note": f"whole transfer {got['goodput_bps'] / 1e6:.1f} (with slow start)"}


def measure(cluster, source="node0", target="node1"):
    """Every measurement between two hosts: a dict with the rows and the shaping asked."""
    if source == target:
        raise MpigdError("--from and --to must be two different hosts")
    a, b = cluster.host(source), cluster.host(target)
    if a.partitioned or b.partitioned:
        raise MpigdError(f"{a.name if a.partitioned else b.name} is partitioned: heal it to measure")
    rows = [measure_ping(cluster, source, target), *measure_pingpong(cluster, source, target),
            measure_bulk(cluster, source, target)]
    for row in rows:
        row["error"] = row["measured"] - row["asked"] if row["asked"] is not None else None
    return {"source": source, "target": target,
            "one_way_ms": expected_one_way_ms(cluster, source, target),
            "rate_bps": expected_rate_bps(cluster, source, target), "rows": rows,
            "python": sys.executable}
