#!/usr/bin/env bash
# Long fuzz runs of probe's file readers (tests/fuzz_inputs.rs): the ONNX loader with external
# data, the safetensors checkpoint reader, the HDF5 data opener. One target after another, each
# for SECONDS (default 600), at low priority so the machine stays usable.
#
#   benches/fuzz.sh                 # 10 minutes each, seed 1
#   benches/fuzz.sh 60 onnx         # one minute of the ONNX target
#   PROBE_FUZZ_SEED=7 benches/fuzz.sh 600 hdf5
#
# Each run prints "fuzz TARGET: N cases in S s (seed K), F failures, ...". Failing inputs are
# saved under target/fuzz-failures/TARGET/seedK-caseI/ (the files, `model`, `why.txt`); once
# fixed, copy the folder to tests/fixtures/fuzz/TARGET/<name>/ so `fuzz_regressions` replays it.
# The test binary is copied aside first, so a rebuild by someone else mid-run does not change
# the code the restarted workers run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("${@:-onnx safetensors hdf5}")
# shellcheck disable=SC2206
targets=(${targets[*]})
bin=$(cargo test --release --test fuzz_inputs --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*fuzz_inputs[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build tests/fuzz_inputs.rs" >&2; exit 1; }
copy=$(mktemp -d)/fuzz_inputs
cp "$bin" "$copy"
status=0
for t in "${targets[@]}"; do
  log="$(dirname "$copy")/$t.log"
  PROBE_FUZZ_SECONDS="$seconds" nice -n 10 "$copy" "fuzz_$t" --exact --nocapture --test-threads=1 \
    >"$log" 2>&1 || status=1
  grep -oE 'fuzz [a-z0-9]+: [0-9]+ cases.*|.*seed[0-9]+-case[0-9]+: .*' "$log" || cat "$log"
done
rm -rf "$(dirname "$copy")"
exit $status
