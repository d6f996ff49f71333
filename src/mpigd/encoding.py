"""The feature encoding of an imported table: which columns become which columns of X.

Owns: numeric columns (copied as float), categorical columns (one-hot over the categories
found at import, named `column=value`), the JSON record of both kept in the HDF5 file's
`encoding` attribute, and applying it to new rows of a raw table (`encode_batch`,
`encode_table`), where a category the import did not see is an error that names it.
`import` and `predict` share this code, so a table is encoded the same way for both.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from .errors import MpigdError

FORMAT = "mpigd-encoding/1"


@dataclass(frozen=True)
class Column:
    """One source column: kind 'numeric' or 'categorical' (one-hot over `categories`)."""

    name: str
    kind: str
    categories: tuple = ()
    drop_first: bool = False  # the first category is the reference: all-zero, no column

    def feature_names(self) -> "list[str]":
        if self.kind == "numeric":
            return [self.name]
        kept = self.categories[1:] if self.drop_first else self.categories
        return [f"{self.name}={value}" for value in kept]


@dataclass(frozen=True)
class Encoding:
    """How the rows of a table become (X, y): `columns` in order, then `target` (or None)."""

    columns: tuple
    target: "str | None"
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        names = self.feature_names
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise MpigdError(f"feature names collide after one-hot encoding: {', '.join(twice)}; "
                             "rename the columns involved")
        index = {c.name: {v: i for i, v in enumerate(c.categories)} for c in self.columns
                 if c.kind == "categorical"}
        object.__setattr__(self, "_index", index)

    @property
    def feature_names(self) -> "list[str]":
        return [name for column in self.columns for name in column.feature_names()]

    @property
    def width(self) -> int:
        return len(self.feature_names)

    @property
    def numeric(self) -> "list[str]":
        return [c.name for c in self.columns if c.kind == "numeric"]

    @property
    def categorical(self) -> "list[str]":
        return [c.name for c in self.columns if c.kind == "categorical"]

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "target": self.target, "feature_names": self.feature_names,
            "columns": [{"name": c.name, "kind": c.kind, "categories": list(c.categories),
                         "drop_first": c.drop_first} if c.kind == "categorical"
                        else {"name": c.name, "kind": c.kind} for c in self.columns],
        })

    @classmethod
    def from_json(cls, text: str) -> "Encoding":
        record = json.loads(text)
        if record.get("format") != FORMAT:
            raise MpigdError(f"unknown encoding format {record.get('format')!r} (expected {FORMAT})")
        columns = tuple(Column(c["name"], c["kind"], tuple(c.get("categories", ())),
                               bool(c.get("drop_first", False))) for c in record["columns"])
        encoding = cls(columns, record.get("target"))
        if encoding.feature_names != record["feature_names"]:
            raise MpigdError("the encoding's feature names do not match its columns: the file is damaged")
        return encoding


@dataclass
class Block:
    """Encoded rows: X (rows x width), y (rows, or None) and their 1-based source data rows."""

    X: np.ndarray
    y: "np.ndarray | None"
    rows: np.ndarray


def encode_batch(encoding: Encoding, batch, first_row: int, *, missing: str = "error",
                 with_target: bool = True, dtype="float64", source: str = "the table") -> Block:
    """Encode one Arrow batch (numeric columns as float64, categorical as string, the target last
    when `with_target`), rows numbered from `first_row`.

    missing='error' raises naming the column and first rows with a null, NaN or infinite
    value; 'drop' leaves such rows out (Block.rows tells which were kept).
    """
    values = {name: _floats(batch.column(name)) for name in encoding.numeric}
    if with_target:
        values[encoding.target] = _floats(batch.column(encoding.target))
    codes = {name: _codes(encoding, name, batch.column(name), first_row, source)
             for name in encoding.categorical}
    bad = np.zeros(batch.num_rows, dtype=bool)
    for array in values.values():
        bad |= ~np.isfinite(array)
    for array in codes.values():
        bad |= array < 0
    if bad.any() and missing == "error":
        ordered = {c.name: values.get(c.name, codes.get(c.name)) for c in encoding.columns}
        if with_target:
            ordered[encoding.target] = values[encoding.target]
        raise missing_error(source, first_row, ordered)
    keep = np.flatnonzero(~bad)
    X = np.zeros((len(keep), encoding.width), dtype=dtype)
    col = 0
    for column in encoding.columns:
        if column.kind == "numeric":
            X[:, col] = values[column.name][keep]
            col += 1
            continue
        code = codes[column.name][keep] - column.drop_first
        hot = np.flatnonzero(code >= 0)
        X[hot, col + code[hot]] = 1
        col += len(column.feature_names())
    y = values[encoding.target][keep].astype(dtype) if with_target else None
    return Block(X, y, keep.astype(np.int64) + first_row)


def _floats(array):
    return array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # null -> NaN


def _codes(encoding, name, array, first_row, source):
    """Category index per row (-1 for a missing value); an unseen category is an error."""
    from .tables import pyarrow

    pa = pyarrow()
    known = encoding._index[name]
    index = pa.compute.index_in(array, value_set=pa.array(list(known), pa.string()))
    codes = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    unseen = np.flatnonzero((codes < 0) & array.is_valid().to_numpy(zero_copy_only=False))
    if len(unseen):
        i = int(unseen[0])
        shown = ", ".join(list(known)[:10]) + (", ..." if len(known) > 10 else "")
        raise MpigdError(f"column '{name}' of {source} has category {array[i].as_py()!r} at data row "
                         f"{first_row + i} that the training table did not have (known: {shown}); "
                         "only the categories seen at import can be encoded")
    return codes


def missing_error(source: str, first_row: int, columns: dict, limit: int = 5) -> MpigdError:
    """The message for missing values: each affected column with its first rows (1-based)."""
    parts = []
    for name, array in columns.items():
        bad = np.flatnonzero(array < 0) if array.dtype.kind == "i" else np.flatnonzero(~np.isfinite(array))
        if len(bad):
            rows = ", ".join(str(first_row + int(i)) for i in bad[:limit])
            word = "row" if len(bad) == 1 else "rows"
            parts.append(f"'{name}' at data {word} {rows}" + (" ..." if len(bad) > limit else ""))
    return MpigdError(f"missing or non-finite values in {source}: column {'; column '.join(parts[:3])} "
                      "(rows are 1-based, header not counted); fill them in, or leave such rows "
                      "out with --missing drop")


def encode_table(path: str, encoding: Encoding, *, target: str = "ignore", missing: str = "error",
                 delimiter: "str | None" = None, dtype="float64", block_bytes: "int | None" = None):
    """Yield Blocks of a raw CSV/Parquet table encoded exactly as at import, in row order.

    target: 'ignore' (y is None), 'require' (the table must hold it), 'auto' (y if present).
    The table needs every source column of the encoding; others are ignored.
    """
    from .tables import DEFAULT_BLOCK_BYTES, Table

    table = Table(path, delimiter=delimiter, block_bytes=block_bytes or DEFAULT_BLOCK_BYTES)
    with_target = target == "require" or (target == "auto" and encoding.target in table.names)
    numeric = encoding.numeric + ([encoding.target] if with_target else [])
    for batch, first_row in table.batches(numeric, encoding.categorical):
        yield encode_batch(encoding, batch, first_row, missing=missing, with_target=with_target,
                           dtype=dtype, source=path)


def write(h5file, encoding: Encoding) -> None:
    """Record the encoding (JSON), the feature names and the target in the file's attributes."""
    h5file.attrs["encoding"] = encoding.to_json()
    h5file.attrs["feature_names"] = encoding.feature_names
    h5file.attrs["target"] = encoding.target or ""


def read(h5file) -> "Encoding | None":
    """The Encoding of a file written by `import` (an open h5py.File), or None for other files."""
    text = h5file.attrs.get("encoding")
    if text is None:
        return None
    return Encoding.from_json(text.decode() if isinstance(text, bytes) else str(text))
