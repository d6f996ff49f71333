"""Which ranks sit on which host, and whether a host runs more ranks than it has CPUs.

An oversubscribed run (more busy-polling ranks than cores) measures scheduling, not the
algorithm: its times check correctness only, and the trainer says so. On the emulated
cluster (mpigd.cluster) every host is a network namespace of this one machine: the
network between hosts is real, the CPUs are shared, so oversubscription is counted
against the machine's CPUs, not per host.
"""

import os

# Set by `mpigd cluster run` for every rank it starts (mpigd.cluster.launch.JOB_TOKEN); set
# MPIGD_EMULATED_HOSTS=1 yourself where "hosts" share one machine otherwise (e.g. Slurm
# nodes in network namespaces, as the multi-node Slurm tests run them).
EMULATED_CLUSTER_VARIABLES = ("MPIGD_CLUSTER_JOB", "MPIGD_EMULATED_HOSTS")


def placement(facts) -> dict:
    """The job's layout from the gathered RankFacts (environment.gather_rank_facts)."""
    ranks_by_host: dict[str, list[int]] = {}
    cpus_by_host: dict[str, int] = {}
    for f in facts:
        ranks_by_host.setdefault(f.host, []).append(f.rank)
        cpus_by_host[f.host] = f.cpus
    emulated = any(os.environ.get(name) for name in EMULATED_CLUSTER_VARIABLES)
    if emulated:  # one machine's CPUs for all hosts
        cpus = max(cpus_by_host.values(), default=0)
        over = sorted(ranks_by_host) if cpus and len(facts) > cpus else []
    else:
        over = sorted(h for h, ranks in ranks_by_host.items()
                      if cpus_by_host[h] and len(ranks) > cpus_by_host[h])
    return {"hosts": len(ranks_by_host), "ranks_by_host": ranks_by_host,
            "cpus_by_host": cpus_by_host, "oversubscribed_hosts": over,
            "emulated_cluster": emulated}


def notes(layout: dict, ranks: int) -> list[str]:
    """Console lines that warn about what makes the times less than they seem."""
    lines = []
    if layout["emulated_cluster"]:
        cpus = max(layout["cpus_by_host"].values(), default=0)
        lines.append(f"emulated cluster: {layout['hosts']} hosts share this machine's {cpus} CPUs "
                     "(the network between them is real, the CPUs are not)")
    if layout["oversubscribed_hosts"]:
        if layout["emulated_cluster"]:
            cpus = max(layout["cpus_by_host"].values())
            lines.append(f"oversubscribed: {ranks} ranks on {cpus} CPUs: the times check "
                         "correctness, not speed")
        else:
            host = layout["oversubscribed_hosts"][0]
            more = len(layout["oversubscribed_hosts"]) - 1
            lines.append(f"oversubscribed: {len(layout['ranks_by_host'][host])} ranks on "
                         f"{layout['cpus_by_host'][host]} CPUs of host {host}"
                         + (f" (and {more} more host(s))" if more else "")
                         + ": the times check correctness, not speed")
    return lines
