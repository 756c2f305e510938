"""torchvision models at small inputs, exported as the README says, with PyTorch float64 and
float32 reference gradients on data that keeps clear of the models' kinks (tests/grad_vision.rs).

    .venv/bin/python models/kinkfree_reference.py prepare --model resnet18 --out DIR [--n 64] [--hw 32]
    .venv/bin/python models/kinkfree_reference.py compare DIR/ref_eval.safetensors probe.h5
    .venv/bin/python models/kinkfree_reference.py diagnose DIR [--engine-h5 NAME=probe.h5 ...]

Why kink-free data: a ReLU (or max-pool) network's gradient jumps where a pre-activation crosses
0 (or two pooled values swap). On random inputs a few pre-activations per batch sit within
float32's rounding error of 0 (a few 1e-7 of the layer's spread), and an engine whose forward
rounds one of them to the other side drops or adds a whole term of the gradient: on resnet18 at
32x32, batch 64, one such flip moved PyTorch float32's worst tensor from 8e-7 to 8e-4 relative
error. Which element flips depends on each engine's rounding (PyTorch float32 in its default
layout flipped one batch, in channels-last none; probe's default and --standard-ops each
flipped another), so comparing engines on such data compares lotteries. `prepare` keeps only
samples whose every ReLU input is at least MARGIN (in units of that tensor's standard
deviation, over the batch) from 0 and every max-pool window's winner that far from its runner-up,
in the float64 forward, in both BatchNorm modes, with the batches probe will use; what is left
is the engines' arithmetic, which is what kernels control.

`prepare` writes under DIR:
  m.onnx (+ .data)       torch.onnx.export(dynamo=True, optimize=False, dynamic batch)
  c.safetensors          save_file(state_dict()), as users save checkpoints
  d_eval.h5, d_train.h5  x float32 [N, 3, hw, hw], y int64 [N]: kink-free as above, for
                         each BatchNorm mode (with --batch and --batch-train)
  ref_eval.safetensors, ref_train.safetensors
                         PyTorch float64 gradient of the mean cross-entropy over the N samples
                         (BatchNorm with running statistics, or each batch's statistics), state
                         names; metadata "f32_error": PyTorch float32's own worst per-tensor
                         error from float64 (the `error` below), and "margin": the nearest kink
`compare` prints, as one JSON line, probe's worst per-tensor error against the reference and
PyTorch float32's. `diagnose` prints, per batch of d.h5 (or of --data), PyTorch float32's and
the given probe results' worst errors and the nearest kinks: how to tell a flip from arithmetic.

Error of a tensor g against the float64 reference r: |g - r|_2 / max(|r|_2, 1e-4 |R|_2), R all
of the reference's tensors together (a tensor whose gradient is zero in exact arithmetic, as a
bias before a training-mode BatchNorm, holds only rounding noise); a model's error is the worst
tensor's, as in models/hf_reference.py.
"""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = 10
MARGIN = 1e-5  # 3-5x the largest float32 forward error seen at a ReLU input (2-3e-6 std)


def build(name):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=CLASSES).eval()


def export(model, path, hw):
    torch.onnx.export(model, (torch.randn(2, 3, hw, hw),), path, dynamo=True, optimize=False,
                      input_names=["x"], dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)


def copy_of(model, dtype, train):
    m = copy.deepcopy(model).to(dtype)
    return m.train() if train else m.eval()


def margins(model, x, train):
    """Per sample, the nearest kink of the float64 forward of batch `x`: min over ReLU inputs of
    |z| / std(z), and over max-pool windows of (winner - runner-up) / std(input), skipping
    windows whose winner is 0 (ReLU zeros, whose gradient is 0 whichever wins)."""
    m = copy_of(model, torch.float64, train)
    near = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)

    def relu(mod, inp):
        z = inp[0].detach()
        r = (z.abs() / z.std()).flatten(1).min(1).values
        near.copy_(torch.minimum(near, r))

    def pool(mod, inp):
        z = inp[0].detach()
        k, s, p = mod.kernel_size, mod.stride, mod.padding
        cols = F.unfold(F.pad(z, (p, p, p, p), value=-float("inf")).flatten(0, 1).unsqueeze(1), k, stride=s)
        top = cols.topk(2, dim=1).values
        gap = (top[:, 0] - top[:, 1]) / z.std()
        gap = torch.where(top[:, 0] == 0, torch.full_like(gap, float("inf")), gap)
        near.copy_(torch.minimum(near, gap.reshape(z.shape[0], -1).min(1).values))

    for mod in m.modules():
        if isinstance(mod, (torch.nn.ReLU, torch.nn.ReLU6)):
            mod.inplace = False
            mod.register_forward_pre_hook(relu)
        elif isinstance(mod, torch.nn.MaxPool2d):
            mod.register_forward_pre_hook(pool)
    with torch.no_grad():
        m(x.double())
    return near


