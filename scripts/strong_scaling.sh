#!/usr/bin/env bash
# Strong scaling: the same data set for every rank count. Prints and writes (in $OUT) the
# table of seconds per iteration, speedup T1/Tm, efficiency, compute/comm/sync per
# iteration, imbalance and the cost model's prediction; scaling.csv, scaling.json and the
# plots speedup.png, efficiency.png, breakdown.png, loss.png.
#
#   scripts/strong_scaling.sh                                    # 1 and 2 ranks on this machine
#   RANKS=1,2,4,8,16 ROWS=4000000 scripts/strong_scaling.sh      # a bigger node
#   LAUNCHER="srun -n {n}" RANKS=1,4,16,64 scripts/strong_scaling.sh   # inside a Slurm allocation
#   TRAIN_MODE=server,allreduce scripts/strong_scaling.sh        # client-server vs peer-to-peer
#
# Settings from the environment (defaults in brackets): RANKS [1,2], ROWS [1000000],
# FEATURES [50], ITERS [30], REPEAT [5], OUT [runs/strong-scaling], LAUNCHER [mpiexec next to
# python], TRAIN_MODE [the trainer's default], PYTHON [python]. Further arguments go to
# `python -m mpigd scale` unchanged (see its --help). Rerunning with the same settings
# continues an interrupted sweep.
set -euo pipefail
args=(scale --mode strong --ranks "${RANKS:-1,2}" --rows "${ROWS:-1000000}" --features "${FEATURES:-50}"
      --iters "${ITERS:-30}" --repeat "${REPEAT:-5}" --out "${OUT:-runs/strong-scaling}" --plots)
if [[ -n "${LAUNCHER:-}" ]]; then args+=(--launcher "$LAUNCHER"); fi
if [[ -n "${TRAIN_MODE:-}" ]]; then args+=(--train-mode "$TRAIN_MODE"); fi
exec "${PYTHON:-python}" -m mpigd "${args[@]}" "$@"
