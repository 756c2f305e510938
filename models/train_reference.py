"""What `probe train` must reproduce: the same steps done by PyTorch with torch.optim.

    .venv/bin/python models/train_reference.py --model M --init C.safetensors --data D.h5 \\
        --batch 64 --steps 5 --opt sgd --lr 0.05 --momentum 0.9 --weight-decay 5e-4 --out W.safetensors

M is a zoo name (mlp, resnet, gpt, resnet101) or a .py file defining build() (see reference.py).
--init gives the starting weights (e.g. probe's own `step-00000000.safetensors`, i.e. the ONNX
model's initializers); without it the model keeps build()'s weights. The model is in train mode
(BatchNorm with batch statistics, running statistics updated with momentum 0.1).

Batches are the data file's samples in file order (probe's --no-shuffle): step s (1-based) takes
batch (s-1) mod ceil(N/B), the last batch of an epoch being smaller when B does not divide N. The
loss is F.cross_entropy on the logits flattened to [-1, C] (mean over every target element), or
F.mse_loss with --loss mse. Per step: opt.zero_grad(); loss.backward(); opt.step(); sched.step().
Schedules as probe's --schedule: constant, step:EVERY,GAMMA (StepLR), cosine (CosineAnnealingLR,
T_max = --steps).

Writes the state_dict after the steps (float32; BatchNorm's integer num_batches_tracked too) as
safetensors, with metadata `losses` and `lrs` (JSON lists, one per step). --device cuda trains on
the GPU with PyTorch's defaults (cuDNN may use TF32 for convolutions), as probe train --device cuda.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import load_model  # noqa: E402


def load_data(path):
    import h5py

    with h5py.File(path, "r") as f:
        return torch.from_numpy(f["x"][()]), torch.from_numpy(f["y"][()])


def batch_of(x, y, batch, step):
    """Samples of step `step` (1-based) in file order, epochs repeating."""
    n = x.shape[0]
    per = math.ceil(n / batch)
    b = (step - 1) % per
    s = slice(b * batch, min((b + 1) * batch, n))
    return x[s], y[s]


def loss_fn(out, y, kind):
    if kind == "mse":
        return F.mse_loss(out.reshape(y.shape), y.to(out.dtype))
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1).long())


def make_optimizer(params, a):
    wd = a.weight_decay
    if a.opt == "sgd":
        return torch.optim.SGD(params, lr=a.lr, momentum=a.momentum or 0.0, weight_decay=wd or 0.0)
    if a.momentum is not None:
        raise SystemExit("--momentum applies to --opt sgd only")
    if a.opt == "adam":
        return torch.optim.Adam(params, lr=a.lr, weight_decay=wd or 0.0)
    return torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-2 if wd is None else wd)


def make_scheduler(opt, spec, steps):
    if spec == "constant":
        return None
    if spec == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    every, gamma = spec.split(":", 1)[1].split(",")
    return torch.optim.lr_scheduler.StepLR(opt, step_size=int(every), gamma=float(gamma))


def load_init(model, path):
    """Weights from a safetensors state dict; only integer buffers may be missing."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise SystemExit(f"{path}: missing {real_missing}, unexpected {unexpected}")


def build(a):
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    if a.init:
        load_init(model, a.init)
    model.to(getattr(a, "device", "cpu")).train()
    opt = make_optimizer(model.parameters(), a)
    return model, opt, make_scheduler(opt, a.schedule, a.steps)


def train_step(model, opt, sched, xb, yb, loss_kind):
    opt.zero_grad()
    loss = loss_fn(model(xb), yb, loss_kind)
    loss.backward()
    lr = opt.param_groups[0]["lr"]
    opt.step()
    if sched is not None:
        sched.step()
    return float(loss.detach()), lr


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--init", help="starting weights (safetensors state dict)")
    p.add_argument("--data", required=True, help="HDF5 file with datasets x and y")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--opt", choices=["sgd", "adam", "adamw"], default="sgd")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", default="constant")
    p.add_argument("--loss", choices=["ce", "mse"], default="ce")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from safetensors.torch import save_file

    model, opt, sched = build(a)
    x, y = load_data(a.data)
    x, y = x.to(a.device), y.to(a.device)
    losses, lrs = [], []
    for s in range(1, a.steps + 1):
        xb, yb = batch_of(x, y, a.batch, s)
        loss, lr = train_step(model, opt, sched, xb, yb, a.loss)
        losses.append(loss)
        lrs.append(lr)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, a.out, metadata={"losses": json.dumps(losses), "lrs": json.dumps(lrs)})
    print(json.dumps({"steps": a.steps, "final_loss": losses[-1], "out": a.out}))


if __name__ == "__main__":
    main()
