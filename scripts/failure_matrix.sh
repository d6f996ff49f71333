#!/usr/bin/env bash
# The bad-input matrix of tests/test_bad_inputs.py as a Markdown table: for every case
# (missing file, NaN rows, bad options, divergence, ...) the ranks it ran on, the exit
# code, the seconds until every rank had exited, and the one message the user saw.
#
#   scripts/failure_matrix.sh                  # writes runs/failure_matrix.md and prints it
#   OUT=matrix.md scripts/failure_matrix.sh -k resume   # further arguments go to pytest
#
# Each case is a real `mpirun` launch; the whole matrix takes under a minute.
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/failure_matrix.md}
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
status=0
MPIGD_MATRIX_OUT="$rows" "$PYTHON" -m pytest -q -p no:cacheprovider \
    "$(dirname "$0")/../tests/test_bad_inputs.py" "$@" >&2 || status=$?
mkdir -p "$(dirname "$OUT")"
{
    echo "| case | ranks | exit code | seconds | message (\`mpigd: error: ...\`) |"
    echo "|---|---|---|---|---|"
    cat "$rows"
} > "$OUT"
cat "$OUT"
exit "$status"
