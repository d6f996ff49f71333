"""Peak memory of `python -m mpigd import` on a large generated CSV (used by import_memory.sh
and, at small scale, by tests/test_import.py).

The CSV is written block by block (pyarrow's CSV writer), so generating 10^7 rows needs
no more memory than one block. The import runs in a fresh process that reports its own
peak resident set size (VmHWM in /proc/self/status) when it ends; a second fresh process
that only loads the same modules gives the floor the import starts from.
"""

import argparse
import json
import os
import subprocess
import sys
import time

CITIES = ("Berlin", "Lyon", "Madrid", "Oslo", "Paris", "Rome")
NUMERIC = 8  # x1..x8, then city (text), then y

_MEASURE = """
import sys
from mpigd.__main__ import guarded_main as run
code = run(sys.argv[1:]) if len(sys.argv) > 1 else 0
if len(sys.argv) == 1:
    import h5py, numpy, pyarrow, pyarrow.csv, pyarrow.parquet, pyarrow.compute  # the floor
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("VmHWM_kB", status["VmHWM"].split()[0], file=sys.stderr)
sys.exit(code)
"""


def write_csv(path, rows, block_rows=200_000, seed=0):
    """Write `rows` rows of x1..x8 (4 decimals), city, y = x.w + city effect + noise."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401 - pa.compute
    import pyarrow.csv as csv

    rng = np.random.default_rng(seed)
    w = np.arange(1, NUMERIC + 1, dtype=float)
    effect = np.linspace(-1, 1, len(CITIES))
    dictionary = pa.array(CITIES)
    schema = pa.schema([*(pa.field(f"x{i + 1}", pa.float64()) for i in range(NUMERIC)),
                        pa.field("city", pa.string()), pa.field("y", pa.float64())])
    with csv.CSVWriter(path, schema) as writer:
        for lo in range(0, rows, block_rows):
            n = min(block_rows, rows - lo)
            x = np.round(rng.standard_normal((n, NUMERIC)), 4)
            city = rng.integers(0, len(CITIES), n)
            y = np.round(x @ w + effect[city] + 0.1 * rng.standard_normal(n), 4)
            names = pa.compute.take(dictionary, pa.array(city))
            writer.write_batch(pa.record_batch([*(x[:, i] for i in range(NUMERIC)), names, y],
                                               schema=schema))


def write_parquet(csv_path, path, block_rows=200_000):
    """The same table as Parquet, one row group per block_rows rows, streamed."""
    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    reader = csv.open_csv(csv_path)
    with pq.ParquetWriter(path, reader.schema) as writer:
        pending, count = [], 0
        for batch in reader:
            pending.append(batch)
            count += batch.num_rows
            if count >= block_rows:
                writer.write_batch(_concat(pending), row_group_size=count)
                pending, count = [], 0
        if pending:
            writer.write_batch(_concat(pending), row_group_size=count)


def _concat(batches):
    import pyarrow as pa

    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def peak_kib(args, timeout=3600):
    """(exit code, peak RSS in KiB, seconds, stderr) of one fresh `python -m mpigd ARGS` process."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("VmHWM_kB")]
    return proc.returncode, (peak[0] if peak else None), seconds, proc.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", default="runs/import-memory")
    parser.add_argument("--block-mb", default="1,4,16", help="block sizes to measure [1,4,16]")
    parser.add_argument("--parquet", action="store_true", help="also import the table as Parquet")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    table = os.path.join(args.dir, f"table-{args.rows}.csv")
    if not os.path.exists(table):
        started = time.perf_counter()
        write_csv(table + ".partial", args.rows)
        os.replace(table + ".partial", table)
        print(f"wrote {table} ({os.path.getsize(table) / 1e9:.2f} GB) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    sources = [(table, args.block_mb.split(","))]
    if args.parquet:
        parquet = os.path.join(args.dir, f"table-{args.rows}.parquet")
        if not os.path.exists(parquet):
            write_parquet(table, parquet + ".partial")
            os.replace(parquet + ".partial", parquet)
        sources.append((parquet, ["1"]))
    _, floor, _, _ = peak_kib([])
    print(f"floor (python + mpigd + numpy + h5py + pyarrow loaded): {floor / 1024:.0f} MiB", flush=True)
    results = []
    for source, block in ((s, b) for s, blocks in sources for b in blocks):
        out = os.path.join(args.dir, f"imported-{args.rows}.h5")
        code, peak, seconds, err = peak_kib(["import", source, "--target", "y", "--out", out,
                                             "--force", "--block-mb", block])
        if code != 0:
            sys.exit(f"import failed ({code}):\n{err}")
        x_mb = os.path.getsize(out) / 2**20
        kind = "parquet" if source.endswith(".parquet") else "csv"
        results.append(dict(format=kind, rows=args.rows, block_mb=float(block), peak_mib=round(peak / 1024, 1),
                            floor_mib=round(floor / 1024, 1), seconds=round(seconds, 1),
                            source_mib=round(os.path.getsize(source) / 2**20), h5_mib=round(x_mb)))
        print(f"{kind:7} block {block:>3} MB: peak RSS {peak / 1024:.0f} MiB (floor {floor / 1024:.0f} MiB), "
              f"{seconds:.1f} s; {os.path.getsize(source) / 2**20:.0f} MiB -> HDF5 {x_mb:.0f} MiB",
              flush=True)
        os.remove(out)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
