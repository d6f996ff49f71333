"""`python -m mpigd predict RUN_DIR --data FILE --out preds.csv`: a trained model applied to new rows.

weights.h5 holds w and b in original units (the --standardize scaling and --intercept
centering are folded into them: w = w'/s, b = ȳ − μᵀw), its feature names and, for data
made by `import`, the encoding; so prediction is x·w + b on rows encoded as at import.

In parallel under mpirun: an HDF5 file is split into balanced row blocks, each rank reading
only its own; a CSV/Parquet table is streamed by every rank, which encodes and predicts
only every size-th block of it (parsing is repeated, encoding and arithmetic are shared).
Each rank sends [row, prediction, target] per row in one Gatherv; rank 0 sorts them by
row, so the output is in input order whatever the rank count, and writes it atomically.
"""

import os

import numpy as np

from . import features, metrics, rundir
from .errors import MpigdError

_COLUMNS = 3  # row (1-based), prediction, target (NaN when --data has none)


class Model:
    """What weights.h5 says: w, b, a name per feature, the import's encoding (or None)."""

    def __init__(self, run_dir: str):
        import h5py

        from .encoding import Encoding

        path = os.path.join(run_dir, rundir.WEIGHTS)
        if not os.path.isdir(run_dir):
            raise MpigdError(f"run directory {run_dir} does not exist; give the --out directory "
                             "of a completed `python -m mpigd train`")
        if not os.path.exists(path):
            raise MpigdError(f"{run_dir} holds no {rundir.WEIGHTS}: not a completed training run "
                             "(a run writes it when it finishes); train first, or give another RUN_DIR")
        with h5py.File(path, "r") as f:
            self.w = f["w"][()]
            self.b = float(f["intercept"][()]) if "intercept" in f else 0.0
            self.names = [features._text(n) for n in f["feature_names"][()]] \
                if "feature_names" in f else features.default_names(len(self.w))
            text = f.attrs.get("encoding")
            self.x_dataset = features._text(f.attrs.get("x_dataset", "X")) or "X"
            self.y_dataset = features._text(f.attrs.get("y_dataset", "y")) or "y"
        self.encoding = None if text is None else Encoding.from_json(features._text(text))

    def check_names(self, theirs: "list[str] | None", count: int, path: str) -> None:
        """--data must hold the features the run was trained on, in the same order."""
        if count != len(self.w):
            shown = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
            raise MpigdError(f"--data {path} has {count} features but the run was trained on "
                             f"{len(self.w)} ({shown}); give rows with the same features")
        if theirs is not None and list(theirs) != self.names:
            j = next(i for i, (a, b) in enumerate(zip(self.names, theirs)) if a != b)
            raise MpigdError(f"--data {path} has other features than the run: feature {j} is "
                             f"'{theirs[j]}', the run's is '{self.names[j]}'; give rows with the "
                             "same features in the same order")


def _from_hdf5(model: Model, path: str, comm) -> np.ndarray:
    """This rank's [row, prediction, target] rows of an HDF5 file (its balanced block)."""
    from . import data

    with data.readable(path), data.open_input(path) as h5file:
        x = h5file.get(model.x_dataset)
        if x is None or getattr(x, "ndim", 0) != 2:
            raise MpigdError(f"--data {path} has no 2-D dataset '{model.x_dataset}' (the run's "
                             "--x-dataset); give an HDF5 file with X, or a CSV/Parquet table")
        model.check_names(features.names_in(h5file, model.x_dataset), x.shape[1], path)
        lo, hi = data.block_range(x.shape[0], comm.size, comm.rank)
        out = np.full((hi - lo, _COLUMNS), np.nan)
        out[:, 0] = np.arange(lo + 1, hi + 1)
        X = x[lo:hi].astype(np.float64)
        y = h5file.get(model.y_dataset)
        if y is not None and y.shape[:1] == x.shape[:1]:
            out[:, 2] = np.asarray(y[lo:hi], dtype=np.float64).reshape(-1)
    data.check_finite(X, np.zeros(len(X)), first_row=lo)
    out[:, 1] = X @ model.w + model.b
    return out


