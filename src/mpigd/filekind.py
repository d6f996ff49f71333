"""What kind of file a path holds, told from its first bytes, and what to say when a table
(CSV, Parquet) or a NumPy array is given where an HDF5 file belongs.

Needs neither pyarrow nor h5py, so the trainer's input check can use it anywhere.
"""

import codecs
import os

DELIMITERS = (",", ";", "\t", "|")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)  # the superblock may follow a user block of 2^k bytes


def sniff(path: str) -> "str | None":
    """What `path` holds, from its first bytes: 'hdf5', 'parquet', 'npy', 'npz', 'zip',
    'gzip', 'csv', 'text', 'empty', or None (binary of no kind known here).

    'csv' means UTF-8 text whose first line holds one of , ; tab |. Needs no pyarrow.
    """
    with open(path, "rb") as handle:
        head = handle.read(4104)
        size = os.fstat(handle.fileno()).st_size
    if size == 0:
        return "empty"
    if any(head[o : o + 8] == _HDF5_SIGNATURE for o in _HDF5_OFFSETS):
        return "hdf5"
    for magic, kind in ((b"PAR1", "parquet"), (b"\x93NUMPY", "npy"), (b"\x1f\x8b", "gzip")):
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04"):
        return "npz" if path.lower().endswith(".npz") else "zip"
    if b"\x00" in head or not _is_utf8_prefix(head):
        return None
    first_line = head.decode("utf-8", "ignore").lstrip("\ufeff").splitlines()[:1]
    return "csv" if first_line and any(d in first_line[0] for d in DELIMITERS) else "text"


def not_hdf5_message(path: str) -> "str | None":
    """What to tell a user who gave `path` where an HDF5 file belongs, or None if sniff
    cannot tell (then the file may be a damaged HDF5 file). Needs no pyarrow."""
    try:
        kind = sniff(path)
    except OSError:
        return None
    stem = os.path.splitext(path[:-3] if path.lower().endswith(".gz") else path)[0]
    out = f"{stem}.h5" if f"{stem}.h5" != path else f"{stem}-table.h5"  # never the input itself
    convert = f"convert it with `python -m mpigd import {path} --target COLUMN --out {out}`"
    h5 = f"f = h5py.File('{out}', 'w'); "
    numpy_hint = {"npy": f"{h5}f['X'] = numpy.load('{path}'); f['y'] = y; f.close()",
                  "npz": f"d = numpy.load('{path}'); {h5}f['X'] = d['X']; f['y'] = d['y']; f.close()"}
    messages = {
        "csv": f"{path} looks like a CSV table, not HDF5: {convert}",
        "text": f"{path} is a text file, not HDF5: if it is a table with a header row, {convert}",
        "parquet": f"{path} is a Parquet table, not HDF5: {convert}",
        "gzip": f"{path} is gzip-compressed, not HDF5: if it is a CSV table named *.csv.gz, {convert}",
        "npy": f"{path} is a NumPy .npy array, not HDF5: write it and its targets y (one per row) "
               f"to HDF5 with h5py, in Python: `{numpy_hint['npy']}`",
        "npz": f"{path} is a NumPy .npz archive, not HDF5: write its arrays to HDF5 with h5py, "
               f"in Python: `{numpy_hint['npz']}` (with the archive's own array names)",
        "zip": f"{path} is a zip archive, not HDF5: unpack it first",
        "empty": f"{path} is empty (0 bytes), not an HDF5 file: check --data, or write it again",
    }
    return messages.get(kind)


def _is_utf8_prefix(data):
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(data, final=False)  # a character cut at the end of the sample is fine
    except UnicodeDecodeError:
        return False
    return True


