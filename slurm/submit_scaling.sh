#!/bin/bash
# Strong or weak scaling on Slurm: one job per rank count (job arrays cannot vary the
# task count), repeats as an array of that job, then a collector job that starts only
# when every run succeeded and writes scaling.csv/json/txt and the plots.
#
#   slurm/submit_scaling.sh --mode strong --ranks 1,2,4,8 --rows 2000000 --features 100 \
#       --iters 100 --repeat 3 --tasks-per-node 32 --sbatch "--partition=compute"
#
# Runs and bench-comm jobs ask for whole nodes (--exclusive) unless --shared: a run that
# shares a node with another job (or with another run of the same sweep, which Slurm may
# start at the same time) measures that job too, and the speedup is not to be trusted.
#
# Prints the job ids; with --wait it waits for the collector: exit 0 only if it completed.
# Runs land in OUT/pNNN/<job id> (arrays: <array job id>_<repeat>), logs in OUT/logs.
set -euo pipefail

usage() {
    cat <<USAGE
usage: $0 [options]
  --mode strong|weak     strong: the same data for every rank count; weak: --rows per rank [strong]
  --ranks LIST           rank counts, e.g. 1,2,4,8 [1,2]
  --rows N               rows (weak: per rank) [200000]
  --features D           features [32]
  --seed S               seed of the synthetic data [0]
  --data FILE.h5         strong only: use this file instead of generating one
  --iters K              iterations per run (with --tol 0) [50]
  --repeat R             runs per rank count (an array job) [1]
  --tasks-per-node T     ranks per node; a run uses ceil(n/T) nodes [all ranks on one node]
  --out DIR              sweep directory [runs/scale-slurm-<date>]
  --sbatch "OPTIONS"     more sbatch options for every job, e.g. "--partition=p --account=a"
  --shared               do not ask for whole nodes (default: --exclusive for runs and
                         bench-comm jobs, so that no two timed jobs share a node)
  --train-args "ARGS"    more trainer options for every run, e.g. "--dtype float32"
  --bench-comm           also time the collectives per rank count (one job each, one after
                         another: they share OUT/comm_model.json) for the model's prediction
  --wait                 wait for the collector job; exit 0 only if it COMPLETED
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mode=strong ranks=1,2 rows=200000 features=32 seed=0 data="" iters=50 repeat=1
per_node="" out="" sbatch_extra="" train_args="" wait=no bench=no exclusive=(--exclusive)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mode) mode=$2; shift 2 ;;
        --ranks) ranks=$2; shift 2 ;;
        --rows) rows=$2; shift 2 ;;
        --features) features=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --data) data=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --tasks-per-node) per_node=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --sbatch) sbatch_extra=$2; shift 2 ;;
        --train-args) train_args=$2; shift 2 ;;
        --wait) wait=yes; shift ;;
        --bench-comm) bench=yes; shift ;;
        --shared) exclusive=(); shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "submit_scaling.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

fail() { echo "submit_scaling.sh: error: $*" >&2; exit 2; }
[[ $mode == strong || $mode == weak ]] || fail "--mode must be strong or weak, got '$mode'"
[[ $ranks =~ ^[0-9]+(,[0-9]+)*$ ]] || fail "--ranks must be a list like 1,2,4,8, got '$ranks'"
for value in "$rows" "$features" "$seed" "$iters" "$repeat" ${per_node:+"$per_node"}; do
    [[ $value =~ ^[0-9]+$ ]] || fail "--rows, --features, --seed, --iters, --repeat and --tasks-per-node take integers, got '$value'"
done
[[ -z $data || $mode == strong ]] || fail "--data is for strong scaling"
[[ -z $data || -f $data ]] || fail "--data $data does not exist"
command -v sbatch > /dev/null || fail "sbatch not found: run this on a Slurm login node"

# The environment the jobs inherit (sbatch exports it): MPIGD_VENV, PATH, SLURM_CONF, ...
if [[ -n "${MPIGD_VENV:-}" ]]; then
    # shellcheck disable=SC1091
    source "$MPIGD_VENV/bin/activate"
fi
python -c "import mpigd" 2> /dev/null || fail "python cannot import mpigd: activate its venv or set MPIGD_VENV"

