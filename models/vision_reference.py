"""Image models with the activations and elementwise ops of torchvision's and timm's families,
random init, exported and saved as a user does, with PyTorch reference gradients
(tests/vision_models.rs).

    .venv/bin/python models/vision_reference.py prepare --out DIR [--which mobilenet_v3,acts]
    .venv/bin/python models/hf_reference.py compare DIR/<model>/ref.safetensors probe.h5 [...]

`prepare` writes DIR/images.h5 (x: [N, 3, 32, 32] float32, y: [N] int64 classes of 10) and, per
model, DIR/<model>/m.onnx (torch.onnx.export(dynamo=True, optimize=False, dynamic batch), eval
mode), c.safetensors (save_file(model.state_dict()), the weights moved a little from their
initial values) and ref.safetensors (the gradient of the mean cross-entropy over all N images
at c, PyTorch float64, under every parameter's name, plus metadata "f32_error", PyTorch
float32's own worst per-tensor relative L2 error, and "loss"), as hf_reference.py's `compare`
reads them.

  mobilenet_v3  torchvision mobilenet_v3_small(num_classes=10): HardSwish, HardSigmoid (the
                squeeze-excitation gates), depthwise convolutions, BatchNormalization
  acts          a small CNN through every op of the set: PReLU (one slope, per channel), ELU,
                SELU, CELU, Mish, Softsign, sin, cos, torch.maximum/minimum, torch.clamp with
                tensor bounds, torch.fmod, cumsum, topk values
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

N, C = 32, 10


class Acts(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.p1 = nn.PReLU(8)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.p2 = nn.PReLU()
        self.c3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.bound = nn.Parameter(torch.full((8, 1, 1), -0.2))
        self.fc = nn.Linear(8 * 16 + 4 * 8, C)

    def forward(self, x):
        h = self.p1(self.c1(x))
        h = F.elu(h, 0.7) + F.selu(h) * 0.5
        h = self.p2(self.c2(h))
        h = F.celu(h, 1.3) + F.mish(h)
        h = F.softsign(self.c3(h))
        h = torch.sin(3 * h) + torch.cos(2 * h)
        h = torch.maximum(h, -h.flip(1)) + torch.minimum(h, 0.5 * h.flip(2))
        h = torch.clamp(h, min=self.bound, max=self.bound + 1.5)
        h = h + torch.fmod(h, 0.37)
        f = h.flatten(1)
        f = torch.cumsum(f, 1) / 16
        top = torch.topk(h.flatten(2), 4, dim=2).values.flatten(1)
        return self.fc(torch.cat([f[:, : 8 * 16], top], 1))


def build(which):
    torch.manual_seed(0)
    if which == "mobilenet_v3":
        import torchvision

        return torchvision.models.mobilenet_v3_small(num_classes=C)
    if which == "acts":
        return Acts()
    raise SystemExit(f"unknown model {which!r}")


def grads(model, x, y, dtype):
    m = model.to(dtype)
    m.zero_grad()
    loss = F.cross_entropy(m(x.to(dtype)).double(), y, reduction="mean")
    loss.backward()
    return {n: p.grad.detach().double().clone() for n, p in m.named_parameters()}, loss.item()


def prepare(out, which):
    import h5py
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 32, 32, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    with h5py.File(os.path.join(out, "images.h5"), "w") as f:
        f["x"], f["y"] = x.numpy(), y.numpy()
    for name in which:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model = build(name).eval()
        torch.onnx.export(model, (x[:2],), os.path.join(d, "m.onnx"), dynamo=True, optimize=False,
                          input_names=["x"], output_names=["logits"], verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("N")},))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "c.safetensors"))
        g64, loss = grads(model, x, y, torch.float64)
        g32, _ = grads(model, x, y, torch.float32)
        floor = floor_of([v.numpy() for v in g64.values()])
        f32_error = max(rel(g32[k].numpy(), g64[k].numpy(), floor) for k in g64)
        save_file({k: v.contiguous() for k, v in g64.items()}, os.path.join(d, "ref.safetensors"),
                  metadata={"f32_error": repr(f32_error), "loss": repr(loss)})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--out", required=True)
    s.add_argument("--which", default="mobilenet_v3,acts")
    a = p.parse_args()
    prepare(a.out, a.which.split(","))


if __name__ == "__main__":
    sys.exit(main())
