#!/usr/bin/env bash
#SBATCH --job-name=probe-eval
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.log
# `probe eval` over a training run's checkpoints as a SLURM job array: probes/slurm_grad.sh with
# --command eval (same options, same task numbering, files OUT_DIR/eval-c<c>-d<d>.h5). Easiest
# through probes/submit.sh --command eval, which also submits the merge; see probes/README.md.
#
#   sbatch --array=0-15 probes/slurm_eval.sh --ckpt-shards 16 MODEL.onnx CKPT_DIR DATA OUT_DIR [probe eval flags]
#
# sbatch runs a copy of this script, so slurm_grad.sh is looked for beside it (run by hand), in
# probes/ of the folder sbatch was run from (submit from the repository root), or at
# $PROBE_SCRIPTS/slurm_grad.sh.
set -euo pipefail
for dir in "${PROBE_SCRIPTS:-}" "$(dirname "$0")" "${SLURM_SUBMIT_DIR:-$PWD}/probes"; do
  if [ -n "$dir" ] && [ -f "$dir/slurm_grad.sh" ]; then
    exec bash "$dir/slurm_grad.sh" --command eval "$@"
  fi
done
echo "probes/slurm_eval.sh: slurm_grad.sh not found: submit from the repository root or set PROBE_SCRIPTS=/path/to/probes" >&2
exit 3
