"""Mapping a contiguous HDF5 dataset's rows straight from the file, for the load.

A contiguous, unfiltered dataset stored in the machine's own byte order is, on disk,
exactly the C array it is read into: HDF5 itself does no more than a pread for it. Mapped,
those bytes are copied into the shard by the same pass that checks and sums them
(scan.checked_copy), so the load reads each value once, where a read into the shard
followed by a scan reads it twice. Every other layout (chunked, compressed, virtual,
external, another byte order or a type conversion) gets None from `source` and is read by
HDF5.
"""

import mmap
import os
from collections.abc import Iterator

import numpy as np

from .errors import MpigdError


def source(h5file, dataset, dtype) -> tuple[str, int] | None:
    """(file path, byte offset of the data) if `dataset` can be read as raw bytes, else None."""
    import h5py

    dcpl = dataset.id.get_create_plist()
    stored = dataset.dtype
    if (h5file.driver != "sec2" or dcpl.get_layout() != h5py.h5d.CONTIGUOUS
            or dcpl.get_external_count() or dcpl.get_nfilters()
            or stored != np.dtype(dtype).newbyteorder("=")):  # same type, native order
        return None
    offset = dataset.id.get_offset()  # None while no data was ever written
    if offset is None:
        return None
    return h5file.filename, offset


def parts(path: str, offset: int, first_row: int, shape: tuple[int, int], dtype,
          part_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """The file's rows first_row + [0, shape[0]) mapped from the file, part_rows at a time.

    Yields (a, rows a .. a + part_rows as a read-only array). Once a part is used, its
    pages leave this process's mapping (they stay in the page cache): mapped pages count
    in the resident set, and the shard it is copied into must be all the load adds to it.
    """
    dtype = np.dtype(dtype)
    row_bytes = shape[1] * dtype.itemsize
    start = offset + first_row * row_bytes
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
