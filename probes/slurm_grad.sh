#!/usr/bin/env bash
#SBATCH --job-name=probe-grad
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.log
# One task of a SLURM job array running `probe grad` (or `probe eval`) over a training run, split
# C ways by checkpoint (--shard c/C: every C-th checkpoint in step order, from the c-th) and D ways
# by data (--data-shard d/D: the d-th of D contiguous runs of whole batches, raw f64 sums).
# Array task i (0 <= i < C*D) is the pair c = i / D, d = i % D and writes
# OUT_DIR/<command>-c<c>-d<d>.h5; probes/slurm_merge.sh then runs `probe merge` on the C*D files.
# probes/submit.sh submits both; see probes/README.md.
#
#   sbatch --array=0-11 probes/slurm_grad.sh --ckpt-shards 3 --data-shards 4 \
#       MODEL.onnx CKPT_DIR DATA OUT_DIR [probe grad flags]
#
# The counts are given here, not read from SLURM_ARRAY_TASK_COUNT/_MIN, so that `--array=5`
# reruns exactly task 5 into its own file, and a strided `--array=0-11:2` runs the even tasks
# only, none of them taking another task's checkpoints.
#
# Options (before the positional arguments):
#   --ckpt-shards C   checkpoint shards (default 1: every task takes every checkpoint)
#   --data-shards D   data shards (default 1: every task reads the whole data set)
#   --command CMD     grad (default) or eval
#   --task I          the task index, instead of SLURM_ARRAY_TASK_ID (to run one task by hand)
#
# Threads: probe gets `--threads $SLURM_CPUS_PER_TASK` (sbatch --cpus-per-task, 2 by default).
# A `--threads` among the probe flags is refused: set --cpus-per-task instead, so that probe
# never runs more threads than the job was given cores (nor fewer).
#
# CKPT_DIR goes to probe as it is (a folder, or one file): probe takes a folder's *.safetensors
# in step order and skips optimizer-state files, so every task sees the same list.
# The binary: $PROBE, else target/release/probe under the folder sbatch was run from.
# Rerunning a task resumes: probe skips the checkpoints already complete in its file. A task
# that succeeds leaves OUT_DIR/<command>-c<c>-d<d>.done, which slurm_merge.sh checks for.
set -euo pipefail
me=probes/slurm_grad.sh
usage="usage: sbatch --array=0-<C*D-1> $me --ckpt-shards C --data-shards D MODEL.onnx CKPT_DIR DATA OUT_DIR [probe flags]"
die() { # exit code, message
  echo "$me: $2" >&2
  exit "$1"
}
count() { # name value: a whole number >= 1
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die 2 "$1 wants a whole number >= 1, got '$2'"
}

cmd=grad ckpt_shards=1 data_shards=1 task=${SLURM_ARRAY_TASK_ID:-}
while [ $# -gt 0 ]; do
  case $1 in
    --ckpt-shards) ckpt_shards=${2:-}; shift 2 || die 2 "$usage" ;;
    --data-shards) data_shards=${2:-}; shift 2 || die 2 "$usage" ;;
    --command) cmd=${2:-}; shift 2 || die 2 "$usage" ;;
    --task) task=${2:-}; shift 2 || die 2 "$usage" ;;
    -h | --help) echo "$usage"; exit 0 ;;
    --) shift; break ;;
    -*) die 2 "unknown option $1 (probe's flags go after OUT_DIR)
$usage" ;;
    *) break ;;
  esac
done
[ $# -ge 4 ] || die 2 "$usage"
model=$1 ckpts=$2 data=$3 out=$4
shift 4
count --ckpt-shards "$ckpt_shards"
count --data-shards "$data_shards"
case $cmd in grad | eval) ;; *) die 2 "--command is grad or eval, not '$cmd'" ;; esac
tasks=$((ckpt_shards * data_shards))

# The flags this script sets itself.
for a in "$@"; do
  case $a in
    --threads | --threads=*)
      die 2 "probe's --threads comes from --cpus-per-task (now ${SLURM_CPUS_PER_TASK:-unset}): submit with sbatch --cpus-per-task=N (submit.sh --cpus N) instead of passing $a" ;;
    --shard | --shard=* | --data-shard | --data-shard=* | --out | --out=* | --ckpt | --ckpt=* | --model | --model=* | --data | --data=*)
      die 2 "$a is set by this script (from --ckpt-shards/--data-shards and the arguments); leave it out of the probe flags" ;;
  esac
done

if [ -z "$task" ]; then
  [ "$tasks" -eq 1 ] || die 2 "no SLURM_ARRAY_TASK_ID: submit with sbatch --array=0-$((tasks - 1)), or give --task I to run one task by hand"
  task=0
fi
if ! [[ $task =~ ^[0-9]+$ ]] || [ "$task" -ge "$tasks" ]; then
  die 2 "task $task is not one of 0..$((tasks - 1)) ($ckpt_shards checkpoint shards x $data_shards data shards): submit with --array=0-$((tasks - 1)) or a part of it"
fi
c=$((task / data_shards)) d=$((task % data_shards))

probe=${PROBE:-${SLURM_SUBMIT_DIR:-$PWD}/target/release/probe}
[ -x "$probe" ] || die 3 "no probe binary at $probe: run cargo build --release in the repository, submit from its root, or set PROBE=/path/to/probe"

args=(--model "$model" --ckpt "$ckpts" --data "$data")
[ "$ckpt_shards" -eq 1 ] || args+=(--shard "$c/$ckpt_shards")
[ "$data_shards" -eq 1 ] || args+=(--data-shard "$d/$data_shards")
[ -z "${SLURM_CPUS_PER_TASK:-}" ] || args+=(--threads "$SLURM_CPUS_PER_TASK")
name=$cmd-c$c-d$d
mkdir -p "$out"
rm -f "$out/$name.done"
echo "task $task of $tasks: checkpoint shard $c/$ckpt_shards, data shard $d/$data_shards -> $out/$name.h5" >&2
# probe runs as a child (not exec'd) so that this script can mark success; on scancel SLURM
# signals every process of the job, and the no-op trap keeps this shell waiting until probe has
# closed its file (else SLURM would kill probe as soon as the script ended). A trap that runs
# a command is not inherited: probe gets the signals as usual.
trap : TERM INT
"$probe" "$cmd" "${args[@]}" --out "$out/$name.h5" "$@" &
pid=$!
rc=0
wait "$pid" || rc=$?
while kill -0 "$pid" 2>/dev/null; do
  rc=0
  wait "$pid" || rc=$?
done
if [ "$rc" -eq 0 ]; then
  echo "$probe $cmd ${args[*]} --out $out/$name.h5 $*" >"$out/$name.done"
fi
exit "$rc"
