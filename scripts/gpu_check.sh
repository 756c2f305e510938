#!/bin/bash
# Device check of probe grad --engine torch --device cuda, on what scripts/gpu_bundle.sh put in .gpu:
# the CUDA engine against the CPU one (gradients per tensor, loss, accuracy), the same with TF32
# allowed (what probe turns off), and PyTorch eager on the GPU for speed. Prints, writes nothing back.
cd "$(dirname "$0")/.."
TL=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$TL:$PWD/.gpu/lib
P=$PWD/.gpu/probe
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ldd $P | grep -E "not found|torch_cuda|libc10_cuda" 
t() { local TIMEFORMAT="  wall %R s"; time "$@"; }
for dev in cuda cpu; do
  for m in resnet:fm gpt:sh; do
    name=${m%%:*}; data=.gpu/${m##*:}.h5
    echo "== $name $dev"
    t $P --quiet grad --engine torch --device $dev --threads 16 --model models/$name.onnx --data $data --batch 500 --save-grad --out /tmp/${name}_$dev.h5 > /dev/null
  done
done
echo "== resnet cuda with TF32 allowed (NVIDIA_TF32_OVERRIDE=1)"
NVIDIA_TF32_OVERRIDE=1 t $P --quiet grad --engine torch --device cuda --model models/resnet.onnx --data .gpu/fm.h5 --batch 500 --save-grad --out /tmp/resnet_tf32.h5 > /dev/null
python3 - <<'PY'
import h5py, numpy as np
def cmp(a, b, tag):
    a, b = h5py.File(a, "r"), h5py.File(b, "r")
    w = max((float(np.linalg.norm(b["grad/full/" + k][0] - a["grad/full/" + k][0]) / np.linalg.norm(a["grad/full/" + k][0])), k) for k in a["grad/full"])
    print(f"{tag}: worst grad rel L2 {w[0]:.2e} ({w[1]}), loss {b['loss'][0]:.8f} vs {a['loss'][0]:.8f}, acc {b['accuracy'][0]} vs {a['accuracy'][0]}, "
          f"pass seconds {b['seconds'][0]:.2f} vs {a['seconds'][0]:.2f}, samples {a['samples'][0]}, attrs {b.attrs['engine']}/{b.attrs['device']}")
for m in ["resnet", "gpt"]:
    cmp(f"/tmp/{m}_cpu.h5", f"/tmp/{m}_cuda.h5", f"{m} cuda vs cpu")
cmp("/tmp/resnet_cpu.h5", "/tmp/resnet_tf32.h5", "resnet cuda+TF32 vs cpu")
PY
echo "== PyTorch eager on the GPU, same models, data, batch (f32, TF32 off), second pass timed"
PYTHONUNBUFFERED=1 python3 - <<'PY'
import sys, time, torch, h5py, torch.nn.functional as F
sys.path.insert(0, "models"); sys.path.insert(0, "data")
import reference
torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False
for name, data in [("resnet", ".gpu/fm.h5"), ("gpt", ".gpu/sh.h5")]:
    with h5py.File(data, "r") as f:
        x = torch.from_numpy(f["x"][:]).cuda(); y = torch.from_numpy(f["y"][:]).cuda()
    model = reference.load_model(name).cuda()
    params = dict(model.named_parameters())
    for rep in range(2):
        acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for i in range(0, len(x), 500):
            model.zero_grad(set_to_none=True)
            z = model(x[i:i + 500])
            loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), y[i:i + 500].reshape(-1), reduction="sum")
            loss.backward()
            for k, p in params.items():
                acc[k] += p.grad.double()
        torch.cuda.synchronize(); t = time.perf_counter() - t0
    print(f"pytorch cuda {name}: {len(x) / t:.0f} samples/s ({t:.2f} s for {len(x)})")
PY
