"""Data parallelism: which rows a rank owns, and reading exactly those rows from HDF5.

Every rank opens the file read-only on its own (HDF5 needs no parallel driver for
concurrent readers) and reads only its contiguous, balanced block of rows straight into
a preallocated array.
"""

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import rawread, scan
from .errors import MpigdError

# Row blocks for the NaN/Inf scan: big enough to amortize numpy's call overhead, small
# enough that the boolean scratch stays a few MB whatever the shard size.
_SCAN_BYTES = 4 << 20
# Blocks of the load's read: big enough that the per-read cost of HDF5 stays small; each
# is then checked and summed in L2-sized parts.
_BLOCK_BYTES = 32 << 20
_SCAN_PART_BYTES = 512 << 10  # a part of a block that stays in L2 between its two scans
_FAST_PART_BYTES = 64 << 20   # numba's one pass: parts only to let signals in between
_MAPPED_PART_BYTES = 4 << 20  # at most this much of the file mapped in at once (see rawread)


def block_range(n, parts, index):
    """Rows [lo, hi) of block `index` when n rows are split into `parts` balanced blocks.

    The first n mod parts blocks get one extra row.
    """
    q, r = divmod(n, parts)
    lo = index * q + min(index, r)
    return lo, lo + q + (index < r)


def shard_rows(n, size, rank, dedicated_server):
    """Rows [lo, hi) held by `rank` of `size`; with a dedicated server rank 0 holds none."""
    if not dedicated_server:
        return block_range(n, size, rank)
    if rank == 0:
        return 0, 0
    return block_range(n, size - 1, rank - 1)


@dataclass(frozen=True)
class DatasetInfo:
    """What a rank needs to know about the input before reading its rows."""

    path: str
    x_name: str
    y_name: str
    rows: int
    features: int
    x_dtype: str
    y_dtype: str
    y_shape: tuple


def _names_in(h5file):
    names = []
    h5file.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    return names


def _dataset(h5file, name, role, option):
    import h5py

    obj = h5file.get(name)
    if not isinstance(obj, h5py.Dataset):
        found = ", ".join(_names_in(h5file)) or "none"
        what = "not found" if obj is None else "is a group, not a dataset" \
            if isinstance(obj, h5py.Group) else "is not a dataset"
        raise MpigdError(
            f"{role} dataset '{name}' {what} in {h5file.filename} (datasets there: {found}); "
            f"choose one with {option} NAME"
        )
    if obj.dtype.kind not in "fiu":  # bool, strings, compound, opaque: no silent casts
        raise MpigdError(
            f"{role} dataset '{name}' has dtype {obj.dtype}, not a number type; "
            "store it as float64 or float32 (integers are accepted too)"
        )
    return obj


def open_input(path):
    """Open an input file read-only, with a message that says what to do when it fails."""
    import os

    import h5py

    if not os.path.exists(path):
        raise MpigdError(
            f"data file {path} does not exist; check --data, or create one with "
            "`python -m mpigd generate --rows N --features D --out FILE.h5`"
        )
    if os.path.isdir(path):
        raise MpigdError(f"data file {path} is a directory; --data takes an HDF5 file")
    try:
        return h5py.File(path, "r")  # read-only: an input is never modified
    except OSError as exc:
        if "unable to lock" in str(exc):  # a writer holds it, or the file system has no locks (some Lustre)
            raise MpigdError(f"cannot open {path}: HDF5 could not lock it (h5py: {exc}); if another "
                             "program is writing it, wait until it is done; on a file system "
                             "without locks, set HDF5_USE_FILE_LOCKING=FALSE") from None
        from .filekind import not_hdf5_message  # a CSV, Parquet or .npy file: say how to convert it

        hint = not_hdf5_message(path)
        if hint:
            raise MpigdError(hint) from None
        raise MpigdError(f"{path} is not a readable HDF5 file (h5py: {exc}); check that --data "
                         "names the right file and, if it was copied, copy it again") from None


