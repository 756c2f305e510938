#!/usr/bin/env bash
#SBATCH --job-name=probe-merge
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.log
# After the job array of probes/slurm_grad.sh: `probe merge` of its C*D files,
# OUT_DIR/<command>-c<c>-d<d>.h5, into OUT_DIR/<command>.h5. probes/submit.sh submits it with
# --dependency=afterok on the array; see probes/README.md.
#
#   sbatch probes/slurm_merge.sh --ckpt-shards 3 --data-shards 4 OUT_DIR [probe merge flags]
#
# First checks that every task finished (its file and its .done mark are there) and otherwise
# names the tasks to rerun, merging nothing. Rerunning the merge appends only what is new.
set -euo pipefail
me=probes/slurm_merge.sh
usage="usage: $me [--command grad|eval] --ckpt-shards C --data-shards D OUT_DIR [probe merge flags]"
die() {
  echo "$me: $2" >&2
  exit "$1"
}
cmd=grad ckpt_shards=1 data_shards=1
while [ $# -gt 0 ]; do
  case $1 in
    --ckpt-shards) ckpt_shards=${2:-}; shift 2 || die 2 "$usage" ;;
    --data-shards) data_shards=${2:-}; shift 2 || die 2 "$usage" ;;
    --command) cmd=${2:-}; shift 2 || die 2 "$usage" ;;
    -h | --help) echo "$usage"; exit 0 ;;
    -*) die 2 "unknown option $1
$usage" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || die 2 "$usage"
out=$1
shift
for n in "$ckpt_shards" "$data_shards"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die 2 "shard counts are whole numbers >= 1, got '$n'"
done

files=() unfinished=()
for ((c = 0; c < ckpt_shards; c++)); do
  for ((d = 0; d < data_shards; d++)); do
    f=$out/$cmd-c$c-d$d.h5
    files+=("$f")
    if [ ! -f "$f" ]; then
      unfinished+=("$((c * data_shards + d)) ($f missing)")
    elif [ ! -f "$out/$cmd-c$c-d$d.done" ]; then
      unfinished+=("$((c * data_shards + d)) ($f not finished)")
    fi
  done
done
if [ ${#unfinished[@]} -gt 0 ]; then
  ids=$(printf '%s\n' "${unfinished[@]}" | cut -d' ' -f1 | paste -sd, -)
  {
    echo "$me: ${#unfinished[@]} of ${#files[@]} tasks did not finish; merged nothing:"
    printf '  task %s\n' "${unfinished[@]}"
    echo "rerun them (probe resumes each from its file): probes/submit.sh --tasks $ids <the same arguments>"
  } >&2
  exit 3
fi

probe=${PROBE:-${SLURM_SUBMIT_DIR:-$PWD}/target/release/probe}
[ -x "$probe" ] || die 3 "no probe binary at $probe: run cargo build --release in the repository, submit from its root, or set PROBE=/path/to/probe"
exec "$probe" merge --out "$out/$cmd.h5" "$@" "${files[@]}"
