#!/usr/bin/env bash
# Submits a training job and a probe job that follows it (`probe grad --follow`), on its own
# resources, starting when training starts and ending when training ends (the trainer's DONE
# marker: `probe train` writes it; a PyTorch loop `touch`es CKPT_DIR/DONE at its end) or, if the
# trainer dies without it, after --idle-timeout (probe's default: an hour without a checkpoint).
#
#   probes/follow.sh [--cpus N] [--sbatch ARG]... TRAIN_JOB.sh MODEL.onnx CKPT_DIR DATA OUT.h5 [probe grad flags]
#
# TRAIN_JOB.sh is your training batch script (it writes checkpoints into CKPT_DIR). The probe job
# is submitted with --dependency=after:<training job> (it starts once training has started) and
# --kill-on-invalid-dep=yes (a training job cancelled before it started takes the probe job with
# it). Rerunning the probe job alone (sbatch the printed command) goes on from OUT.h5.
set -euo pipefail
me=probes/follow.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="usage: $me [--cpus N] [--sbatch ARG]... TRAIN_JOB.sh MODEL.onnx CKPT_DIR DATA OUT.h5 [probe grad flags]"
die() {
  echo "$me: $2" >&2
  exit "$1"
}
cpus=2 sbatch_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --cpus) cpus=${2:-}; shift 2 || die 2 "$usage" ;;
    --sbatch) sbatch_args+=("${2:-}"); shift 2 || die 2 "$usage" ;;
    -h | --help) echo "$usage"; exit 0 ;;
    -*) die 2 "unknown option $1 (probe's flags go after OUT.h5)
$usage" ;;
    *) break ;;
  esac
done
[ $# -ge 5 ] || die 2 "$usage"
train=$1 model=$2 ckpts=$3 data=$4 out=$5
shift 5
[[ $cpus =~ ^[1-9][0-9]*$ ]] || die 2 "--cpus $cpus: need a whole number >= 1"
[ -f "$train" ] || die 3 "$train: no such training script"
probe=${PROBE:-$here/../target/release/probe}
[ -x "$probe" ] || die 3 "$probe: no probe binary (cargo build --release, or set PROBE)"
command -v sbatch >/dev/null || die 3 "sbatch not found: this submits to SLURM"
mkdir -p "$(dirname "$out")"

train_id=$(sbatch --parsable "${sbatch_args[@]}" "$train")
train_id=${train_id%%;*}
follow=$(printf '%q ' "$probe" grad --model "$model" --data "$data" --follow "$ckpts" \
  --out "$out" --threads "$cpus" "$@")
probe_id=$(sbatch --parsable --job-name=probe-follow --cpus-per-task="$cpus" \
  --dependency="after:$train_id" --kill-on-invalid-dep=yes \
  --output="$(dirname "$out")/probe-follow-%j.log" "${sbatch_args[@]}" --wrap "$follow")
echo "training job $train_id; probe job $probe_id (follows $ckpts into $out)"
echo "watch: squeue -j $train_id,$probe_id; tail -f $(dirname "$out")/probe-follow-$probe_id.log"
echo "rerun the probe alone: sbatch --cpus-per-task=$cpus --wrap '$follow'"
