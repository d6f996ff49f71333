"""`python -m mpigd import TABLE --target COLUMN --out FILE.h5`: a CSV/Parquet table to trainer input.

Owns: choosing the feature columns (--features, --categorical), the two streaming passes
and the output file. Pass 1 reads the chosen columns block by block to count the rows,
check for missing values and collect the categories of categorical columns (X's width is
known only then); pass 2 reads them again, encodes each block (encoding.encode_batch) and
writes it into X and y, whose shape is fixed from pass 1. Memory is one block plus the
category sets, whatever the table's size. The file appears atomically (temporary name,
then rename) and nothing is left behind on failure.
"""

import hashlib
import os
import time
from dataclasses import dataclass

from . import __version__
from .errors import MpigdError, launcher_rank

# numpy, pyarrow, h5py and .encoding load only when the command runs, so that building the
# CLI's parser (every `python -m mpigd` start, on every rank) stays as light as before.

DEFAULT_MAX_CATEGORIES = 1000


@dataclass
class Plan:
    """Which columns go where: numeric and categorical features (in output order), and the rest."""

    columns: list  # (name, kind) with kind 'numeric' or 'categorical', in --features order
    ignored: list  # (name, why)
    guessed: set = None  # categorical because they hold text (auto), not because --categorical said so


def parse_delimiter(text: "str | None") -> "str | None":
    if text is None:
        return None
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(text.lower(), text)
    if len(value) != 1 or value in "\r\n\"":
        raise MpigdError(f"--delimiter must be one character (or tab, comma, semicolon, pipe); got {text!r}")
    return value


def _names(text):
    return [n.strip() for n in text.split(",") if n.strip()]


def plan_columns(table, target: str, features: "list[str] | None", categorical: str) -> Plan:
    """Check the target and choose the feature columns; one-line errors for every bad choice."""
    names = table.names
    listing = f"columns there: {', '.join(names)}"
    if target not in names:
        raise MpigdError(f"target column '{target}' not found in {table.path} ({listing}); "
                         "choose one with --target")
    _check_target(table, target)
    chosen = None if categorical in ("auto", "none") else _names(categorical)
    for name in chosen or []:
        if name not in names:
            raise MpigdError(f"--categorical names '{name}', which is not a column of {table.path} ({listing})")
        if name == target:
            raise MpigdError(f"--categorical names the target '{target}'; the target must be numeric")
    # pyarrow guessed these columns' type (text) from the CSV's first block; Parquet says it.
    guessed = {c.name for c in table.columns if c.kind == "text"} \
        if chosen is None and table.format == "csv" else set()
    if features is not None:
        return Plan(_explicit(table, target, features, categorical, chosen, listing), [], guessed)
    columns, ignored = [], []
    for info in table.columns:
        if info.name == target:
            continue
        kind = _feature_kind(info, categorical, chosen)
        if kind:
            columns.append((info.name, kind))
        else:
            ignored.append((info.name, f"{info.kind} ({info.arrow_type})"))
    return Plan(columns, ignored, guessed)


def _check_target(table, target):
    info = table.column(target)
    if info.kind in ("numeric", "bool"):
        return
    example = ""
    if info.kind == "text" and table.format == "csv":
        from .tables import locate_text

        found = locate_text(table, [target], 0)
        example = f", e.g. {found[2]!r} at data row {found[1]}" if found else ""
    raise MpigdError(f"target column '{target}' of {table.path} is not numeric (type {info.arrow_type}"
                     f"{example}); least squares needs a number to predict: choose another --target")


def _feature_kind(info, categorical, chosen):
    if chosen is not None:
        if info.name in chosen:
            return "categorical"
        return "numeric" if info.kind in ("numeric", "bool") else None
    if info.kind in ("numeric", "bool"):
        return "numeric"
    if info.kind == "text" and categorical == "auto":
        return "categorical"
    return None


def _explicit(table, target, features, categorical, chosen, listing):
    seen, columns = set(), []
    for name in features:
        if name not in table.names:
            raise MpigdError(f"--features names '{name}', which is not a column of {table.path} ({listing})")
        if name == target:
            raise MpigdError(f"--features includes the target '{target}'; a column cannot predict itself")
        if name in seen:
            raise MpigdError(f"--features names '{name}' twice")
        seen.add(name)
        info = table.column(name)
        kind = _feature_kind(info, categorical, chosen)
        if kind is None:
            how = "one-hot it with --categorical auto (or --categorical " + name + ")" \
                if info.kind in ("text", "other") else ""
            raise MpigdError(f"feature column '{name}' has type {info.arrow_type}, not numbers: {how}"
                             " or leave it out of --features")
        columns.append((name, kind))
    return columns


