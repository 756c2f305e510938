#!/usr/bin/env bash
# Submits `probe grad` (or `probe eval`) over a training run to SLURM: a job array of C*D tasks
# (probes/slurm_grad.sh: checkpoint shard c of C x data shard d of D, one file each) and a merge
# job (probes/slurm_merge.sh) that runs once every task has succeeded. See probes/README.md.
#
#   probes/submit.sh --ckpt-shards 3 --data-shards 4 MODEL.onnx CKPT_DIR DATA OUT_DIR [probe flags]
#
# Options (before the positional arguments):
#   --ckpt-shards C   checkpoint shards (default 1)
#   --data-shards D   data shards (default 1); --hessian and --noise's per-sample part need D = 1
#   --command CMD     grad (default) or eval
#   --cpus N          cores per task, given to probe as --threads (default: the scripts' 2)
#   --tasks LIST      submit only these array indices (sbatch --array syntax: 5 or 2,7 or 0-5),
#                     e.g. to rerun failed tasks; default 0-(C*D-1)
#   --sbatch ARG      one more sbatch option for both jobs (repeatable), e.g.
#                     --sbatch --partition=cpu --sbatch --time=12:00:00
#
# Runs from anywhere: the scripts are taken from beside this file and the binary is $PROBE, else
# target/release/probe beside probes/. Relative paths are resolved by the jobs in the folder this
# is run from (sbatch's default). Logs go to OUT_DIR/logs/.
set -euo pipefail
me=probes/submit.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="usage: $me [--command grad|eval] [--ckpt-shards C] [--data-shards D] [--cpus N] [--tasks LIST] [--sbatch ARG]... MODEL.onnx CKPT_DIR DATA OUT_DIR [probe flags]"
die() {
  echo "$me: $2" >&2
  exit "$1"
}
cmd=grad ckpt_shards=1 data_shards=1 cpus="" tasks="" sbatch_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --ckpt-shards) ckpt_shards=${2:-}; shift 2 || die 2 "$usage" ;;
    --data-shards) data_shards=${2:-}; shift 2 || die 2 "$usage" ;;
    --command) cmd=${2:-}; shift 2 || die 2 "$usage" ;;
    --cpus) cpus=${2:-}; shift 2 || die 2 "$usage" ;;
    --tasks) tasks=${2:-}; shift 2 || die 2 "$usage" ;;
    --sbatch) sbatch_args+=("${2:-}"); shift 2 || die 2 "$usage" ;;
    -h | --help) echo "$usage"; exit 0 ;;
    -*) die 2 "unknown option $1 (probe's flags go after OUT_DIR)
$usage" ;;
    *) break ;;
  esac
done
[ $# -ge 4 ] || die 2 "$usage"
model=$1 ckpts=$2 data=$3 out=$4
shift 4
for n in "$ckpt_shards" "$data_shards" ${cpus:+"$cpus"}; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die 2 "shard counts and --cpus are whole numbers >= 1, got '$n'"
done
case $cmd in grad | eval) ;; *) die 2 "--command is grad or eval, not '$cmd'" ;; esac
n=$((ckpt_shards * data_shards))
if [ -z "$tasks" ]; then
  tasks=0-$((n - 1))
else
  # Every index named must be a task: 0..n-1 (ranges by their ends, a :step aside).
  [[ $tasks =~ ^[0-9]+(-[0-9]+(:[0-9]+)?)?(,[0-9]+(-[0-9]+(:[0-9]+)?)?)*$ ]] ||
    die 2 "--tasks takes indices and ranges like 5 or 2,7 or 0-5, got '$tasks'"
  # shellcheck disable=SC2013 # words wanted: the indices
  for i in $(sed -E 's/:[0-9]+//g; s/[,-]/ /g' <<<"$tasks"); do
    [ "$i" -lt "$n" ] || die 2 "--tasks $tasks: $i is not a task; there are $n (0..$((n - 1)))"
  done
fi

# What the task script would refuse, refused now rather than in every task.
for a in "$@"; do
  case $a in
    --threads | --threads=*) die 2 "probe's --threads comes from the cores per task: use --cpus N instead of $a" ;;
    --shard | --shard=* | --data-shard | --data-shard=* | --out | --out=* | --ckpt | --ckpt=* | --model | --model=* | --data | --data=*)
      die 2 "$a is set by the batch script; leave it out of the probe flags" ;;
  esac
done
[ -f "$model" ] || die 3 "no model file $model"
[ -e "$ckpts" ] || die 3 "no checkpoint folder or file $ckpts"
probe=${PROBE:-$(dirname "$here")/target/release/probe}
[ -x "$probe" ] || die 3 "no probe binary at $probe: run cargo build --release, or set PROBE=/path/to/probe"
probe=$(cd "$(dirname "$probe")" && pwd)/$(basename "$probe")
command -v sbatch >/dev/null || die 3 "no sbatch on PATH: run this on a SLURM login node"
mkdir -p "$out/logs"

# shellcheck disable=SC2054 # the comma is sbatch's, inside one --export value
common=(--export=ALL,PROBE="$probe" "${sbatch_args[@]}")
shards=(--command "$cmd" --ckpt-shards "$ckpt_shards" --data-shards "$data_shards")
array=$(sbatch --parsable --array="$tasks" --job-name="probe-$cmd" \
  --output="$out/logs/$cmd-%A_%a.log" ${cpus:+--cpus-per-task="$cpus"} "${common[@]}" \
  "$here/slurm_grad.sh" "${shards[@]}" "$model" "$ckpts" "$data" "$out" "$@")
array=${array%%;*}
# --kill-on-invalid-dep: a failed task cancels the merge instead of leaving it pending forever.
merge=$(sbatch --parsable --dependency=afterok:"$array" --kill-on-invalid-dep=yes \
  --job-name="probe-$cmd-merge" --output="$out/logs/$cmd-merge-%j.log" "${common[@]}" \
  "$here/slurm_merge.sh" "${shards[@]}" "$out")
merge=${merge%%;*}

# The same submission, less --tasks, for the message.
same=("${shards[@]}" ${cpus:+--cpus "$cpus"})
for a in "${sbatch_args[@]}"; do same+=(--sbatch "$a"); done
again=$(printf ' %q' "${same[@]}" "$model" "$ckpts" "$data" "$out" "$@")
cat <<EOF
array job $array: tasks $tasks of $n ($ckpt_shards checkpoint shards x $data_shards data shards) -> $out/$cmd-c<c>-d<d>.h5
merge job $merge (once every task has succeeded) -> $out/$cmd.h5
watch:  squeue -j $array,$merge      logs: $out/logs/
a task that fails cancels the merge; rerun it (task i is c = i / $data_shards, d = i % $data_shards;
probe resumes from its file) with a new merge:
  $me --tasks <i,...>$again
EOF