def _from_table(model: Model, path: str, comm, delimiter, block_mb: float) -> np.ndarray:
    """This rank's [row, prediction, target] rows of a raw table: every size-th block."""
    from .encoding import encode_batch
    from .importer import parse_delimiter
    from .tables import Table

    enc = model.encoding
    if enc is None:
        raise MpigdError(f"--data {path} is a table, but the run was trained on a file not made by "
                         "`mpigd import`, so there is no encoding to apply; give an HDF5 file with "
                         f"X of {len(model.w)} features")
    table = Table(path, delimiter=parse_delimiter(delimiter), block_bytes=max(1 << 12, int(block_mb * (1 << 20))))
    absent = [c.name for c in enc.columns if c.name not in table.names]
    if absent:
        raise MpigdError(f"--data {path} has no column {', '.join(map(repr, absent))}, which the run "
                         f"was trained with (columns there: {', '.join(table.names)})")
    with_target = enc.target in table.names
    parts = []
    numeric = enc.numeric + ([enc.target] if with_target else [])
    for i, (batch, first_row) in enumerate(table.batches(numeric, enc.categorical)):
        if i % comm.size != comm.rank:
            continue
        block = encode_batch(enc, batch, first_row, with_target=with_target, source=path)
        part = np.full((len(block.rows), _COLUMNS), np.nan)
        part[:, 0], part[:, 1] = block.rows, block.X @ model.w + model.b
        if with_target:
            part[:, 2] = block.y
        parts.append(part)
    return np.concatenate(parts) if parts else np.zeros((0, _COLUMNS))


def _gather(comm, mine: np.ndarray) -> "np.ndarray | None":
    """Collective: every rank's rows on rank 0 (one Gather of counts, one Gatherv), in row order."""
    from mpi4py import MPI

    count = np.array([mine.size], dtype=np.int64)
    counts = np.zeros(comm.size, dtype=np.int64) if comm.rank == 0 else None
    comm.Gather(count, counts, root=0)
    every = np.empty(int(counts.sum()), dtype=np.float64) if comm.rank == 0 else None
    comm.Gatherv(np.ascontiguousarray(mine).reshape(-1),
                 [every, counts, None, MPI.DOUBLE] if comm.rank == 0 else None, root=0)
    if every is None:
        return None
    rows = every.reshape(-1, _COLUMNS)
    return rows[np.argsort(rows[:, 0], kind="stable")]


def _write(path: str, rows: np.ndarray, with_target: bool) -> None:
    lines = ["row,prediction" + (",target" if with_target else "")]
    for row, value, target in rows:
        lines.append(f"{int(row)},{value:.17g}" + (f",{target:.17g}" if with_target else ""))
    rundir.write_text(path, "\n".join(lines) + "\n")


def _kind(path: str) -> str:
    from .filekind import sniff

    if not os.path.isfile(path):
        raise MpigdError(f"--data {path} does not exist; give an HDF5 file, or a CSV/Parquet table")
    return "hdf5" if sniff(path) == "hdf5" else "table"


def command(args) -> int:
    """The `predict` subcommand: every rank predicts its rows, rank 0 writes --out."""
    if os.path.isdir(args.out):
        raise MpigdError(f"--out {args.out} is a directory; give a file name such as preds.csv")
    if os.path.exists(args.out) and not args.force:
        raise MpigdError(f"{args.out} exists; pass --force to replace it")
    if not args.block_mb > 0:
        raise MpigdError(f"--block-mb must be > 0, got {args.block_mb}")
    from mpi4py import MPI

    from .comm import agreed

    comm = MPI.COMM_WORLD
    with agreed(comm, f"reading the run in {args.run_dir}"):
        model = Model(args.run_dir)
        kind = _kind(args.data)
    with agreed(comm, f"predicting {args.data}"):
        mine = _from_hdf5(model, args.data, comm) if kind == "hdf5" else \
            _from_table(model, args.data, comm, args.delimiter, args.block_mb)
    rows = _gather(comm, mine)
    with agreed(comm, f"writing {args.out}"):
        if rows is not None:
            with_target = bool(len(rows)) and not np.isnan(rows[:, 2]).any()
            _write(args.out, rows, with_target)
            if not args.quiet:
                print(_summary(args, model, rows, with_target, comm.size), flush=True)
    return 0


def _summary(args, model, rows, with_target, ranks) -> str:
    lines = [f"mpigd predict: {len(rows)} rows of {args.data} on {ranks} ranks with the weights of "
             f"{args.run_dir} ({len(model.w)} features" + (", intercept)" if model.b else ")"),
             f"  wrote {args.out} (row,prediction{',target' if with_target else ''}; in input order)"]
    if with_target:
        residual = rows[:, 1] - rows[:, 2]
        y = rows[:, 2] - rows[:, 2].mean()
        found = metrics.from_sums(np.array([len(rows), residual @ residual, np.abs(residual).sum(),
                                            y.sum(), y @ y]))
        lines.append(f"  target found in --data: {metrics.line('all', found)}")
    return "\n".join(lines)
