#!/usr/bin/env bash
# Weak scaling: ROWS rows per rank, so the work per rank stays the same and the ideal time
# per iteration stays flat. The data set for each rank count (ROWS x m rows) is generated
# once and reused. Reports efficiency T1/Tm and scaled speedup m*T1/Tm, with the plots.
#
#   scripts/weak_scaling.sh                                      # 1 and 2 ranks on this machine
#   LAUNCHER="srun -n {n}" RANKS=1,4,16,64 scripts/weak_scaling.sh     # inside a Slurm allocation
#
# Settings from the environment (defaults in brackets): RANKS [1,2], ROWS per rank [500000],
# FEATURES [50], ITERS [30], REPEAT [5], OUT [runs/weak-scaling], LAUNCHER, TRAIN_MODE,
# PYTHON [python]. Further arguments go to `python -m mpigd scale` unchanged.
set -euo pipefail
args=(scale --mode weak --ranks "${RANKS:-1,2}" --rows "${ROWS:-500000}" --features "${FEATURES:-50}"
      --iters "${ITERS:-30}" --repeat "${REPEAT:-5}" --out "${OUT:-runs/weak-scaling}" --plots)
if [[ -n "${LAUNCHER:-}" ]]; then args+=(--launcher "$LAUNCHER"); fi
if [[ -n "${TRAIN_MODE:-}" ]]; then args+=(--train-mode "$TRAIN_MODE"); fi
exec "${PYTHON:-python}" -m mpigd "${args[@]}" "$@"
