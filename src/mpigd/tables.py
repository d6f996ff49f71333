"""Reading user tables (CSV with a header row, Parquet) in row blocks, and telling file kinds apart.

Owns: what kind of file a path holds (`sniff`, no pyarrow needed), the CSV delimiter,
the column kinds a table offers (numeric, text, other), and `Table.batches`, which
streams chosen columns as float64 (numeric) or string (categorical) Arrow record batches
with their 1-based data row numbers, turning pyarrow's failures into one-line MpigdErrors
that name the column, the row and the value. Memory: one block of the selected columns
at a time (pyarrow's CSV reader keeps a few blocks in flight on its threads).

Row numbers are 1-based data rows: row 1 is the first row after the header.
"""

import codecs
import os
import re
from dataclasses import dataclass

from .errors import MpigdError

INSTALL_HINT = "reading CSV/Parquet tables needs pyarrow: pip install 'mpigd[table]' (or pip install pyarrow)"
DELIMITERS = (",", ";", "\t", "|")
# Per CSV block. pyarrow's streaming CSV reader reads up to 32 blocks ahead on a background
# thread (kDefaultBackgroundMaxQ in Arrow C++, not configurable), so the block size, not
# the table, sets the memory: 1 MiB (pyarrow's own default) keeps that read-ahead ~32 MiB.
DEFAULT_BLOCK_BYTES = 1 << 20

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)  # the superblock may follow a user block of 2^k bytes


