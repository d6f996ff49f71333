#!/usr/bin/env bash
# Peak memory of `python -m mpigd import` on a 10^7-row CSV (and the same table as Parquet):
# writes runs/import-memory/table-10000000.csv (~0.75 GB; 8 numeric columns, a text
# column `city` with 6 categories, target y) block by block, then imports it once per block
# size in a fresh process that reports its peak RSS (VmHWM of /proc/self/status), next to
# the floor of a process that only loads python, numpy, h5py and pyarrow. The table is kept
# for re-runs; the HDF5 outputs (~1.2 GB each) are deleted after each measurement.
#
#   scripts/import_memory.sh                      # 10^7 rows, blocks of 1, 4, 16 MiB, Parquet too
#   ROWS=1000000 BLOCKS=1 scripts/import_memory.sh
#
# Settings from the environment (defaults in brackets): ROWS [10000000], BLOCKS [1,4,16],
# DIR [runs/import-memory], PYTHON [python].
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python}" scripts/import_memory.py --rows "${ROWS:-10000000}" --block-mb "${BLOCKS:-1,4,16}" \
    --dir "${DIR:-runs/import-memory}" --parquet "$@"
