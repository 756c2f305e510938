#!/usr/bin/env bash
#SBATCH --job-name=probe-eval
#SBATCH --array=0-3
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.log
# `probe eval` over a training run's checkpoints as a SLURM job array: array task i of n takes
# every n-th checkpoint (in step order, starting at the i-th) and writes its own results file,
# OUT_DIR/eval-<i>.h5. A starting point, see probes/README.md.
#
#   sbatch --array=0-15 probes/slurm_eval.sh MODEL.onnx CKPT_DIR DATA OUT_DIR [probe eval flags]
#
# Resubmitting the same array resumes: each task skips the checkpoints already complete in its
# file. New checkpoints (higher steps) sort last, so earlier checkpoints keep their task.
# Submit from the repository root (jobs start in the submit folder; sbatch runs a copy of this
# script, so its own path says nothing), or set PROBE to the binary. Outside SLURM it runs as
# task 0 of 1: every checkpoint into OUT_DIR/eval-000.h5.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: sbatch --array=0-N probes/slurm_eval.sh MODEL.onnx CKPT_DIR DATA OUT_DIR [probe eval flags]" >&2
  exit 2
fi
model=$1 ckpts=$2 data=$3 out=$4
shift 4
# Task index from 0, whatever the array's first id (--array=1-16 works too).
task=$(( ${SLURM_ARRAY_TASK_ID:-0} - ${SLURM_ARRAY_TASK_MIN:-0} ))
count=${SLURM_ARRAY_TASK_COUNT:-1}
probe=${PROBE:-$PWD/target/release/probe}

shopt -s nullglob
files=("$ckpts"/*.safetensors)
if [ ${#files[@]} -eq 0 ]; then
  echo "probes/slurm_eval.sh: no *.safetensors in $ckpts" >&2
  exit 3
fi
# Version sort: step-20 before step-100 even without zero padding.
mapfile -t all < <(printf '%s\n' "${files[@]}" | sort -V)
mine=()
for i in "${!all[@]}"; do
  if (( i % count == task )); then mine+=("${all[$i]}"); fi
done
if [ ${#mine[@]} -eq 0 ]; then
  echo "task $task of $count: no checkpoints for this task" >&2
  exit 0
fi
mkdir -p "$out"
exec "$probe" eval --model "$model" --ckpt "${mine[@]}" --data "$data" \
  --threads "${SLURM_CPUS_PER_TASK:-$(nproc)}" --out "$out/eval-$(printf %03d "$task").h5" "$@"