def pyarrow():
    """The pyarrow module, or the one-line error that says how to install it."""
    try:
        import pyarrow as pa
        import pyarrow.csv  # noqa: F401 - submodules used through pa.csv / pa.parquet
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MpigdError(INSTALL_HINT) from None
    return pa


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
    numpy_hint = ("write X and y to HDF5 with h5py: `with h5py.File('" + stem + ".h5', 'w') as f: "
                  "f['X'] = X; f['y'] = y`")
    messages = {
        "csv": f"{path} looks like a CSV table, not HDF5: {convert}",
        "text": f"{path} is a text file, not HDF5: if it is a table with a header row, {convert}",
        "parquet": f"{path} is a Parquet table, not HDF5: {convert}",
        "gzip": f"{path} is gzip-compressed, not HDF5: if it is a CSV table named *.csv.gz, {convert}",
        "npy": f"{path} is a NumPy .npy array, not HDF5: {numpy_hint}",
        "npz": f"{path} is a NumPy .npz archive, not HDF5: {numpy_hint}",
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


def detect_delimiter(header_line: str) -> str:
    """The candidate (, ; tab |) that occurs most often outside quotes in the header; ',' if none."""
    unquoted = re.sub(r'"[^"]*"', "", header_line)
    counts = [(unquoted.count(d), -i, d) for i, d in enumerate(DELIMITERS)]
    best = max(counts)
    return best[2] if best[0] > 0 else ","


def _first_line(path, compressed):
    import gzip

    opener = gzip.open if compressed else open
    with opener(path, "rb") as handle:
        raw = handle.readline(1 << 20)
    return raw.decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")


@dataclass(frozen=True)
class ColumnInfo:
    """One column as the table offers it: kind 'numeric', 'bool', 'text' or 'other'."""

    name: str
    kind: str
    arrow_type: str


def _kind(pa, arrow_type):
    types = pa.types
    if types.is_dictionary(arrow_type):
        return _kind(pa, arrow_type.value_type)
    if types.is_boolean(arrow_type):
        return "bool"
    if types.is_integer(arrow_type) or types.is_floating(arrow_type) or types.is_decimal(arrow_type) \
            or types.is_null(arrow_type):
        return "numeric"  # null: nothing but blanks (in CSV's first block): numbers or missing
    if types.is_string(arrow_type) or types.is_large_string(arrow_type) or \
            (hasattr(types, "is_string_view") and types.is_string_view(arrow_type)):
        return "text"
    return "other"


class Table:
    """A CSV or Parquet file opened for streaming; `columns` lists what it offers."""

    def __init__(self, path: str, *, delimiter: "str | None" = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES):
        self.pa = pyarrow()
        self.path = path
        self.block_bytes = int(block_bytes)
        self.format = _table_format(path)
        self.delimiter = None
        if self.format == "csv":
            compressed = path.lower().endswith(".gz")
            self.delimiter = delimiter or detect_delimiter(_first_line(path, compressed))
            try:  # pyarrow infers the types from the first block
                schema = self._csv_reader(None).schema
            except self.pa.ArrowInvalid as exc:
                raise self._csv_error(exc, None, 0) from None
        else:
            schema = self._parquet_file().schema_arrow
        self.columns = [ColumnInfo(f.name, _kind(self.pa, f.type), str(f.type)) for f in schema]
        _check_names([c.name for c in self.columns], path)

    @property
    def names(self) -> "list[str]":
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnInfo:
        return next(c for c in self.columns if c.name == name)

    def batches(self, numeric: "list[str]", categorical: "list[str]"):
        """Yield (RecordBatch, first_row): columns numeric (float64) then categorical (string).

        first_row is the 1-based data row number of the batch's first row.
        """
        wanted = list(numeric) + list(categorical)
        missing = [n for n in wanted if n not in self.names]
        if missing:
            raise MpigdError(f"{self.path} has no column {', '.join(map(repr, missing))} "
                             f"(columns there: {', '.join(self.names)})")
        source = self._csv_batches if self.format == "csv" else self._parquet_batches
        first_row = 1
        for batch in source(numeric, categorical):
            yield batch, first_row
            first_row += batch.num_rows

    # -- CSV ---------------------------------------------------------------------------
    def _csv_reader(self, convert, use_threads=True, row_handler=None):
        csv = self.pa.csv
        read = csv.ReadOptions(block_size=self.block_bytes, use_threads=use_threads)
        parse = csv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=row_handler)
        return csv.open_csv(self.path, read_options=read, parse_options=parse,
                            convert_options=convert or csv.ConvertOptions())

    def _csv_convert(self, numeric, categorical, text_numbers=False):
        pa = self.pa
        types = {n: pa.string() for n in categorical}
        for name in numeric:
            if text_numbers:
                types[name] = pa.string()
            else:
                types[name] = pa.bool_() if self.column(name).kind == "bool" else pa.float64()
        return pa.csv.ConvertOptions(column_types=types, include_columns=list(numeric) + list(categorical),
                                     strings_can_be_null=True)

    def _csv_batches(self, numeric, categorical):
        convert = self._csv_convert(numeric, categorical)
        reader, done = None, 0
        while True:
            try:  # opening converts the first block: it fails like a later block would
                if reader is None:
                    reader = self._csv_reader(convert)
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except self.pa.ArrowInvalid as exc:
                raise self._csv_error(exc, convert, done, numeric) from None
            done += batch.num_rows
            yield _as_floats(self.pa, batch, len(numeric))

    def _csv_error(self, exc, convert, rows_before, numeric=()):
        text = str(exc)
        if text.startswith("Empty CSV file"):
            return MpigdError(f"{self.path} is empty: a table needs a header row and data rows")
        if "conversion error" in text and numeric:
            found = locate_text(self, numeric, rows_before)
            if found:
                return TextInNumericColumn(self.path, *found)
        if "straddling" in text:
            return MpigdError(f"{self.path}: a row after data row {rows_before} is longer than one block "
                              f"({self.block_bytes} bytes); raise --block-mb")
        if "parse error" in text.lower():
            return MpigdError(self._parse_error_message(convert, text))
        if "UTF8" in text or "UTF-8" in text:
            return MpigdError(f"{self.path} is not UTF-8 text (pyarrow: {text}); convert it, e.g. "
                              "`iconv -f latin1 -t utf-8 IN > OUT`")
        return MpigdError(f"cannot read {self.path} as CSV after data row {rows_before} "
                          f"(pyarrow: {text})")

    def _parse_error_message(self, convert, text):
        """Re-read without threads, where pyarrow knows the line number of a malformed row."""
        seen = []
        reader = None
        try:
            reader = self._csv_reader(convert, use_threads=False,
                                      row_handler=lambda row: seen.append(row) or "error")
            for _ in reader:
                pass
        except (self.pa.ArrowInvalid, MpigdError):
            pass
        where, detail = "", text
        if seen:
            row = seen[0]
            where = f" at line {row.number}" if row.number else ""
            detail = (f"expected {row.expected_columns} fields, got {row.actual_columns}: "
                      f"{row.text[:80]!r}")
        shown = {"\t": "tab"}.get(self.delimiter, self.delimiter)
        return (f"{self.path} is not a well-formed CSV table{where} (line 1 is the header): {detail}; "
                f"check --delimiter (used {shown!r}) and quoting")

    # -- Parquet -----------------------------------------------------------------------
    def _parquet_file(self):
        try:
            return self.pa.parquet.ParquetFile(self.path)
        except (self.pa.ArrowException, OSError) as exc:
            raise MpigdError(f"cannot read {self.path} as Parquet (pyarrow: {exc})") from None

    def _parquet_batches(self, numeric, categorical):
        pa = self.pa
        handle = self._parquet_file()
        width = max(1, len(numeric) + len(categorical))
        rows = max(1024, self.block_bytes // (8 * width))
        try:
            for batch in handle.iter_batches(batch_size=rows, columns=list(numeric) + list(categorical)):
                arrays = [pa.compute.cast(batch.column(i), pa.float64(), safe=False)
                          for i in range(len(numeric))]
                arrays += [pa.compute.cast(batch.column(len(numeric) + i), pa.string())
                           for i in range(len(categorical))]
                yield pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
        except (pa.ArrowException, OSError) as exc:
            raise MpigdError(f"cannot read {self.path} as Parquet (pyarrow: {exc})") from None
        finally:
            handle.close()


class TextInNumericColumn(MpigdError):
    """A value in a numeric column that is not a number; `column`, `row`, `value` say where."""

    def __init__(self, path, column, row, value, hint=""):
        super().__init__(f"text in numeric column '{column}' of {path}: {value!r} at data row {row} "
                         f"(1-based, header not counted); fix that value (a blank cell is missing){hint}")
        self.path, self.column, self.row, self.value, self.hint = path, column, row, value, hint


def _as_floats(pa, batch, numeric_count):
    """CSV batches carry bool columns as bool: make every numeric column float64."""
    arrays = list(batch.columns)
    for i in range(numeric_count):
        if arrays[i].type != pa.float64():
            arrays[i] = pa.compute.cast(arrays[i], pa.float64())
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def locate_text(table: Table, numeric: "list[str]", rows_before: int):
    """(column, row, value) of the first non-number in `numeric` at or after rows_before + 1.

    Reads the columns as text (only when a conversion already failed) and narrows each
    block down by halving, so finding the value costs a few casts per block.
    """
    pa = table.pa
    try:
        return _scan_for_text(pa, table, numeric, rows_before)
    except pa.ArrowInvalid:  # a malformed row before the bad value: not a value error
        return None


def _scan_for_text(pa, table, numeric, rows_before):
    reader = table._csv_reader(table._csv_convert(numeric, [], text_numbers=True))
    first = 1
    for batch in reader:
        if first + batch.num_rows > rows_before + 1:
            hits = []
            for i, name in enumerate(numeric):
                target = pa.bool_() if table.column(name).kind == "bool" else pa.float64()
                bad = _first_bad(pa, pa.compute.utf8_trim_whitespace(batch.column(i)), target)
                if bad is not None:
                    hits.append((bad, name, batch.column(i)[bad].as_py()))
            if hits:
                bad, name, value = min(hits)
                return name, first + bad, value
        first += batch.num_rows
    return None


def _first_bad(pa, array, target):
    def fails(part):
        try:
            pa.compute.cast(part, target)
        except pa.ArrowInvalid:
            return True
        return False

    if not fails(array):
        return None
    lo, hi = 0, len(array)  # invariant: array[lo:hi] fails to cast
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(array[lo:mid]) else (mid, hi)
    return lo


def _check_names(names, path):
    blank = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise MpigdError(f"{path}: column {blank[0]} of the header has no name; give every column a name")
    seen, dup = set(), []
    for name in names:
        if name in seen and name not in dup:
            dup.append(name)
        seen.add(name)
    if dup:
        raise MpigdError(f"{path} has duplicate column names: {', '.join(map(repr, dup))}; "
                         "rename them so every column is unique")


def _table_format(path):
    """'csv' or 'parquet', or an error saying what the file is instead."""
    if not os.path.exists(path):
        raise MpigdError(f"table {path} does not exist")
    if os.path.isdir(path):
        raise MpigdError(f"table {path} is a directory; give a CSV or Parquet file")
    try:
        kind = sniff(path)
    except OSError as exc:
        raise MpigdError(f"cannot read {path}: {exc.strerror}") from None
    lower = path.lower()
    if kind == "parquet" or (kind is None and lower.endswith((".parquet", ".pq"))):
        return "parquet"
    if kind in ("csv", "text", "empty") or (kind == "gzip" and lower.endswith(".gz")):
        if kind == "empty":
            raise MpigdError(f"{path} is empty: a table needs a header row and data rows")
        return "csv"
    what = {"hdf5": "already an HDF5 file: train on it with `--data`",
            "npy": "a NumPy .npy array, not a table with named columns",
            "npz": "a NumPy .npz archive, not a table with named columns",
            "zip": "a zip archive; unpack it first",
            "gzip": "gzip-compressed; name it *.csv.gz to read it as compressed CSV"}
    raise MpigdError(f"{path} is {what.get(kind, 'not a CSV or Parquet table (binary data of unknown kind)')}; "
                     "import reads CSV (with a header row) and Parquet")
