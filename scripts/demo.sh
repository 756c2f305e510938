#!/usr/bin/env bash
# The demo: does the full-dataset gradient go to zero when training stops improving?
#
# Trains the shipped ResNet (models/resnet.onnx) on Fashion-MNIST with SGD (momentum 0.9, weight
# decay 5e-4, constant learning rate 0.05), a checkpoint every epoch, then computes at every
# checkpoint the exact gradient over the same training images and prints, per checkpoint: step,
# full loss, accuracy, |grad|, |grad + wd*w| (the gradient of the objective SGD with weight decay
# minimizes), |w| and the distance moved since the previous checkpoint; with --noise the minibatch
# and per-sample gradient noise (per-sample part on the first 1,000 images), with --hessian the
# top Hessian eigenvalue, sharpness and trace (on the first 128 images: each Lanczos step is a
# Hessian-vector product pass). Then `probe analyze` answers the paper's questions with numbers
# and `probe plot` draws them to $out/fig.png.
#
#   scripts/demo.sh                 # 12,000 images, 8 epochs: about 5 minutes on 2 cores
#   scripts/demo.sh --full          # all 60,000 images, 30 epochs (hours on 2 cores)
#   DEMO_OUT=dir scripts/demo.sh    # where the run goes (default runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
limit=12000
epochs=8
if [ "${1:-}" = "--full" ]; then limit=60000; epochs=30; fi
out=${DEMO_OUT:-runs/demo}
cargo build --release --quiet
probe=target/release/probe
mkdir -p "$(dirname "$out")"
echo "== training models/resnet.onnx on $limit Fashion-MNIST images, $epochs epochs -> $out" >&2
"$probe" train --model models/resnet.onnx --data fashion-mnist --limit "$limit" \
    --epochs "$epochs" --batch 128 --opt sgd --lr 0.05 --momentum 0.9 --weight-decay 5e-4 \
    --ckpt-every-epoch --seed 0 --out "$out" --resume >&2
echo "== exact full-dataset gradients at every checkpoint -> $out/grad.h5" >&2
"$probe" grad --model models/resnet.onnx --ckpt "$out"/step-????????.safetensors \
    --data fashion-mnist --limit "$limit" --batch 128 --weight-decay 5e-4 \
    --noise --noise-samples 1000 \
    --hessian --hessian-samples 128 --hessian-iters 12 --hutchinson 2 \
    --out "$out/grad.h5"
echo "== analysis of the series across checkpoints -> $out/grad.h5:/analysis" >&2
"$probe" analyze "$out/grad.h5"
echo "== figure -> $out/fig.png" >&2
"$probe" plot "$out/grad.h5" -o "$out/fig.png"
