"""mpigd: data-parallel gradient descent on MPI, instrumented.

One synchronous loop of the lecture's four steps — Broadcast, Map, Reduce, Update —
over row shards of an HDF5 file, with per-rank, per-iteration clocks for compute,
communication and synchronization.
"""

__version__ = "0.1.0"