@dataclass
class Scan:
    """What pass 1 found: rows read, rows kept, categories per categorical column."""

    rows: int
    kept: int
    categories: dict
    missing: dict  # column -> rows with a missing value there


def scan(table, plan: Plan, target: str, missing: str, max_categories: int) -> Scan:
    """Pass 1: count rows, check missing values, collect the categories of the kept rows."""
    import numpy as np

    from .encoding import missing_error

    pa = table.pa
    numeric = [n for n, k in plan.columns if k == "numeric"] + [target]
    categorical = [n for n, k in plan.columns if k == "categorical"]
    found = {name: set() for name in categorical}
    counts = dict.fromkeys(numeric + categorical, 0)
    rows = kept = 0
    for batch, first_row in table.batches(numeric, categorical):
        bad_by_column = {n: ~np.isfinite(batch.column(n).to_numpy(zero_copy_only=False).astype(float))
                         for n in numeric}
        bad_by_column.update({n: ~batch.column(n).is_valid().to_numpy(zero_copy_only=False)
                              for n in categorical})
        bad = np.zeros(batch.num_rows, dtype=bool)
        for name, mask in bad_by_column.items():
            bad |= mask
            counts[name] += int(mask.sum())
        if bad.any() and missing == "error":
            ordered = [n for n, _ in plan.columns] + [target]
            raise missing_error(table.path, first_row,
                                {n: np.where(bad_by_column[n], np.nan, 0.0) for n in ordered})
        keep = pa.array(~bad)
        for name in categorical:
            if name in plan.guessed and first_row == 1:  # the block pyarrow guessed from
                _refuse_mostly_numbers(pa, table.path, name, batch.column(name), first_row)
            found[name].update(pa.compute.unique(batch.column(name).filter(keep)).to_pylist())
            if len(found[name]) > max_categories:
                raise MpigdError(f"categorical column '{name}' of {table.path} has more than "
                                 f"{max_categories} distinct values: an identifier, not a category? "
                                 "leave it out with --features, or raise --max-categories")
        rows += batch.num_rows
        kept += int((~bad).sum())
    return Scan(rows, kept, {n: sorted(v) for n, v in found.items()}, counts)


# A number as pyarrow's CSV reader accepts it: the test for "a numeric column with a typo".
_NUMBER = r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?inf(inity)?\s*$"


def _refuse_mostly_numbers(pa, path, name, column, first_row):
    """A text column whose values are mostly numbers is a numeric column with a typo in it
    (pyarrow saw text in its first block): say so rather than one-hot encode the numbers."""
    from .tables import TextInNumericColumn

    numbers = pa.compute.match_substring_regex(column, _NUMBER, ignore_case=True)
    count = pa.compute.sum(numbers).as_py() or 0
    first = pa.compute.index(numbers.fill_null(True), False).as_py()  # -1: all numbers
    if count * 2 <= len(column) - column.null_count or first < 0:
        return
    raise TextInNumericColumn(path, name, first_row + first, column[first].as_py(),
                              hint=f", or one-hot the column with --categorical {name}")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_scan(table, result: Scan):
    if result.rows == 0:
        raise MpigdError(f"{table.path} has a header but no data rows: nothing to import")
    if result.kept == 0:
        worst = sorted(result.missing.items(), key=lambda item: -item[1])[:3]
        detail = ", ".join(f"'{n}' missing in {c}" for n, c in worst if c)
        raise MpigdError(f"every one of the {result.rows} data rows of {table.path} has a missing "
                         f"value ({detail}): nothing left to import; leave those columns out with --features")


