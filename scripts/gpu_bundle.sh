#!/bin/bash
# Prepares .gpu/ (ignored via .git/info/exclude) for a device check of `probe grad --engine torch
# --device cuda` on a GPU machine that has PyTorch 2.11 (cu130) in python3 but no Rust, no HDF5 and
# no network: the release binary built with libtorch_cuda linked in (PROBE_TORCH_CUDA=1, its own
# target folder so the CPU build here is untouched), the Debian shared libraries it needs besides
# glibc and libstdc++, two small data files, and scripts/gpu_check.sh. Then, with the device tool:
#   run: bash scripts/gpu_check.sh    carry: [".gpu"]
# There, LD_LIBRARY_PATH puts PyTorch's torch/lib first, so libtorch (and its CUDA libraries)
# come from that install.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
PROBE_TORCH_CUDA=1 CARGO_TARGET_DIR=target/cuda cargo build --release
mkdir -p .gpu/lib
cp target/cuda/release/probe .gpu/probe
ldd target/release/probe | awk '/=> \/lib\/x86_64/ {print $3}' \
  | grep -vE '/(libc|libm|libdl|librt|libpthread|libresolv|libstdc\+\+|libgcc_s|ld-linux)[.-]' \
  | while read -r f; do cp -L "$f" .gpu/lib/; done
.venv/bin/python - <<'PY'
import sys; sys.path[:0] = ["models", "data"]
import reference, h5py
for name, (x, y) in [("fm", reference.fashion_mnist(4000)), ("sh", reference.shakespeare(8000))]:
    with h5py.File(f".gpu/{name}.h5", "w") as f:
        f["x"], f["y"] = x, y
PY
du -sh .gpu