@contextmanager
def readable(path):
    """Turn HDF5's low-level failures while reading `path` into a message about the file.

    A damaged file opens fine and fails later, in h5py, as OSError or RuntimeError
    ("bad symbol table node signature", "Can't read data"): the user's problem is then
    the file, not mpigd.
    """
    try:
        yield
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        if not _raised_in_h5py(exc):  # e.g. a bug, or an injected fault: not the file
            raise
        raise MpigdError(f"{path} is damaged: reading it failed (h5py: {exc}); copy it again "
                         "or regenerate it") from None


def _raised_in_h5py(exc):
    tb = exc.__traceback__
    while tb is not None:
        if "h5py" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def inspect(h5file, x_name, y_name):
    """Validate the shapes and types of X and y; everything a rank needs before reading."""
    x = _dataset(h5file, x_name, "X", "--x-dataset")
    y = _dataset(h5file, y_name, "y", "--y-dataset")
    if x.ndim != 2:
        raise MpigdError(f"X dataset '{x_name}' must be 2-D (rows x features), has shape {x.shape}; "
                         "store one sample per row (a single feature is shape (rows, 1)), or "
                         "choose another dataset with --x-dataset")
    rows, features = x.shape
    if rows == 0:
        raise MpigdError(f"X dataset '{x_name}' has no rows (shape {x.shape}): nothing to fit; "
                         "check --data and --x-dataset")
    if features == 0:
        raise MpigdError(f"X dataset '{x_name}' has zero features (shape {x.shape}): nothing to "
                         "fit; check that --x-dataset names the features")
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise MpigdError(f"y dataset '{y_name}' must have shape (n,) or (n, 1), has {y.shape}; "
                         "one target per row (choose another dataset with --y-dataset)")
    if y.shape[0] != rows:
        raise MpigdError(
            f"y dataset '{y_name}' has {y.shape[0]} rows but X '{x_name}' has {rows}; "
            "they must describe the same samples (check --x-dataset and --y-dataset)"
        )
    return DatasetInfo(
        path=h5file.filename, x_name=x_name, y_name=y_name, rows=rows, features=features,
        x_dtype=str(x.dtype), y_dtype=str(y.dtype), y_shape=tuple(y.shape),
    )


def compute_dtype(stored, requested="auto"):
    """The dtype a shard is computed in: --dtype, or for auto the file's float type.

    Other number types (integers, float16) are computed in float64.
    """
    dtype = np.dtype(stored if requested == "auto" else requested)
    return dtype if dtype.name in ("float32", "float64") else np.dtype(np.float64)


def read_shard(h5file, info, lo, hi, dtype):
    """Read rows [lo, hi) of X and y into fresh arrays of `dtype`, and nothing else."""
    X, y = _allocated(info, lo, hi, dtype)
    if hi > lo:
        _read_y(h5file, info, lo, hi, y)
        for _ in _blocks(h5file[info.x_name], X, lo):
            pass
    return X, y


def load_shard(h5file, info, lo, hi, dtype, fast=False):
    """(X, y, local checksum) of rows [lo, hi): read, checked for NaN/Inf and summed in one pass.

    Where the dataset's bytes are the array's (rawread.py) they are mapped from the file
    and copied into X by the pass that checks them and adds them to the checksum (with
    `fast`, numba's one pass, scan_fused.py); else HDF5 reads X block by block (about
    _BLOCK_BYTES, whole chunks) and each block is scanned right after its read.
    HDF5 converts the type as it reads, so a float32 file read as float64 (or the
    reverse) never holds a second full-size copy. The checksum is this rank's part of
    checkpoint.data_checksum; a NaN or Inf raises check_finite's error.
    """
    X, y = _allocated(info, lo, hi, dtype)
    if hi == lo:
        return X, y, 0
    _read_y(h5file, info, lo, hi, y)
    finite, total = scan.checked_sum(y, lo)
    dataset = h5file[info.x_name]
    raw = rawread.source(h5file, dataset, dtype)
    with np.errstate(over="ignore"):  # the checksum is modulo 2^64 on purpose
        total *= np.uint64(3)
        if raw:
            x_finite, x_total = _copied(raw, X, lo, fast)
        else:
            x_finite, x_total = _read_and_scanned(dataset, X, lo, fast)
        total += x_total
    if not (finite and x_finite):
        check_finite(X, y, first_row=lo)
    return X, y, int(total)


