"""Writing one row-partitioned HDF5 data set from P ranks at once, atomically.

Every rank writes rows [lo, hi) of X and y (its `split` entry). With an MPI-enabled h5py
the ranks write into the one file (driver "mpio"). Otherwise (the usual pip wheel) each
rank writes a part file and rank 0 joins them in the named file with HDF5 virtual
datasets, which every reader (h5py, the trainer, HDF5 tools) reads like any other
dataset, each rank only its rows.

Atomic like a serial write: the part files go to a hidden directory next to the named
file, `.NAME.parts-TOKEN/`, unique to this write; the named file appears by one rename
after every part is complete and synced, and until then it is absent (or the previous
file, with its own parts, is untouched). A failure on any rank removes this write's
parts; a successful write removes the parts of the file it replaced and of crashed
earlier attempts. The parts must stay next to the file: copy or move the two together.

What the rows are is the caller's (synthetic.py): `create(h5file, n)` makes empty X and
y of n rows, `fill(X, y, lo)` writes rows lo.. into them, `finish(h5file)` adds the rest.
"""

import glob
import os
import shutil
import time
from collections.abc import Callable

import numpy as np

from . import faults, rundir
from .errors import MpigdError

PARTS_ATTRIBUTE = "parts"  # the joined file's attribute naming its parts directory


