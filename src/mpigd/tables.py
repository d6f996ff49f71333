"""Reading user tables (CSV with a header row, Parquet) in row blocks.

Owns: the CSV delimiter, the column kinds a table offers (numeric, bool, text, other),
and `Table.batches`, which streams chosen columns as float64 (numeric) or string
(categorical) Arrow record batches with their 1-based data row numbers, turning pyarrow's
failures into one-line MpigdErrors that name the column, the row and the value. Memory:
the block being worked on plus pyarrow's read-ahead (see DEFAULT_BLOCK_BYTES). What kind
of file a path holds is filekind.sniff's (re-exported here as tables.sniff).

Row numbers are 1-based data rows: row 1 is the first row after the header.
"""

import os
import re
from dataclasses import dataclass

from .errors import MpigdError
from .filekind import DELIMITERS, not_hdf5_message, sniff  # noqa: F401 - tables.sniff is API

INSTALL_HINT = "reading CSV/Parquet tables needs pyarrow: pip install 'mpigd[table]' (or pip install pyarrow)"
# Per CSV block. pyarrow's streaming CSV reader reads up to 32 blocks ahead on a background
# thread (kDefaultBackgroundMaxQ in Arrow C++, not configurable), so the block size, not
# the table, sets the memory: 1 MiB (pyarrow's own default) keeps that read-ahead ~32 MiB.
DEFAULT_BLOCK_BYTES = 1 << 20


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
            # pre_buffer (pyarrow's default) fetches whole row groups ahead: 322 MiB of buffers
            # on a 10^7-row file against 18 MiB without; decoding goes a row group at a time.
            return self.pa.parquet.ParquetFile(self.path, pre_buffer=False)
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
