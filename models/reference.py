"""PyTorch reference numbers for probe's tests, plus the data files and the "unseen" CNN they use.

probe computes exact full-dataset losses and gradients from ONNX graphs; the tests check them
against what plain PyTorch says for the same weights and data. Subcommands:

  eval       --model M --ckpt C.safetensors --data D.h5 [--batch B] --out ref.json
             full-dataset mean cross-entropy and accuracy -> {"loss", "accuracy", "n", "targets"}
  grad       (same flags) --out ref.safetensors
             gradient of the full-dataset mean loss per parameter (state-dict names, float64),
             plus a 0-d float64 tensor "loss"; metadata holds loss/accuracy/n/targets as text
  make-data  --dataset fashion-mnist|shakespeare [--n N] --out d.h5
  hidden-cnn --out DIR   DIR/m.onnx, DIR/c.safetensors (after 3 SGD steps), DIR/m.py
  hidden-lm  --out DIR   the same for the unseen LM (models/hidden_lm.py)

M is mlp, resnet, gpt (models/zoo.py) or a path to a .py file defining `build()` (or `Model`).
Loss definitions: the mean over all target elements (N for classifiers, N*T for the GPT) of
cross-entropy; accuracy is argmax == target over the same elements. The model runs in float32
(as the ONNX graph does) unless --f64; per-batch sums and gradients are accumulated in float64.
Without --ckpt the model keeps its fixed initial weights (torch.manual_seed(0)).
"""
import argparse
import gzip
import importlib.util
import json
import os
import shutil
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "data"))
import zoo  # noqa: E402

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


# --- models and data --------------------------------------------------------------------------
def load_model(spec, ckpt=None):
    """A zoo name or a .py file with build()/Model; weights from `ckpt` if given; eval mode."""
    if spec in zoo.NAMES:
        model = zoo.build(spec)
    elif spec.endswith(".py") and os.path.isfile(spec):
        mod_spec = importlib.util.spec_from_file_location("user_model", spec)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        model = mod.build() if hasattr(mod, "build") else mod.Model()
    else:
        raise SystemExit(f"--model: {spec!r} is neither one of {zoo.NAMES} nor a .py file")
    if ckpt:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(ckpt), strict=True)
    return model.eval()


def batches(path, batch):
    """(x, y) torch batches from an HDF5 file with datasets `x` and `y`, in file order."""
    import h5py

    with h5py.File(path, "r") as f:
        n = f["x"].shape[0]
        if f["y"].shape[0] != n:
            raise SystemExit(f"{path}: x has {n} rows, y has {f['y'].shape[0]}")
        for i in range(0, n, batch):
            yield torch.from_numpy(f["x"][i:i + batch]), torch.from_numpy(f["y"][i:i + batch]).long()


def batch_loss(model, x, y, f64):
    """Summed cross-entropy (float64) and number of correct argmaxes over the batch's targets."""
    if f64 and x.is_floating_point():
        x = x.double()
    logits = model(x)
    flat = logits.reshape(-1, logits.shape[-1]).double()
    t = y.reshape(-1)
    return F.cross_entropy(flat, t, reduction="sum"), int((flat.argmax(-1) == t).sum()), t.numel()


def _prepare(a):
    torch.set_num_threads(a.threads)
    model = load_model(a.model, a.ckpt)
    if a.f64:
        model = model.double()
    if getattr(a, "bn_train", False):
        model.train()  # BatchNorm with each batch's statistics, as probe's --bn train
    return model


# --- subcommands ------------------------------------------------------------------------------
def cmd_eval(a):
    model = _prepare(a)
    total, correct, targets, n = 0.0, 0, 0, 0
    with torch.no_grad():
        for x, y in batches(a.data, a.batch):
            s, c, t = batch_loss(model, x, y, a.f64)
            total += float(s.detach())
            correct += c
            targets += t
            n += x.shape[0]
    out = {"loss": total / targets, "accuracy": correct / targets, "n": n, "targets": targets}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