def parts_pattern(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.parts-*")


def missing_parts(h5file) -> str | None:
    """A message if `h5file` is a joined file whose parts directory is not where it says."""
    relative = h5file.attrs.get(PARTS_ATTRIBUTE)
    if relative is None:
        return None
    directory = os.path.join(os.path.dirname(os.path.abspath(h5file.filename)), str(relative))
    if os.path.isdir(directory):
        return None
    return (f"{h5file.filename} was written in parts by `mpirun -n P python -m mpigd generate` "
            f"and its rows live in {directory}, which is missing; copy or move the file "
            "together with that directory, or generate it again")


def _token(comm) -> str:
    """A name for this write's parts directory, the same on every rank."""
    stamp = np.array([os.getpid(), time.time_ns()], dtype=np.int64)
    comm.Bcast(stamp, root=0)
    return f"{stamp[0]}-{stamp[1]}"


class Rows:
    """The data set to write: its shape and type, and the caller's three writers."""

    def __init__(self, rows: int, features: int, dtype, create: Callable, fill: Callable,
                 finish: Callable) -> None:
        self.rows, self.features, self.dtype = rows, features, np.dtype(dtype)
        self.create, self.fill, self.finish = create, fill, finish


def uses_mpio(parallel_io: str, compression: str | None) -> bool:
    """Whether --parallel-io (auto|mpio|parts) writes with parallel HDF5 here; the same on every
    rank (the same h5py), so a refusal is collective."""
    import h5py

    available = bool(h5py.get_config().mpi)
    if parallel_io == "mpio" and not available:
        raise MpigdError("--parallel-io mpio: this h5py was built without MPI "
                         "(h5py.get_config().mpi is False); build h5py against a parallel HDF5 "
                         "(README: Data that grows with the ranks) or use --parallel-io parts",
                         collective=True)
    if parallel_io == "mpio" and compression is not None:
        raise MpigdError(f"--parallel-io mpio writes X and y uncompressed (each rank its own "
                         f"rows, independently); drop --compression {compression} or use "
                         f"--parallel-io parts", collective=True)
    return parallel_io == "mpio" or (parallel_io == "auto" and available and compression is None)


def write(comm, path: str, data: Rows, split: list[tuple[int, int]], mpio: bool) -> None:
    """Collective: write `data` to `path`, rank r writing rows split[r]."""
    if mpio:
        _write_mpio(comm, path, data, split[comm.rank])
        return
    from .comm import agreed

    parts_dir = os.path.join(os.path.dirname(os.path.abspath(path)),
                             f".{os.path.basename(path)}.parts-{_token(comm)}")
    lo, hi = split[comm.rank]
    try:
        with agreed(comm, f"creating {parts_dir}"):
            if comm.rank == 0:
                os.makedirs(parts_dir)
        with agreed(comm, f"writing the part files of {path}"):
            if hi > lo:
                part = os.path.join(parts_dir, f"part-{comm.rank:05d}.h5")
                _write_part(part, data, lo, hi)
            _planned_fault(comm, "generate, after its part file")
        with agreed(comm, f"joining the parts in {path}"):
            if comm.rank == 0:
                rundir.fsync_path(parts_dir)
                _write_joined(path, parts_dir, data, split)
    except BaseException:
        if comm.rank == 0:  # the others have left their parts (agreed), or the job is ending
            shutil.rmtree(parts_dir, ignore_errors=True)
        raise
    if comm.rank == 0:
        remove_stale_parts(path, keep=parts_dir)


def remove_stale_parts(path: str, keep: str | None = None) -> None:
    """Remove the parts directories of `path` but `keep`: those of the file it replaced (a
    joined file, even when the new one is a plain file) and of crashed earlier attempts."""
    for stale in glob.glob(parts_pattern(path)):
        if keep is None or os.path.abspath(stale) != os.path.abspath(keep):
            shutil.rmtree(stale, ignore_errors=True)


def drop_replaced_cache(path: str, rank: int = 0, size: int = 1) -> None:
    """Drop the cached pages of the file at `path` now and of its parts (rundir.drop_cached_pages),
    before a new file replaces it; rank `rank` of `size` does every size-th of those files."""
    files = [path] + sorted(glob.glob(os.path.join(parts_pattern(path), "part-*.h5")))
    for name in files[rank::size]:
        rundir.drop_cached_pages(name)


def _planned_fault(comm, where: str) -> None:
    fault = faults.planned(comm.rank)  # MPIGD_INJECT_FAULT=RANK:generate (tests)
    if fault and fault[0] == "generate":
        faults.fail(where, comm.rank)


def _write_part(part: str, data: Rows, lo: int, hi: int) -> None:
    import h5py

    # Written under a temporary name and renamed, like every file mpigd writes: a part
    # that exists is complete, whatever happened to the rank that wrote it.
    partial = part + ".partial"
    with h5py.File(partial, "w") as f:
        X, y = data.create(f, hi - lo)
        data.fill(X, y, lo)
    rundir.fsync_path(partial)
    os.replace(partial, part)


def _write_joined(path: str, parts_dir: str, data: Rows, split) -> None:
    """Rank 0: the named file, X and y virtual over the parts, the rest from data.finish."""
    import h5py

    relative = os.path.basename(parts_dir)
    x_layout = h5py.VirtualLayout((data.rows, data.features), data.dtype)
    y_layout = h5py.VirtualLayout((data.rows,), data.dtype)
    for rank, (lo, hi) in enumerate(split):
        if hi > lo:  # a relative name: HDF5 looks for it next to the file holding the VDS
            part = f"{relative}/part-{rank:05d}.h5"
            x_layout[lo:hi] = h5py.VirtualSource(part, "X", shape=(hi - lo, data.features))
            y_layout[lo:hi] = h5py.VirtualSource(part, "y", shape=(hi - lo,))

    def write_file(partial):
        with h5py.File(partial, "w", track_order=True) as f:
            # NaN where a part cannot be read: the trainer's finiteness check then refuses
            # those rows instead of training on zeros (and missing_parts says why).
            f.create_virtual_dataset("X", x_layout, fillvalue=np.nan)
            f.create_virtual_dataset("y", y_layout, fillvalue=np.nan)
            data.finish(f)
            f.attrs[PARTS_ATTRIBUTE] = relative

    rundir.atomic_write(path, write_file)


class _Window:
    """Rows [lo, hi) of a dataset, indexed from 0, so `fill` writes it as if it were a part."""

    def __init__(self, dataset, lo: int, hi: int) -> None:
        self.dataset, self.lo = dataset, lo
        self.dtype, self.shape = dataset.dtype, (hi - lo, *dataset.shape[1:])

    def __setitem__(self, rows: slice, values) -> None:
        self.dataset[rows.start + self.lo : rows.stop + self.lo] = values


def _write_mpio(comm, path: str, data: Rows, mine: tuple[int, int]) -> None:
    """Parallel HDF5: every rank opens the one file and writes its own rows."""
    import h5py

    from .comm import agreed

    partial = f"{path}.partial-mpio"
    lo, hi = mine
    try:
        with agreed(comm, f"writing {path} with parallel HDF5"):
            with h5py.File(partial, "w", driver="mpio", comm=comm) as f:
                X, y = data.create(f, data.rows)  # creating datasets is collective
                data.finish(f)
                data.fill(_Window(X, lo, hi), _Window(y, lo, hi), lo)
                # inside the open file: its collective close must still happen on every rank
                _planned_fault(comm, "generate, after its rows")
        with agreed(comm, f"renaming {partial} to {path}"):
            if comm.rank == 0:
                rundir.fsync_path(partial)
                os.replace(partial, path)
                remove_stale_parts(path)
    except BaseException:
        if comm.rank == 0 and os.path.exists(partial):
            os.remove(partial)
        raise


def require_parts(h5file) -> None:
    """Raise the missing_parts message, if any."""
    message = missing_parts(h5file)
    if message:
        raise MpigdError(message)
