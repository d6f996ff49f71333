#!/usr/bin/env bash
# Straggler study (the lecture's "the wall-clock time is determined by the slowest node"):
# every run is repeated with each delay in DELAYS slept by one rank (the last) inside its
# compute phase, every iteration. The report fits how much each time grows per second of
# delay: the wall time per iteration grows one for one, like the slowest rank's compute,
# while the mean compute over ranks grows only by 1/m - the other ranks wait (sync).
# Writes straggler.png besides the usual table, CSV/JSON and plots.
#
#   scripts/straggler_study.sh                                   # 2 ranks, delays 0-20 ms
#   RANKS=2,4 DELAYS=0,0.05,0.1 scripts/straggler_study.sh
#
# Settings from the environment (defaults in brackets): RANKS [2], DELAYS in seconds
# [0,0.005,0.01,0.02], SLOW_RANK [last], ROWS [200000], FEATURES [32], ITERS [20],
# REPEAT [3], OUT [runs/straggler-study], LAUNCHER, TRAIN_MODE, PYTHON [python].
set -euo pipefail
args=(scale --mode strong --ranks "${RANKS:-2}" --rows "${ROWS:-200000}" --features "${FEATURES:-32}"
      --iters "${ITERS:-20}" --repeat "${REPEAT:-3}" --straggler-delays "${DELAYS:-0,0.005,0.01,0.02}"
      --straggler-rank "${SLOW_RANK:-last}" --out "${OUT:-runs/straggler-study}" --plots)
if [[ -n "${LAUNCHER:-}" ]]; then args+=(--launcher "$LAUNCHER"); fi
if [[ -n "${TRAIN_MODE:-}" ]]; then args+=(--train-mode "$TRAIN_MODE"); fi
exec "${PYTHON:-python}" -m mpigd "${args[@]}" "$@"
