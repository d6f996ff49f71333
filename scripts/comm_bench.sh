#!/usr/bin/env bash
# Communication micro-benchmark (OSU-style) and Hockney model fit, once per rank count:
# prints an osu_bcast-like table per collective (Bcast, Reduce, Allreduce, Barrier) with
# the fitted t = alpha + n*beta and its error at every size, and merges every rank count
# into one comm_model.json. Put that file in a runs directory (or pass --model) and
# `python -m mpigd scale-report` shows predicted next to measured.
#
#   scripts/comm_bench.sh                                        # 1 and 2 ranks, 8 B - 64 MB
#   RANKS=2,4,8 LAUNCHER="srun -n {n}" scripts/comm_bench.sh     # inside a Slurm allocation
#   MAX_SIZE=64K scripts/comm_bench.sh                           # quick: small messages only
#
# Settings from the environment (defaults in brackets): RANKS [1,2], MAX_SIZE [64M],
# OUT [runs/comm_model.json], LAUNCHER ["<mpiexec next to python> -n {n}"], PYTHON [python].
# Further arguments go to `python -m mpigd bench-comm` unchanged.
set -euo pipefail
PYTHON=${PYTHON:-python}
LAUNCHER=${LAUNCHER:-"$("$PYTHON" -c 'from mpigd.launch import find_mpiexec; print(find_mpiexec())') -n {n}"}
IFS=, read -r -a ranks <<< "${RANKS:-1,2}"
for n in "${ranks[@]}"; do
    # shellcheck disable=SC2086  # the launcher template is meant to be split into words
    ${LAUNCHER//\{n\}/$n} "$PYTHON" -m mpigd bench-comm --max-size "${MAX_SIZE:-64M}" \
        --out "${OUT:-runs/comm_model.json}" "$@"
done
