#!/bin/bash
# Device check of `probe train`, on what scripts/gpu_bundle.sh put in .gpu/ (the CUDA-linked binary,
# its libraries, fm.h5 and sh.h5):
#   run: bash scripts/train_gpu_check.sh    carry: [".gpu"]
# 1. Five SGD steps of the ResNet on 640 Fashion-MNIST samples with --device cuda and cpu, against
#    models/train_reference.py (torch.optim) on the same device from the same step-0 weights:
#    worst relative error per tensor (BatchNorm running statistics included); on cuda also with
#    NVIDIA_TF32_OVERRIDE=0 for both (PyTorch's default lets cuDNN convolutions use TF32).
# 2. Steps/s of probe train against PyTorch eager (benches/train_vs_pytorch.py) on the GPU, and on
#    this machine's otherwise idle CPU cores at 4 and 16 threads.
# Prints, writes nothing back.
cd "$(dirname "$0")/.."
TL=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$TL:$PWD/.gpu/lib
P=$PWD/.gpu/probe
# safetensors for Python, if the machine lacks it: copy the package (abi3) into .gpu/py beforehand.
python3 -c "import safetensors" 2>/dev/null || export PYTHONPATH=$PWD/.gpu/py
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "cpu cores: $(nproc)"
W=/tmp/train-check
rm -rf $W && mkdir -p $W
python3 -c "
import h5py
with h5py.File('.gpu/fm.h5', 'r') as f, h5py.File('$W/fm640.h5', 'w') as g:
    g['x'], g['y'] = f['x'][:640], f['y'][:640]
"
SGD="--batch 128 --steps 5 --opt sgd --lr 0.05 --momentum 0.9 --weight-decay 5e-4"
# cuda: with PyTorch's defaults (cuDNN convolutions may use TF32), and with TF32 off for both.
for dev in cpu cuda cuda_notf32; do
  d=${dev%%_*}; [ $dev = cuda_notf32 ] && export NVIDIA_TF32_OVERRIDE=0
  $P -q train --model models/resnet.onnx --data $W/fm640.h5 $SGD --no-shuffle --threads 16 --device $d --out $W/probe_$dev > /dev/null || echo "probe train --device $dev failed"
  python3 models/train_reference.py --model resnet --init $W/probe_cpu/step-00000000.safetensors --data $W/fm640.h5 $SGD --threads 16 --device $d --out $W/torch_$dev.safetensors > /dev/null
done
unset NVIDIA_TF32_OVERRIDE
python3 - <<PY
from safetensors.torch import load_file
W = "$W"
def worst(a, b):
    a, b = load_file(a), load_file(b)
    return max((float((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max()), k) for k in a if a[k].is_floating_point())
for tag, a, b in [("probe cuda vs torch cuda", "probe_cuda/step-00000005.safetensors", "torch_cuda.safetensors"),
                  ("probe cuda vs torch cuda, TF32 off", "probe_cuda_notf32/step-00000005.safetensors", "torch_cuda_notf32.safetensors"),
                  ("probe cuda vs torch cpu, TF32 off", "probe_cuda_notf32/step-00000005.safetensors", "torch_cpu.safetensors"),
                  ("probe cpu vs torch cpu", "probe_cpu/step-00000005.safetensors", "torch_cpu.safetensors"),
                  ("probe cuda vs probe cpu", "probe_cuda/step-00000005.safetensors", "probe_cpu/step-00000005.safetensors"),
                  ("torch cuda vs torch cpu", "torch_cuda.safetensors", "torch_cpu.safetensors")]:
    try:
        e, k = worst(f"{W}/{a}", f"{W}/{b}")
        print(f"{tag}: worst relative error {e:.2e} ({k})")
    except Exception as ex:
        print(f"{tag}: {ex}")
PY
B="python3 benches/train_vs_pytorch.py --probe $P --steps 30 --rounds 2"
$B --device cuda --model resnet --data .gpu/fm.h5 --batch 128 --threads 16 2>&1 | grep -v Warn
$B --device cuda --model gpt --data .gpu/sh.h5 --batch 128 --threads 16 2>&1 | grep -v Warn | tail -1
for t in 4 16; do
  for m in mlp:fm resnet:fm gpt:sh; do
    $B --device cpu --model ${m%%:*} --data .gpu/${m##*:}.h5 --batch 128 --threads $t 2>&1 | grep -v Warn | tail -n +$([ $m = mlp:fm ] && echo 1 || echo 3)
  done
done