def write_file(table, encoding, result: Scan, out: str, *, missing: str, dtype: str,
               provenance: dict) -> None:
    """Pass 2: encode every block and write X, y, source_row and the attributes, atomically."""
    import h5py
    import numpy as np

    from .encoding import encode_batch
    from .encoding import write as write_encoding

    partial = f"{out}.partial-{os.getpid()}"
    try:
        with h5py.File(partial, "w", track_order=True) as f:
            X = f.create_dataset("X", (result.kept, encoding.width), dtype=dtype, track_times=False)
            y = f.create_dataset("y", (result.kept,), dtype=dtype, track_times=False)
            rows = f.create_dataset("source_row", (result.kept,), dtype=np.int64, track_times=False)
            at = 0
            for batch, first_row in table.batches(encoding.numeric + [encoding.target], encoding.categorical):
                block = encode_batch(encoding, batch, first_row, missing=missing, dtype=dtype,
                                     source=table.path)
                if at + len(block.rows) > result.kept:
                    raise MpigdError(f"{table.path} changed while it was being imported; import it again")
                X[at : at + len(block.rows)] = block.X
                y[at : at + len(block.rows)] = block.y
                rows[at : at + len(block.rows)] = block.rows
                at += len(block.rows)
            if at != result.kept:
                raise MpigdError(f"{table.path} changed while it was being imported; import it again")
            write_encoding(f, encoding)
            f.attrs.update(provenance)
        os.replace(partial, out)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def command(args) -> int:
    """Run `import` from parsed arguments; returns the exit code (errors raise MpigdError)."""
    if launcher_rank() != 0:
        return 0  # one writer: under mpirun the other ranks have nothing to do
    from .encoding import Column, Encoding
    from .tables import Table, TextInNumericColumn

    started = time.perf_counter()
    table_path, out = args.table, args.out
    _check_out(table_path, out, args.force)
    if args.max_categories < 1 or args.block_mb <= 0:
        raise MpigdError("--max-categories and --block-mb must be positive")
    table = Table(table_path, delimiter=parse_delimiter(args.delimiter),
                  block_bytes=max(1 << 12, int(args.block_mb * (1 << 20))))
    features = _names(args.features) if args.features is not None else None
    if features is not None and not features:
        raise MpigdError("--features is empty; name at least one column, or leave the option out")
    plan = plan_columns(table, args.target, features, args.categorical)
    if not plan.columns:
        raise MpigdError(f"no feature columns in {table_path}: every column but the target "
                         f"'{args.target}' was left out ({_why(plan.ignored)})")
    before = os.stat(table_path)
    checksum = sha256_of(table_path)
    try:
        result = scan(table, plan, args.target, args.missing, args.max_categories)
    except TextInNumericColumn as exc:
        if exc.hint or exc.column == args.target:
            raise
        raise TextInNumericColumn(exc.path, exc.column, exc.row, exc.value,
                                  hint=f", or one-hot the column with --categorical {exc.column}") from None
    _check_scan(table, result)
    encoding = Encoding(tuple(Column(n, k, tuple(result.categories.get(n, ())),
                                     args.drop_first and k == "categorical") for n, k in plan.columns),
                        args.target)
    provenance = dict(
        importer=f"mpigd {__version__}", source=os.path.abspath(table_path), source_sha256=checksum,
        source_format=table.format, source_rows=result.rows, rows=result.kept,
        rows_dropped=result.rows - result.kept, missing=args.missing, dtype=args.dtype,
        delimiter=table.delimiter or "",
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_file(table, encoding, result, out, missing=args.missing, dtype=args.dtype, provenance=provenance)
    after = os.stat(table_path)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        os.remove(out)
        raise MpigdError(f"{table_path} changed while it was being imported; import it again")
    if not args.quiet:
        print(summary(table, encoding, plan, result, out, args.dtype, checksum,
                      time.perf_counter() - started))
    return 0


def _check_out(table_path, out, force):
    if os.path.exists(out) and os.path.exists(table_path) and os.path.samefile(out, table_path):
        raise MpigdError(f"--out {out} is the table itself; choose another file")
    if os.path.isdir(out):
        raise MpigdError(f"--out {out} is a directory; give a file name such as data.h5")
    if os.path.exists(out) and not force:
        raise MpigdError(f"{out} exists; pass --force to replace it")


def _why(ignored):
    return ", ".join(f"'{n}': {why}" for n, why in ignored) or "none"


def summary(table, encoding, plan, result, out, dtype, checksum, seconds) -> str:
    """The lines printed after a successful import."""
    shown = {"\t": "tab"}.get(table.delimiter, table.delimiter)
    source = f"{table.format}" + (f", delimiter {shown!r}" if table.delimiter else "")
    names = encoding.feature_names
    listed = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    lines = [f"mpigd: imported {table.path} ({source}): {result.rows} rows, "
             f"{result.rows - result.kept} dropped for missing values",
             f"  target:   {encoding.target}",
             f"  features: {len(names)}: {listed}"]
    for column in encoding.columns:
        if column.kind == "categorical":
            cats = ", ".join(column.categories[:8]) + (", ..." if len(column.categories) > 8 else "")
            ref = f"; reference {column.categories[0]!r}" if column.drop_first else ""
            lines.append(f"  one-hot:  {column.name}: {len(column.categories)} categories ({cats}){ref}")
    if plan.ignored:
        lines.append(f"  ignored:  {_why(plan.ignored)}")
    lines.append(f"  wrote {out}: X {result.kept} x {len(names)} {dtype}, y, source_row; "
                 f"sha256 {checksum[:16]}...; {seconds:.2f} s")
    return "\n".join(lines)
