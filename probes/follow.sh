#!/usr/bin/env bash
# Submits a training job and a probe job that follows it (`probe grad --follow`), on its own
# resources, starting when training starts and ending when training ends: at the trainer's DONE
# marker (`probe train` writes it; a PyTorch loop `touch`es CKPT_DIR/DONE at its end) or, if the
# training job fails or is cancelled, through a third, tiny job (see below).
#
#   probes/follow.sh [--cpus N] [--sbatch ARG]... TRAIN_JOB.sh MODEL.onnx CKPT_DIR DATA OUT.h5 [probe grad flags]
#
# TRAIN_JOB.sh is your training batch script (it writes checkpoints into CKPT_DIR). The probe job
# is submitted with --dependency=after:<training job>: it starts once training has started. SLURM
# also starts it when the training job is cancelled before it ran (after: is satisfied by a
# cancellation), and nothing would tell it that training died mid-run; so an end job, submitted
# with --dependency=afternotok:<training job>, runs only if training fails, is cancelled or hits
# its time limit, and then writes CKPT_DIR/DONE (the follower measures every whole checkpoint
# and ends) or, where training never made CKPT_DIR, cancels the probe job. When training
# succeeds SLURM drops the end job (DependencyNeverSatisfied). Rerunning the probe job alone (the
# printed command) goes on from OUT.h5.
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
# What the probe job sets itself, refused now rather than when the job starts.
for a in "$@"; do
  case $a in
    --threads | --threads=*) die 2 "probe's --threads comes from the job's cores: use --cpus N instead of $a" ;;
    --follow | --follow=* | --ckpt | --ckpt=* | --shard | --shard=* | --out | --out=* | --model | --model=* | --data | --data=*)
      die 2 "${a%%=*} is set by $me (from its arguments); remove it from the probe flags" ;;
  esac
done
[ -f "$train" ] || die 3 "$train: no such training script"
probe=${PROBE:-$here/../target/release/probe}
[ -x "$probe" ] || die 3 "$probe: no probe binary (cargo build --release, or set PROBE)"
command -v sbatch >/dev/null || die 3 "sbatch not found: this submits to SLURM"
# sbatch --wrap runs the line with /bin/sh: printf %q quoting is plain backslashes for ordinary
# paths; a name with control characters would need bash's $'...', so refuse those.
for p in "$probe" "$model" "$ckpts" "$data" "$out" "$@"; do
  if [[ $p == *[[:cntrl:]]* ]]; then die 2 "'$p': control characters in a name; rename it"; fi
done
mkdir -p "$(dirname "$out")"
logs=$(dirname "$out")

train_id=$(sbatch --parsable "${sbatch_args[@]}" "$train")
train_id=${train_id%%;*}
follow=$(printf '%q ' "$probe" grad --model "$model" --data "$data" --follow "$ckpts" \
  --out "$out" --threads "$cpus" "$@")
probe_sbatch=(--job-name=probe-follow --cpus-per-task="$cpus" --output="$logs/probe-follow-%j.log"
  "${sbatch_args[@]}")
probe_id=$(sbatch --parsable "${probe_sbatch[@]}" --dependency="after:$train_id" \
  --kill-on-invalid-dep=yes --wrap "$follow")
probe_id=${probe_id%%;*}
note=$(printf '%q' "written by $me: training job $train_id ended without success")
end=$(printf 'if [ -d %q ]; then echo %s > %q; else scancel %q; fi' "$ckpts" "$note" "$ckpts/DONE" "$probe_id")
end_id=$(sbatch --parsable --job-name=probe-follow-end --cpus-per-task=1 \
  --output="$logs/probe-follow-end-%j.log" "${sbatch_args[@]}" \
  --dependency="afternotok:$train_id" --kill-on-invalid-dep=yes --wrap "$end")
end_id=${end_id%%;*}
echo "training job $train_id; probe job $probe_id (follows $ckpts into $out); end job $end_id (only if training fails)"
echo "watch: squeue -j $train_id,$probe_id; tail -f $logs/probe-follow-$probe_id.log"
echo "rerun the probe alone: sbatch $(printf '%q ' "${probe_sbatch[@]}")--wrap $(printf '%q' "$follow")"
