"""Synthetic least-squares data: y = X w_true + noise, written to HDF5 in row blocks.

Rows are generated block by block, each block from its own seed (seed, block index), so
memory stays at one block whatever the size of the file and the same arguments give
byte-identical datasets.
"""

import os
import time

import numpy as np

from . import __version__, generate_parallel, rundir
from .errors import MpigdError, launcher_rank, launcher_size

# Rows per generation block: ~32 MB of float64 per block. It depends only on the number of
# features, so it is part of "the same arguments" and results do not depend on memory.
_BLOCK_VALUES = 4 << 20


def block_rows(features: int) -> int:
    return max(1, _BLOCK_VALUES // features)


NOISE = 0.1


def file_name(rows: int, features: int, seed: int, condition: float | None = None) -> str:
    """The name generated data go by in a data directory (default data, sweeps, Slurm)."""
    suffix = "" if condition is None else f"-cond{condition:g}"
    return f"synthetic-{rows}x{features}-seed{seed}{suffix}.h5"


SOURCE_PREFIX = "synthetic:"


def parse_source(text: str | None) -> tuple[int, int, int] | None:
    """`--data synthetic:ROWSxFEATURES[:SEED]` -> (rows, features, seed); None for a file name.

    Such data are generated in memory by every rank, only its own rows (`rows_between`),
    bitwise the rows `generate --rows ROWS --features FEATURES --seed SEED` writes.
    """
    if not text or not str(text).startswith(SOURCE_PREFIX):
        return None
    shape, _, seed = str(text)[len(SOURCE_PREFIX):].partition(":")
    rows, _, features = shape.lower().partition("x")
    if not (rows.isdigit() and features.isdigit() and (seed.isdigit() or not seed)) \
            or int(rows) < 1 or int(features) < 1:
        raise MpigdError(f"--data {text}: in-place data are written synthetic:ROWSxFEATURES[:SEED], "
                         "e.g. synthetic:1000000x100 or synthetic:1000000x100:7 (rows and "
                         "features >= 1, seed >= 0)")
    return int(rows), int(features), int(seed or 0)


def generate_shard(comm, source: str, dtype: str = "auto", dedicated_server: bool = False):
    """Collective: `--data synthetic:RxD[:S]`: every rank generates its own rows, no file.

    Returns what the trainer's loader returns: (DatasetInfo, X, y, lo, hi).
    """
    from .comm import agreed
    from .data import DatasetInfo, compute_dtype, shard_rows

    workers = comm.size - 1 if dedicated_server else comm.size
    with agreed(comm, f"generating {source}"):
        rows, features, seed = parse_source(source)
        if rows < workers:
            raise MpigdError(f"{source}: {rows} rows cannot be shared by {workers} workers; "
                             "start fewer ranks or ask for more rows")
        kind = compute_dtype("float64", dtype)  # as the file would store them: float64
        lo, hi = shard_rows(rows, comm.size, comm.rank, dedicated_server)
        X, y = rows_between(rows, features, seed, lo, hi, dtype=kind.name)
    info = DatasetInfo(path=source, x_name="X", y_name="y", rows=rows, features=features,
                       x_dtype="float64", y_dtype="float64", y_shape=(rows,))
    return info, X, y, lo, hi


def ensure(directory: str, rows: int, features: int, seed: int = 0,
           condition: float | None = None, comm=None,
           parallel_io: str = "auto") -> tuple[str, bool]:
    """(path, generated): the float64 data set of these arguments in `directory`, made if absent.

    With `comm` (collective) rank 0 decides and every rank generates its own blocks.
    """
    path = os.path.join(directory, file_name(rows, features, seed, condition))
    found = matches(path, rows, features, seed, NOISE, "float64", condition) if _speaks(comm) else False
    if comm is not None and comm.size > 1:
        flag = np.array([found], dtype=np.int8)
        comm.Bcast(flag, root=0)
        found = bool(flag[0])
    if found:
        return path, False
    write(path, rows, features, seed, condition=condition, comm=comm, parallel_io=parallel_io)
    return path, True


def _speaks(comm) -> bool:
    return comm is None or comm.rank == 0


def mixing(features: int, seed: int, condition: float | None) -> np.ndarray | None:
    """The d x d matrix M = Q diag(s) Q^T that every block of rows is multiplied by, or None.

    X = Z M with Z i.i.d. N(0, 1) gives X^T X ~ rows * Q diag(s^2) Q^T, so s spaced
    geometrically over [K^-1/4, K^1/4] makes cond(X^T X) ~ K (times cond(Z^T Z), which is
    close to 1 when rows >> features). Q is random (from the seed alone), so the
    ill-conditioning mixes all features, as correlated real features do. It is fixed for the
    whole file, so block-wise (and parallel) generation stays exact.
    """
    if condition is None:
        return None
    if not (condition >= 1 and np.isfinite(condition)):
        raise MpigdError(f"--condition must be a finite number >= 1 (got {condition})")
    rng = np.random.default_rng([seed, 0, 1])  # a stream no block (seed, i) nor w_true uses
    Q, R = np.linalg.qr(rng.standard_normal((features, features)))
    Q *= np.sign(np.diag(R))  # the QR's sign convention would otherwise depend on LAPACK
    s = condition ** (np.linspace(-0.25, 0.25, features) if features > 1 else np.zeros(1))
    return (Q * s) @ Q.T


def true_weights(features: int, seed: int) -> np.ndarray:
    """w_true: drawn from its own seed (seed, 0), so it never depends on the row blocks."""
    return np.random.default_rng([seed, 0]).standard_normal(features)


def block(seed: int, index: int, rows: int, w_true: np.ndarray, noise: float,
          mix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Block `index` of the data set (its `rows` rows): X ~ N(0, 1) (times `mix`, see
    `mixing`), y = X w_true + noise.

    The one generator of values: the serial file, every rank's part of a parallel file and
    the rows generated in memory (`rows_between`) all come from here, block by block.
    """
    rng = np.random.default_rng([seed, index + 1])
    X = rng.standard_normal((rows, len(w_true)))
    if mix is not None:
        X = X @ mix
    y = X @ w_true + noise * rng.standard_normal(rows)
    return X, y


def blocks(rows: int, features: int, lo: int = 0, hi: int | None = None):
    """(index, first row, end row) of every generation block overlapping rows [lo, hi)."""
    step = block_rows(features)
    hi = rows if hi is None else hi
    for index in range(lo // step, -(-hi // step) if hi > lo else lo // step):
        yield index, index * step, min(rows, (index + 1) * step)


def rows_between(rows: int, features: int, seed: int, lo: int, hi: int, noise: float = NOISE,
                 dtype: str = "float64", condition: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows [lo, hi) of the data set `generate` would write, made in memory: bitwise those rows.

    Only the blocks overlapping [lo, hi) are generated, one at a time, so a rank pays for
    its own rows plus at most two partial blocks.
    """
    w_true = true_weights(features, seed)
    X = np.empty((hi - lo, features), dtype=dtype)
    y = np.empty(hi - lo, dtype=dtype)
    with _one_blas_thread():  # as `generate` computes X @ w_true
        mix = mixing(features, seed, condition)
        for index, first, end in blocks(rows, features, lo, hi):
            bx, by = block(seed, index, end - first, w_true, noise, mix)
            a, b = max(lo, first), min(hi, end)
            X[a - lo : b - lo] = bx[a - first : b - first]
            y[a - lo : b - lo] = by[a - first : b - first]
    return X, y


def check_arguments(rows: int, features: int, noise: float, collective: bool = False) -> None:
    """Refuse impossible sizes and noise (collective: every rank of a parallel job does)."""
    if rows < 1 or features < 1:
        raise MpigdError(f"--rows and --features must be >= 1 (got {rows} and {features})",
                         collective=collective)
    if noise < 0 or not np.isfinite(noise):
        raise MpigdError(f"--noise must be a finite number >= 0 (got {noise})", collective=collective)


def attributes(rows: int, features: int, seed: int, noise: float, dtype, compression,
               condition: float | None = None) -> dict:
    """The file's attributes: what `matches` compares, and how the values were made."""
    found = dict(generator=f"mpigd {__version__}", rows=rows, features=features, seed=seed,
                 noise=noise, dtype=np.dtype(dtype).name, compression=compression or "none",
                 model="y = X @ w_true + noise * N(0, 1); X ~ N(0, 1) i.i.d." if condition is None
                 else "y = X @ w_true + noise * N(0, 1); X = Z @ M, Z ~ N(0, 1) i.i.d., "
                      "M = Q diag(s) Q^T, s geometric over [K^-1/4, K^1/4], cond(X^T X) ~ K")
    if condition is not None:
        found["condition"] = float(condition)
    return found


def create_rows(h5file, n: int, features: int, dtype, compression: str | None):
    """Empty X (n x features) and y (n) in `h5file`: contiguous, or chunked and compressed."""
    layout = {}
    if compression:
        layout = dict(chunks=(min(n, max(1, 65536 // features)), features), compression=compression)
    X = h5file.create_dataset("X", (n, features), dtype=dtype, track_times=False, **layout)
    y = h5file.create_dataset("y", (n,), dtype=dtype, track_times=False,
                              **({"compression": compression} if compression else {}))
    return X, y


def fill_rows(X, y, rows: int, features: int, seed: int, noise: float, lo: int = 0,
              condition: float | None = None) -> None:
    """Write rows [lo, lo + len(X)) of the data set into the datasets X and y, block by block.

    A part file of a parallel generation holds the rows of whole blocks, so every block is
    still generated once, by one rank, exactly as the serial generator makes it.
    """
    dtype, hi = X.dtype, lo + X.shape[0]
    w_true = true_weights(features, seed)
    mix = mixing(features, seed, condition)
    local_file = _local_file(X)
    for index, first, end in blocks(rows, features, lo, hi):
        bx, by = block(seed, index, end - first, w_true, noise, mix)
        X[first - lo : end - lo] = bx.astype(dtype, copy=False)
        y[first - lo : end - lo] = by.astype(dtype, copy=False)
        if local_file:
            rundir.start_writeback(local_file)  # the disk writes while the next block is made


def _local_file(X) -> str | None:
    """The file X is a dataset of, where one process writes it (not parallel HDF5's mpio)."""
    import h5py

    if isinstance(X, h5py.Dataset) and X.file.driver == "sec2":
        return X.file.filename
    return None


def generate(path: str, rows: int, features: int, seed: int = 0, noise: float = NOISE,
             dtype: str = "float64", compression: str | None = None,
             condition: float | None = None) -> float:
    """Write X (rows x features), y (rows) and w_true (features) to `path`; return seconds.

    The file appears atomically (rundir.atomic_write), so an interrupted generation never
    leaves a file that looks complete.
    """
    return write(path, rows, features, seed, noise, dtype, compression, condition)


def write(path: str, rows: int, features: int, seed: int = 0, noise: float = NOISE,
          dtype: str = "float64", compression: str | None = None, condition: float | None = None,
          comm=None, parallel_io: str = "auto") -> float:
    """`generate` by one process, or collectively by every rank of `comm`, each its blocks.

    The same arguments give the same values whatever the number of ranks (the blocks are
    the same); only the file's layout differs (generate_parallel.py), as `parallel_io` says.
    """
    import h5py

    check_arguments(rows, features, noise, collective=comm is not None)
    mixing(features, seed, condition)  # a bad --condition is refused before any file is made
    dtype = np.dtype(dtype)
    if _speaks(comm):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    started = time.perf_counter()
    generate_parallel.drop_replaced_cache(path, *((comm.rank, comm.size) if comm else (0, 1)))
    data = generate_parallel.Rows(
        rows, features, dtype, create=lambda f, n: create_rows(f, n, features, dtype, compression),
        fill=lambda X, y, lo: fill_rows(X, y, rows, features, seed, noise, lo, condition),
        finish=lambda f: _finish(f, rows, features, seed, noise, dtype, compression, condition))
    if comm is None or comm.size == 1:
        def write_file(partial):
            with h5py.File(partial, "w", track_order=True) as f:
                X, y = data.create(f, rows)
                data.finish(f)  # before the rows: the layout (and bytes) of earlier versions
                data.fill(X, y, 0)

        rundir.atomic_write(path, write_file)
        generate_parallel.remove_stale_parts(path)  # of a joined file this one replaced
    else:
        split = [split_rows(rows, features, comm.size, r) for r in range(comm.size)]
        mpio = generate_parallel.uses_mpio(parallel_io, compression)
        generate_parallel.write(comm, path, data, split, mpio)
    return time.perf_counter() - started


def _finish(h5file, rows, features, seed, noise, dtype, compression, condition) -> None:
    h5file.create_dataset("w_true", data=true_weights(features, seed).astype(dtype),
                          track_times=False)
    h5file.attrs.update(attributes(rows, features, seed, noise, dtype, compression, condition))


def split_rows(rows: int, features: int, size: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) rank `rank` of `size` generates: whole blocks, the rows balanced.

    Boundary r is the block boundary nearest to r/size of the rows, so the last, short
    block counts for its rows. 3e6 x 40 on 2 ranks: 14 and 14.6 blocks, where whole blocks
    dealt out gave rank 0 (which also writes the joined file) 15 and rank 1 13.6
    (-n 2: 1.39 -> 1.33 s, medians of 5).
    """
    step = block_rows(features)

    def boundary(r: int) -> int:  # round(r * rows / (size * step)) * step, in integers
        return rows if r == size else min(rows, (2 * r * rows + size * step) // (2 * size * step) * step)

    return boundary(rank), boundary(rank + 1)


def matches(path: str, rows: int, features: int, seed: int, noise: float, dtype: str,
            condition: float | None = None) -> bool:
    """True if `path` is a complete file that generate() made with these arguments."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if generate_parallel.missing_parts(f):
                return False
            made = float(a["condition"]) if "condition" in a else None
            return (int(a["rows"]), int(a["features"]), int(a["seed"]), float(a["noise"]),
                    str(a["dtype"]), made) == (rows, features, seed, float(noise),
                                               np.dtype(dtype).name, condition)
    except (OSError, KeyError):
        return False


def _one_blas_thread():
    """BLAS limited to one thread: generation is the RNG's work, X @ w_true per block a small
    part of it, and two ranks' OpenBLAS threads spinning on two cores made `-n 2` no faster
    than `-n 1` (measured: 1.06x; one thread each: 1.7x)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def command(args) -> int:
    """`python -m mpigd generate`: --out FILE, or --out-dir DIR (prints the file's path).

    Under `mpirun -n P` (or srun) every rank generates its own blocks of rows.
    """
    comm = None
    if launcher_size() > 1:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    if (comm is None or comm.size == 1) and launcher_rank() != 0:
        return 0  # separate singletons (e.g. srun --mpi=none): one of them writes
    if args.out_dir is not None:
        if (args.noise, args.dtype, args.compression) != (NOISE, "float64", None):
            raise MpigdError("--out-dir names files by rows, features and seed alone; use --out "
                             "FILE.h5 for another --noise, --dtype or --compression",
                             collective=comm is not None)
        with _one_blas_thread():
            path, _ = ensure(args.out_dir, args.rows, args.features, args.seed, args.condition,
                             comm=comm, parallel_io=args.parallel_io)
        if _speaks(comm):  # for scripts: `file=$(python -m mpigd generate ... --out-dir D)`
            print(path, flush=True)
        return 0
    with _one_blas_thread():
        seconds = write(args.out, args.rows, args.features, args.seed, args.noise, args.dtype,
                        args.compression, args.condition, comm=comm, parallel_io=args.parallel_io)
    if _speaks(comm):
        size_gb = args.rows * args.features * np.dtype(args.dtype).itemsize / 1e9
        ranks = f" by {comm.size} ranks" if comm is not None and comm.size > 1 else ""
        print(f"mpigd: wrote {args.out}: X {args.rows} x {args.features} {args.dtype} "
              f"({size_gb:.3f} GB), y, w_true in {seconds:.2f} s{ranks}")
    return 0
