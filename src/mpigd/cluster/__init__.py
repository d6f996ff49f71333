"""An emulated cluster on one Linux machine: hosts as namespaces, real links, real shaping.

`python -m mpigd.cluster up|status|shape|run|exec|measure|repair|down` (cli.py), or from
Python `Cluster.up(...)` (cluster.py). See docs/cluster.md.
"""

from .cluster import Cluster, JobResult, down

__all__ = ["Cluster", "JobResult", "down"]