def kink_free(model, n, hw, batch, train, seed=1):
    """N samples (batches of `batch` in order) whose float64 forward's nearest kink is at least
    MARGIN. With running statistics each sample stands alone and an offending one is replaced;
    with batch statistics a replacement would move every kink of its batch, so an offending
    batch is drawn again whole (hence small batches: about 35% of samples have a kink within
    MARGIN on resnet18 at 32x32)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda k: (torch.randn(k, 3, hw, hw, generator=g), torch.randint(0, CLASSES, (k,), generator=g))
    x, y = draw(n)
    near = []
    for i in range(0, n, batch):
        for _ in range(1000):
            m = margins(model, x[i:i + batch], train)
            bad = m < MARGIN
            if not bad.any():
                near.append(float(m.min()))
                break
            k = int(bad.sum()) if not train else m.shape[0]
            idx = torch.arange(i, i + m.shape[0])[bad if not train else slice(None)]
            x[idx], y[idx] = draw(k)
        else:
            raise SystemExit(f"no kink-free batch at row {i} after 1000 draws")
    return x, y, min(near)


def grads(model, x, y, dtype, train, batch):
    """Gradient of the mean cross-entropy over all of x, summed per batch in float64."""
    m = copy_of(model, dtype, train)
    acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in m.named_parameters()}
    for i in range(0, x.shape[0], batch):
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m(x[i:i + batch].to(dtype)).double(), y[i:i + batch], reduction="sum").backward()
        for k, p in m.named_parameters():
            acc[k] += p.grad.double()
    return {k: (v / x.shape[0]).contiguous() for k, v in acc.items()}


def floor_of(ref):
    return 1e-4 * float(np.sqrt(sum(float((np.asarray(r, np.float64) ** 2).sum()) for r in ref.values())))


def error(got, ref):
    """(worst per-tensor error, its name): see the module's doc."""
    floor = floor_of(ref)
    errs = [(float(np.linalg.norm(np.asarray(got[k], np.float64) - np.asarray(r, np.float64))
                   / max(float(np.linalg.norm(r)), floor)), k) for k, r in ref.items()]
    return max(errs)


def prepare(a):
    from safetensors.torch import save_file
    import h5py

    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    model = build(a.model)
    export(model, os.path.join(a.out, "m.onnx"), a.hw)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(a.out, "c.safetensors"))
    for mode, n, batch in (("eval", a.n, a.batch), ("train", a.n_train, a.batch_train)):
        x, y, near = kink_free(model, n, a.hw, batch, mode == "train")
        with h5py.File(os.path.join(a.out, f"d_{mode}.h5"), "w") as f:
            f["x"], f["y"] = x.numpy(), y.numpy()
        g64 = grads(model, x, y, torch.float64, mode == "train", batch)
        g32 = grads(model, x, y, torch.float32, mode == "train", batch)
        e, name = error(g32, g64)
        save_file(g64, os.path.join(a.out, f"ref_{mode}.safetensors"),
                  metadata={"f32_error": repr(e), "f32_worst": name, "margin": repr(near),
                            "batch": str(batch)})
        print(json.dumps({"mode": mode, "f32_error": e, "f32_worst": name, "margin": near}))


def read_h5(path):
    import h5py

    f = h5py.File(path, "r")
    assert f.attrs["complete"] == 1, f"{path}: results file is not complete"
    return {k: f["grad/full/" + k][0] for k in f["grad/full"].keys()}


def compare(a):
    from safetensors import safe_open

    for ref_path, h5 in zip(a.pairs[::2], a.pairs[1::2]):
        with safe_open(ref_path, "np") as r:
            meta = r.metadata()
            ref = {k: r.get_tensor(k) for k in r.keys()}
        got = read_h5(h5)
        missing = sorted(set(ref) - set(got))
        assert not missing, f"probe gave no gradient for {missing}"
        e, name = error(got, ref)
        print(json.dumps({"worst": e, "name": name, "f32_error": float(meta["f32_error"]),
                          "f32_worst": meta["f32_worst"], "margin": float(meta["margin"])}))


def diagnose(a):
    """Per batch: PyTorch float32's worst error, each probe result's, the nearest kink."""
    import h5py

    torch.set_num_threads(a.threads)
    model = build(a.model)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(os.path.join(a.dir, "c.safetensors")))
    with h5py.File(a.data or os.path.join(a.dir, f"d_{a.bn}.h5"), "r") as f:
        x, y = torch.from_numpy(f["x"][:]), torch.from_numpy(f["y"][:])
    train = a.bn == "train"
    for i in range(0, x.shape[0], a.batch):
        xb, yb = x[i:i + a.batch], y[i:i + a.batch]
        g64 = grads(model, xb, yb, torch.float64, train, a.batch)
        line = {"batch": i, "nearest_kink": float(margins(model, xb, train).min()),
                "pytorch_f32": error(grads(model, xb, yb, torch.float32, train, a.batch), g64)}
        for spec in a.h5:
            tag, pattern = spec.split("=", 1)
            line[tag] = error(read_h5(pattern.replace("{i}", str(i))), g64)
        print(json.dumps(line), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--model", default="resnet18")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--hw", type=int, default=32)
    s.add_argument("--batch", type=int, default=32, help="the batch probe runs with, --bn eval")
    s.add_argument("--n-train", type=int, default=32)
    s.add_argument("--batch-train", type=int, default=8, help="the batch probe runs with, --bn train")
    s.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("compare")
    s.add_argument("pairs", nargs="+", metavar="REF H5")
    s = sub.add_parser("diagnose")
    s.add_argument("dir")
    s.add_argument("--model", default="resnet18")
    s.add_argument("--data", help="an HDF5 file other than DIR/d.h5")
    s.add_argument("--bn", choices=["eval", "train"], default="eval")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--h5", action="append", default=[],
                   help="TAG=PATH, probe's --save-grad of each batch alone, {i} the batch's first row")
    a = p.parse_args()
    {"prepare": prepare, "compare": compare, "diagnose": diagnose}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