out=${out:-runs/scale-slurm-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs" "$out/data"
out=$(cd "$out" && pwd)  # jobs may start in another directory: absolute paths only
read -r -a extra <<< "$sbatch_extra"
read -r -a train <<< "$train_args"

# Synthetic data are made inside the allocation, on all the ranks of a job shaped like the
# runs (each rank writes its own blocks: `srun python -m mpigd generate`), and the runs wait
# for it (afterok). Weak: one file per rank count; strong: one file, by the largest count.
file_for() {
    local n=$1 total=$rows
    if [[ -n $data ]]; then echo "$(cd "$(dirname "$data")" && pwd)/$(basename "$data")"; return; fi
    [[ $mode == weak ]] && total=$((rows * n))
    # The name every mpigd command gives it (synthetic.file_name); a complete file is reused.
    echo "$out/data/synthetic-${total}x${features}-seed${seed}.h5"
}
generate_job() {  # generate_job N FILE: prints the job id, or nothing for --data
    local n=$1 file=$2 total=$rows tasks=${per_node:-$1}
    [[ -n $data ]] && return
    [[ $mode == weak ]] && total=$((rows * n))
    (( tasks > n )) && tasks=$n
    submit --ntasks="$n" --nodes=$(( (n + tasks - 1) / tasks )) --ntasks-per-node="$tasks" \
        --job-name="mpigd-generate-$(printf 'p%03d' "$n")" --output="$out/logs/generate-$(printf 'p%03d' "$n")-%j.out" \
        ${extra[@]+"${extra[@]}"} "$here/train.sbatch" \
        generate --rows "$total" --features "$features" --seed "$seed" --out-dir "$out/data"
}

# A refused submission (e.g. more tasks than a node has) cancels what was queued before
# it: a sweep without its collector would only leave orphan jobs.
run_ids=()
submit() {
    local id
    if ! id=$(sbatch --parsable "$@"); then
        (( ${#run_ids[@]} )) && scancel "${run_ids[@]}" && echo "cancelled jobs ${run_ids[*]}" >&2
        fail "sbatch refused a job of the sweep (its message is above)"
    fi
    echo "${id%%;*}"  # "id;cluster" on multi-cluster sites
}
IFS=, read -r -a counts <<< "$ranks"
largest_count=$(printf '%s\n' "${counts[@]}" | sort -n | tail -1)
generated=""
for n in "${counts[@]}"; do
    file=$(file_for "$n")
    if [[ -z $data && ( $mode == weak || -z $generated ) ]]; then
        generated=$(generate_job "$([[ $mode == weak ]] && echo "$n" || echo "$largest_count")" "$file")
        run_ids+=("$generated")
        echo "data $file: generate job $generated"
    fi
    after=(${generated:+--dependency=afterok:$generated --kill-on-invalid-dep=yes})
    tasks=${per_node:-$n}
    (( tasks > n )) && tasks=$n
    nodes=$(( (n + tasks - 1) / tasks ))
    name=$(printf 'p%03d' "$n")
    layout=(--ntasks="$n" --nodes="$nodes" --ntasks-per-node="$tasks" --job-name="mpigd-$mode-$name"
            ${exclusive[@]+"${exclusive[@]}"})
    if (( repeat > 1 )); then
        layout+=(--array="1-$repeat" --output="$out/logs/$name-%A_%a.out")
    else
        layout+=(--output="$out/logs/$name-%j.out")
    fi
    id=$(MPIGD_RUNS="$out/$name" submit "${layout[@]}" ${after[@]+"${after[@]}"} ${extra[@]+"${extra[@]}"} "$here/train.sbatch" \
         train --data "$file" --iters "$iters" --tol 0 --quiet ${train[@]+"${train[@]}"})
    run_ids+=("$id")
    echo "run $name: job $id ($n ranks on $nodes node(s), repeat $repeat)"
done

if [[ $bench == yes ]]; then
    # The trainer's messages are d+1 doubles: time sizes from 8 B to a few times that.
    largest=1024
    while (( largest < 32 * (features + 1) )); do largest=$((largest * 2)); done
    previous=""
    for n in "${counts[@]}"; do
        tasks=${per_node:-$n}
        (( tasks > n )) && tasks=$n
        name=$(printf 'bench-p%03d' "$n")
        # afterany: one at a time, since each merges its fit into the same comm_model.json.
        id=$(submit --ntasks="$n" --nodes=$(( (n + tasks - 1) / tasks )) \
             --ntasks-per-node="$tasks" --job-name="mpigd-$name" --output="$out/logs/$name-%j.out" \
             ${exclusive[@]+"${exclusive[@]}"} \
             ${previous:+--dependency=afterany:$previous} ${extra[@]+"${extra[@]}"} "$here/train.sbatch" \
             bench-comm --max-size "$largest" --out "$out/comm_model.json" --quiet)
        previous=$id
        run_ids+=("$id")
        echo "bench-comm p$(printf '%03d' "$n"): job $id"
    done
fi

deps=$(IFS=:; echo "${run_ids[*]}")
collect=(--dependency="afterok:$deps" --kill-on-invalid-dep=yes
         --output="$out/logs/collect-%j.out" ${extra[@]+"${extra[@]}"} "$here/collect.sbatch"
         "$out" --kind "$mode" --plots)
id=$(submit "${collect[@]}")
echo "collect: job $id (after $deps) -> $out/scaling.csv, $out/*.png"
if [[ $wait == no ]]; then
    echo "watch:   squeue -u \$USER    then: cat $out/scaling.txt"
    exit 0
fi
# Not `sbatch --wait`: it returns 0 for a collector cancelled because a run failed.
while squeue -h -j "$id" -o %i 2> /dev/null | grep -q .; do sleep 2; done
state=$(scontrol show job "$id" -o 2> /dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
if [[ -z $state ]]; then  # scontrol forgets a job MinJobAge (300 s) after its end
    state=$(sacct -n -X -j "$id" -o State 2> /dev/null | head -1 | tr -d ' ' || true)
fi
if [[ $state != COMPLETED ]]; then
    # The sweep cannot complete any more: runs still queued would only burn the allocation.
    left=$(squeue -h -j "${deps//:/,}" -o %i 2> /dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n ${left// /} ]]; then
        scancel "${run_ids[@]}" 2> /dev/null || true
        # scancel returns before the jobs have left the queue (a running one gets SIGTERM,
        # then KillWait); wait, bounded, so that our exit means nothing of the sweep is left.
        for _ in $(seq 120); do
            squeue -h -j "${deps//:/,}" -o %i 2> /dev/null | grep -q . || break
            sleep 0.5
        done
        echo "submit_scaling.sh: cancelled the sweep's jobs still queued or running: $left" >&2
    fi
    echo "submit_scaling.sh: the collector job $id ended ${state:-in an unknown state}" \
         "(a run failed? see $out/logs and: sacct -j ${deps//:/,},$id)" >&2
    exit 1
fi
echo "done: $(cat "$out/scaling.txt" 2> /dev/null | head -1)"