def cmd_grad(a):
    from safetensors.torch import save_file

    model = _prepare(a)
    params = dict(model.named_parameters())
    acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    total, correct, targets, n = 0.0, 0, 0, 0
    for x, y in batches(a.data, a.batch):
        model.zero_grad(set_to_none=True)
        s, c, t = batch_loss(model, x, y, a.f64)
        s.backward()  # gradient of the batch's SUMMED loss; divided by all targets at the end
        for k, p in params.items():
            if p.grad is not None:
                acc[k] += p.grad.double()
        total += float(s.detach())
        correct += c
        targets += t
        n += x.shape[0]
    out = {k: (g / targets).contiguous() for k, g in acc.items()}
    loss = total / targets
    out["loss"] = torch.tensor(loss, dtype=torch.float64)
    meta = {"loss": repr(loss), "accuracy": repr(correct / targets), "n": str(n), "targets": str(targets)}
    save_file(out, a.out, metadata=meta)
    gnorm = float(torch.sqrt(sum((g ** 2).sum() for k, g in out.items() if k != "loss")))
    print(json.dumps({**meta, "tensors": len(out) - 1, "grad_norm": gnorm}))


def read_idx(path):
    """A gzipped IDX file (images magic 2051, labels 2049) as a uint8 numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">i", raw[:4])[0]
    if magic == 2051:
        n, r, c = struct.unpack(">iii", raw[4:16])
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, r, c)
    if magic == 2049:
        (n,) = struct.unpack(">i", raw[4:8])
        return np.frombuffer(raw, np.uint8, offset=8).reshape(n)
    raise SystemExit(f"{path}: bad IDX magic {magic}")


def fashion_mnist(n=None, split="train"):
    """First n images, normalized to float32 [n,1,28,28], and int64 labels [n]."""
    img = read_idx(os.path.join(FMNIST_DIR, f"{split}-images-idx3-ubyte.gz"))
    lab = read_idx(os.path.join(FMNIST_DIR, f"{split}-labels-idx1-ubyte.gz"))
    n = len(img) if n is None else n
    if n > len(img):
        raise SystemExit(f"--n {n}: only {len(img)} images")
    x = ((img[:n].astype(np.float32) / np.float32(255) - np.float32(FMNIST_MEAN)) / np.float32(FMNIST_STD))
    return x[:, None].astype(np.float32), lab[:n].astype(np.int64)


def shakespeare(n=None, T=zoo.GPT_BLOCK):
    """Windows i = 0..n-1 of the token stream s: x = s[iT : iT+T], y = s[iT+1 : iT+T+1].

    At most floor((len(s)-1)/T) windows exist; the stream is defined in data/make_vocab.py.
    """
    from make_vocab import read_stream

    text, _ = read_stream()
    ids = {c: i for i, c in enumerate(zoo.load_vocab())}
    s = np.fromiter((ids[c] for c in text), dtype=np.int64, count=len(text))
    w = (len(s) - 1) // T
    n = w if n is None else n
    if n > w:
        raise SystemExit(f"--n {n}: only {w} windows of {T}")
    x = s[: n * T].reshape(n, T)
    y = s[1: n * T + 1].reshape(n, T)
    return x, y


def cmd_make_data(a):
    import h5py

    if a.dataset == "fashion-mnist":
        x, y = fashion_mnist(a.n, a.split)
    else:
        x, y = shakespeare(a.n)
    with h5py.File(a.out, "w") as f:
        f.create_dataset("x", data=x)
        f.create_dataset("y", data=y)
    print(f"{a.out}: x {x.dtype} {list(x.shape)}, y {y.dtype} {list(y.shape)}")


def cmd_hidden_cnn(a):
    """Export the unseen CNN and a checkpoint whose BN running stats moved away from init."""
    import hidden_cnn

    hidden(a, hidden_cnn, fashion_mnist(3 * 64))


def cmd_hidden_lm(a):
    """Export the unseen LM and a checkpoint 3 SGD steps away from init."""
    import hidden_lm

    hidden(a, hidden_lm, shakespeare(3 * 64))


def hidden(a, module, data):
    """Export `module.build()` to DIR/m.onnx, train it 3 SGD steps on `data` into
    DIR/c.safetensors, copy the module to DIR/m.py."""
    from safetensors.torch import save_file

    import export

    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    model = module.build()
    path = os.path.join(a.out, "m.onnx")
    if a.export_init:
        export.export_onnx(model, module.example_input(), path)
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(3):
        xb, yb = torch.from_numpy(x[i * 64:(i + 1) * 64]), torch.from_numpy(y[i * 64:(i + 1) * 64])
        opt.zero_grad()
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        loss.backward()
        opt.step()
        print(f"step {i}: train loss {loss.item():.4f}")
    model.eval()
    if not a.export_init:
        export.export_onnx(model, module.example_input(), path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(a.out, "c.safetensors"))
    shutil.copyfile(module.__file__, os.path.join(a.out, "m.py"))
    export.check(path, model.state_dict() if not a.export_init else module.build().state_dict())
    print(f"{a.out}: m.onnx (+.data), c.safetensors, m.py")


def cmd_curvature(a):
    """Noise and curvature by brute force in float64, the references for `probe grad --noise
    --hessian`: per-sample gradients one by one, minibatch gradients of the same partition, the
    dense Hessian of a parameter block (eigendecomposed), and the whole model's top eigenvalue by
    an independent Lanczos (numpy, 80 steps, full reorthogonalization) on double-backward
    Hessian-vector products."""
    import numpy as np
    from torch.func import functional_call

    torch.set_num_threads(a.threads)
    model = load_model(a.model, a.ckpt).double()
    names = [k for k, _ in model.named_parameters()]
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    buffers = {k: b for k, b in model.named_buffers()}
    xs, ys = [], []
    for x, y in batches(a.data, 10**9):
        xs.append(x), ys.append(y)
    X, Y = torch.cat(xs), torch.cat(ys)
    if X.is_floating_point():
        X = X.double()

    def summed(params, x, y):
        logits = functional_call(model, (params, buffers), (x,))
        flat = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, y.reshape(-1), reduction="sum"), y.numel()

    def grad_of(params, x, y):
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        s, m = summed(ps, x, y)
        gs = torch.autograd.grad(s, [ps[k] for k in names], allow_unused=True)
        return torch.cat([(torch.zeros_like(ps[k]) if g is None else g).reshape(-1) for k, g in zip(names, gs)]) / m

    N = X.shape[0]
    g = grad_of(base, X, Y)
    out = {"grad_l2": float(g.norm())}
    # Per sample: tr Sigma = mean_i |g_i - g|^2.
    dev = [float(((grad_of(base, X[i:i + 1], Y[i:i + 1]) - g) ** 2).sum()) for i in range(N)]
    out["sample_var_trace"] = float(np.mean(dev))
    # Minibatches of the fixed partition.
    gb = [grad_of(base, X[i:i + a.batch], Y[i:i + a.batch]) for i in range(0, N, a.batch)]
    out["batch_sq_mean"] = float(np.mean([float((v ** 2).sum()) for v in gb]))
    out["batch_var"] = float(np.mean([float(((v - g) ** 2).sum()) for v in gb]))

    sizes = {k: base[k].numel() for k in names}

    def hvp(v):
        ps = {k: t.clone().requires_grad_(True) for k, t in base.items()}
        s, m = summed(ps, X, Y)
        gs = torch.autograd.grad(s / m, [ps[k] for k in names], create_graph=True)
        flat = torch.cat([t.reshape(-1) for t in gs])
        hv = torch.autograd.grad(flat @ torch.from_numpy(v), [ps[k] for k in names])
        return torch.cat([t.reshape(-1) for t in hv]).numpy()

    # Whole model: Lanczos with full reorthogonalization (--lanczos 0 skips it: PyTorch's CPU
    # attention kernel has no double backward).
    if a.lanczos > 0:
        dim = sum(sizes.values())
        rng = np.random.default_rng(1234)
        q = rng.standard_normal(dim); q /= np.linalg.norm(q)
        Q, al, be = [q], [], []
        for k in range(a.lanczos):
            w = hvp(Q[-1]); al.append(float(w @ Q[-1]))
            for _ in range(2):
                for b in Q:
                    w -= (w @ b) * b
            bk = float(np.linalg.norm(w))
            if k + 1 == a.lanczos or bk < 1e-14:
                break
            be.append(bk); Q.append(w / bk)
        T = np.diag(al) + np.diag(be[:len(al) - 1], 1) + np.diag(be[:len(al) - 1], -1)
        ev = np.linalg.eigvalsh(T)
        out["top"], out["lanczos_steps"] = float(ev[-1]), len(al)
        gn = g.numpy() / np.linalg.norm(g.numpy())
        out["sharpness"] = float(gn @ hvp(gn))

    # A block, densely: the Hessian of the loss in the block's parameters, the rest fixed.
    if a.block:
        block = a.block.split(",")
        shapes = [base[k].shape for k in block]
        counts = [base[k].numel() for k in block]

        def loss_of(flat):
            ps = dict(base)
            at = 0
            for k, sh, c in zip(block, shapes, counts):
                ps[k] = flat[at:at + c].reshape(sh)
                at += c
            s, m = summed(ps, X, Y)
            return s / m

        w0 = torch.cat([base[k].reshape(-1) for k in block])
        H = torch.autograd.functional.hessian(loss_of, w0, vectorize=True).numpy()
        H = (H + H.T) / 2
        ev = np.linalg.eigvalsh(H)
        out["block"] = {"params": block, "dim": int(H.shape[0]), "top": float(ev[-1]),
                        "bottom": float(ev[0]), "trace": float(np.trace(H))}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("eval", cmd_eval), ("grad", cmd_grad)):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True, help="mlp|resnet|gpt|resnet101 or a .py file")
        s.add_argument("--ckpt", help="safetensors state dict (default: the fixed initial weights)")
        s.add_argument("--data", required=True, help="HDF5 file with datasets x and y")
        s.add_argument("--batch", type=int, default=256)
        s.add_argument("--f64", action="store_true", help="run the model itself in float64")
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--bn-train", action="store_true", help="BatchNorm with batch statistics")
        s.add_argument("--out", required=True)
        s.set_defaults(fn=fn)
    s = sub.add_parser("curvature")
    s.add_argument("--model", required=True)
    s.add_argument("--ckpt")
    s.add_argument("--data", required=True, help="HDF5 file with datasets x and y (all of it is used)")
    s.add_argument("--batch", type=int, required=True, help="the minibatch partition for the batch noise")
    s.add_argument("--block", help="comma-separated parameters whose Hessian block is built densely")
    s.add_argument("--lanczos", type=int, default=80, help="steps (0: no eigenvalue, no sharpness)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_curvature)
    s = sub.add_parser("make-data")
    s.add_argument("--dataset", required=True, choices=["fashion-mnist", "shakespeare"])
    s.add_argument("--n", type=int, help="number of examples/windows (default: all)")
    s.add_argument("--split", default="train", choices=["train", "t10k"], help="fashion-mnist only")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_make_data)
    for name, fn in (("hidden-cnn", cmd_hidden_cnn), ("hidden-lm", cmd_hidden_lm)):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--export-init", action="store_true",
                       help="export the graph with the INITIAL weights (checkpoint still trained), so "
                            "only the checkpoint carries the trained values")
        s.add_argument("--threads", type=int, default=2)
        s.set_defaults(fn=fn)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
