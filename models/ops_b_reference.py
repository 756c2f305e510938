"""End-to-end check of the op rules GatherND, Resize, DepthToSpace, GroupNorm/InstanceNorm (and
what surrounds them): models exported as the README says, probe's full gradient against
PyTorch float64 autograd on the same weights and data.

    .venv/bin/python models/ops_b_reference.py prepare --out DIR
    target/release/probe grad --model DIR/<m>/m.onnx --ckpt DIR/<m>/c.safetensors \
        --data DIR/<m>/data.h5 --batch 16 --save-grad --out DIR/<m>/probe.h5
    .venv/bin/python models/hf_reference.py compare DIR/<m>/ref.safetensors DIR/<m>/probe.h5

Models (random init, eval mode, 32 samples, 10 classes, mean cross-entropy):
  vgg     torchvision vgg11_bn(num_classes=10) at 3x64x64: its adaptive average pool from 2x2 to
          7x7 exports to GatherND arithmetic
  upnorm  Conv, GroupNorm (opset 20: InstanceNormalization on a reshaped X), PixelShuffle
          (DepthToSpace CRD), F.interpolate nearest x0.5 and bilinear to 12x12 (Resize),
          InstanceNorm2d(affine), Linear, at 3x8x8
Each folder gets m.onnx (+ data), c.safetensors (state_dict), data.h5 (x, y), ref.safetensors
(PyTorch float64 gradient, metadata f32_error and loss, as hf_reference.py's compare reads).
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import floor_of, rel  # noqa: E402


class UpNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.fc = nn.Linear(4 * 12 * 12, 10)

    def forward(self, x):
        h = torch.relu(self.gn(self.c1(x)))
        h = F.pixel_shuffle(self.c2(h), 2)                      # [N, 4, 16, 16]
        h = F.interpolate(h, scale_factor=0.5, mode="nearest")  # [N, 4, 8, 8]
        h = F.interpolate(h, size=(12, 12), mode="bilinear")    # [N, 4, 12, 12]
        h = self.inorm(h)
        return self.fc(torch.tanh(h).flatten(1))


def build(name):
    torch.manual_seed(0)
    if name == "vgg":
        import torchvision
        return torchvision.models.vgg11_bn(num_classes=10), (3, 64, 64)
    if name == "upnorm":
        m = UpNorm()
        with torch.no_grad():  # scales and biases away from 1 and 0
            for p in (m.gn.weight, m.gn.bias, m.inorm.weight, m.inorm.bias):
                p.add_(0.3 * torch.randn(p.shape))
        return m, (3, 8, 8)
    raise SystemExit(f"unknown model {name!r}")


def grads(model, x, y, dtype):
    m = model.to(dtype)
    m.zero_grad()
    loss = F.cross_entropy(m(x.to(dtype)).double(), y, reduction="mean")
    loss.backward()
    return {n: p.grad.detach().double().clone() for n, p in m.named_parameters()}, loss.item()


def prepare(out, which):
    import h5py
    from safetensors.torch import save_file

    for name in which:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model, shape = build(name)
        model.eval()
        x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))
        with h5py.File(os.path.join(d, "data.h5"), "w") as f:
            f["x"], f["y"] = x.numpy(), y.numpy()
        torch.onnx.export(model, (x[:2],), os.path.join(d, "m.onnx"), dynamo=True, optimize=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("N")},))
        save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "c.safetensors"))
        g64, loss = grads(model, x, y, torch.float64)
        g32, _ = grads(model, x, y, torch.float32)
        floor = floor_of([g.numpy() for g in g64.values()])
        f32_error = max(rel(g32[k].numpy(), g64[k].numpy(), floor) for k in g64)
        g64["loss"] = torch.tensor(loss, dtype=torch.float64)
        save_file({k: v.contiguous() for k, v in g64.items()}, os.path.join(d, "ref.safetensors"),
                  metadata={"f32_error": repr(f32_error), "loss": repr(loss)})
        print(name, "f32_error", f32_error, "loss", loss)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["prepare"])
    p.add_argument("--out", required=True)
    p.add_argument("--which", default="vgg,upnorm")
    a = p.parse_args()
    prepare(a.out, a.which.split(","))
