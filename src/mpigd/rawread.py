"""Mapping a contiguous HDF5 dataset's rows straight from the file, for the load.

A contiguous, unfiltered dataset stored in the machine's own byte order is, on disk,
exactly the C array it is read into: HDF5 itself does no more than a pread for it. Mapped,
those bytes are copied into the shard by the same pass that checks and sums them
(scan.checked_copy), so the load reads each value once, where a read into the shard
followed by a scan reads it twice. A virtual dataset whose pieces are whole rows of such
datasets (what a parallel `generate` writes) is mapped piece by piece. Every other layout
(chunked, compressed, external, another byte order, a type conversion, a virtual dataset
with gaps or of other shapes) gets None from `source` and is read by HDF5.
"""

import mmap
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .errors import MpigdError


class Piece(NamedTuple):
    """Rows [lo, hi) of the dataset are stored contiguously in `path` from byte `offset`."""
    lo: int
    hi: int
    path: str
    offset: int


def source(h5file, dataset, dtype) -> list[Piece] | None:
    """Where `dataset`'s rows lie as raw bytes, in row order, or None if they do not."""
    import h5py

    dcpl = dataset.id.get_create_plist()
    if h5file.driver != "sec2" or dataset.ndim != 2:
        return None
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        return _virtual_pieces(h5file, dataset, dcpl, dtype)
    offset = _contiguous_offset(dataset, dcpl, dtype)
    return None if offset is None else [Piece(0, dataset.shape[0], h5file.filename, offset)]


def _contiguous_offset(dataset, dcpl, dtype):
    import h5py

    if (dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_external_count()
            or dcpl.get_nfilters() or dataset.dtype != np.dtype(dtype).newbyteorder("=")):
        return None  # not the array's bytes (same type, native order) as they are
    return dataset.id.get_offset()  # None while no data was ever written


def _virtual_pieces(h5file, dataset, dcpl, dtype):
    """The pieces of a virtual dataset, if each maps whole rows of a contiguous source."""
    import h5py

    rows, d = dataset.shape
    here = os.path.dirname(os.path.abspath(h5file.filename))
    pieces = []
    for i in range(dcpl.get_virtual_count()):
        vspace, source_space = dcpl.get_virtual_vspace(i), dcpl.get_virtual_srcspace(i)
        (lo, c0), (last, c1) = vspace.get_select_bounds()
        count = (last - lo + 1) * d
        if (c0, c1) != (0, d - 1) or vspace.get_select_npoints() != count:
            return None  # not a block of whole rows
        whole_source = source_space.get_select_type() == h5py.h5s.SEL_ALL  # h5py's VirtualSource
        if whole_source:
            first = 0
        else:
            (first, s0), (_, s1) = source_space.get_select_bounds()
            if (s0, s1) != (0, d - 1) or source_space.get_select_npoints() != count:
                return None  # not from whole rows
        name = dcpl.get_virtual_filename(i)
        path = h5file.filename if name == "." else os.path.join(here, name)
        try:
            with h5py.File(path, "r") as part:
                part_set = part[dcpl.get_virtual_dsetname(i)]
                offset = _contiguous_offset(part_set, part_set.id.get_create_plist(), dtype)
                if part.driver != "sec2" or offset is None or part_set.shape[1:] != (d,) \
                        or whole_source and part_set.shape[0] != last - lo + 1:
                    return None
        except (OSError, KeyError):
            return None  # HDF5's own read reports it (or fills the gap, as the file says)
        pieces.append(Piece(lo, last + 1, path, offset + first * d * np.dtype(dtype).itemsize))
    pieces.sort()
    if [p.lo for p in pieces] != [0] + [p.hi for p in pieces[:-1]] or pieces[-1].hi != rows:
        return None  # gaps or overlaps: HDF5 knows what the fill value and order mean
    return pieces


def parts(pieces: list[Piece], first_row: int, shape: tuple[int, int], dtype,
          part_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Rows first_row + [0, shape[0]) mapped from their files, at most part_rows at a time.

    Yields (a, rows a .. a + len(rows) of the range, as a read-only array).
    """
    last_row = first_row + shape[0]
    row_bytes = shape[1] * np.dtype(dtype).itemsize
    for piece in pieces:
        lo, hi = max(first_row, piece.lo), min(last_row, piece.hi)
        if lo < hi:
            start = piece.offset + (lo - piece.lo) * row_bytes
            for a, rows in _mapped(piece.path, start, (hi - lo, shape[1]), dtype, part_rows):
                yield lo - first_row + a, rows


def _mapped(path, start, shape, dtype, part_rows):
    """A file's array of `shape` at byte `start`, mapped and yielded part_rows at a time.

    Once a part is used, its pages leave this process's mapping (they stay in the page
    cache): mapped pages count in the resident set, and the shard they are copied into
    must be all the load adds to it.
    """
    row_bytes = shape[1] * np.dtype(dtype).itemsize
    length = shape[0] * row_bytes
    aligned = start - start % mmap.ALLOCATIONGRANULARITY  # mmap's offset must be aligned
    fd = os.open(path, os.O_RDONLY)
    try:
        # A mapped read past the end of the file is a SIGBUS, not an error: check first.
        if os.fstat(fd).st_size < start + length:
            raise MpigdError(f"{path} ends before its data set does (truncated, or still being "
                             "written?); write it again")
        region = mmap.mmap(fd, start + length - aligned, mmap.MAP_SHARED, mmap.PROT_READ,
                           offset=aligned)
    finally:
        os.close(fd)  # the mapping holds its own reference to the file
    rows = None
    try:
        region.madvise(mmap.MADV_SEQUENTIAL)  # read ahead harder
        rows = np.frombuffer(region, dtype, shape[0] * shape[1], start - aligned).reshape(shape)
        released = 0  # bytes of the mapping already given back
        for a in range(0, shape[0], part_rows):
            yield a, rows[a : a + part_rows]
            used = start - aligned + min(shape[0], a + part_rows) * row_bytes
            used -= used % mmap.PAGESIZE  # whole pages only: the next part may share the last
            if used > released:
                region.madvise(mmap.MADV_DONTNEED, released, used - released)
                released = used
    finally:
        rows = None
        try:
            region.close()
        except BufferError:  # an error's traceback still views it: freed with the traceback
            pass