def _copied(raw, X, lo, fast):
    """Copy mapped rows into X, scanning them on the way: (all finite, checksum of X)."""
    d = X.shape[1]
    # fast: parts only bound what is mapped at once; numpy: parts that stay in L2 from
    # the copy to the scan's last pass
    step = _part_rows(_MAPPED_PART_BYTES if fast else _SCAN_PART_BYTES, d, X.itemsize)
    finite, total = True, np.uint64(0)
    for a, rows in rawread.parts(raw, lo, X.shape, X.dtype, step):
        part_finite, part_total = scan.checked_copy(rows, X[a : a + len(rows)], (lo + a) * d, fast)
        finite, total = finite and part_finite, total + part_total
    return finite, total


def _read_and_scanned(dataset, X, lo, fast):
    """Read X by HDF5, scanning each block after its read: (all finite, checksum of X)."""
    d = X.shape[1]
    # A large read does not leave its block in cache: numpy scans it in parts that fit L2
    step = _part_rows(_FAST_PART_BYTES if fast else _SCAN_PART_BYTES, d, X.itemsize)
    finite, total = True, np.uint64(0)
    for a, _, block in _blocks(dataset, X, lo):
        for s in range(0, len(block), step):
            part_finite, part_total = scan.checked_sum(block[s : s + step], (lo + a + s) * d, fast)
            finite, total = finite and part_finite, total + part_total
    return finite, total


def _part_rows(part_bytes, features, itemsize):
    return max(1, part_bytes // max(1, features * itemsize))


def _allocated(info, lo, hi, dtype):
    return np.empty((hi - lo, info.features), dtype=dtype), np.empty(hi - lo, dtype=dtype)


def _read_y(h5file, info, lo, hi, y):
    y_view = y if len(info.y_shape) == 1 else y.reshape(-1, 1)
    h5file[info.y_name].read_direct(y_view, source_sel=np.s_[lo:hi])


def _blocks(dataset, X, lo):
    """Read dataset rows lo + [a, b) into X[a:b] block by block; yield (a, b, X[a:b]) after each.

    The low-level read: h5py's read_direct costs ~0.1 ms per call in Python, which at a
    few MB per block would add more than the scan saves.
    """
    import h5py

    n, d = X.shape
    rows = max(1, _BLOCK_BYTES // max(1, d * X.itemsize))
    chunk_rows = dataset.chunks[0] if dataset.chunks else 1
    rows = max(chunk_rows, rows - rows % chunk_rows)  # no chunk decompressed twice
    file_space = dataset.id.get_space()
    for a in range(0, n, rows):
        b = min(n, a + rows)
        block = X[a:b]
        file_space.select_hyperslab((lo + a, 0), (b - a, d))
        dataset.id.read(h5py.h5s.create_simple((b - a, d)), file_space, block)
        yield a, b, block


def check_finite(X, y, first_row, limit=5):
    """Raise naming the first global rows (at most `limit`) holding NaN or Inf."""
    bad = []
    if not np.isfinite(y).all():
        bad += [("y", int(i)) for i in np.flatnonzero(~np.isfinite(y))[:limit]]
    block = max(1, _SCAN_BYTES // max(1, X.shape[1] * X.itemsize))
    scratch = np.empty((min(block, len(X)), X.shape[1]), dtype=bool)
    for lo in range(0, len(X), block):
        part = X[lo : lo + block]
        finite = np.isfinite(part, out=scratch[: len(part)])
        if not finite.all():
            rows = np.flatnonzero(~finite.all(axis=1))[:limit] + lo
            bad += [("X", int(i)) for i in rows]
            if len(bad) >= limit:
                break
    if bad:
        where = ", ".join(f"{name} row {first_row + i}" for name, i in sorted(bad)[:limit])
        raise MpigdError(
            f"NaN or Inf in the data at {where}; clean or drop these rows before training"
        )
