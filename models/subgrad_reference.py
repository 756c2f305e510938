"""Models where the convention at a kink decides the gradient, with PyTorch reference gradients
(tests/subgradients.rs).

    .venv/bin/python models/subgrad_reference.py prepare --out DIR
    .venv/bin/python models/subgrad_reference.py compare REF H5 [REF H5 ...]

`prepare` writes:
  DIR/mobilenet/m.onnx     torchvision mobilenet_v2(num_classes=10), freshly initialized, eval
                           mode: its BatchNorms (zero bias, default running statistics) map
                           all-zero windows to exactly 0 at a ReLU6 (exported as Clip(0, 6)),
                           where PyTorch's hardtanh passes no gradient
  DIR/mobilenet/ref.safetensors  the gradient of the mean cross-entropy over DIR/images.h5,
                           PyTorch float64, with metadata f32_error (PyTorch float32's own
                           worst per-tensor relative L2 error from float64), loss, and
                           f32_batch1_error: PyTorch float32's error when the same gradient is
                           summed one sample at a time. The two differ: this fresh network's
                           activations shrink to ~1e-5 by block 9, a pre-activation there is
                           6.7e-12 in float64 (sample 63, features.9.conv.0, channel 92), a
                           cancellation whose float32 sign follows the summation order
                           (+8.4e-12 at batch 64, -4.3e-12 at batch 1); on the wrong side its
                           ReLU6 passes nothing, and features.9.conv.1.1.bias, a tensor of
                           norm 6e-7, is 3.2e-4 off. Both are float32's own error.
  DIR/images.h5            x [64, 3, 32, 32] float32, y [64] class ids
  DIR/opt, DIR/bert        tiny random-init OPTForCausalLM (nn.Embedding(padding_idx=1)) and
                           BertForMaskedLM (padding_idx=0), with ref.safetensors as above and
                           ref_none.safetensors, the gradient with every row's share (the
                           embedding's padding_idx set to None before the backward)
  DIR/tokens.h5            x, y [64, 8] token ids (ids 0 and 1 frequent)
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import compare, floor_of, rel  # noqa: E402

V, H, T, N = 64, 32, 8, 64


def export(model, x, path):
    torch.onnx.export(model, (x,), path, dynamo=True, optimize=False, input_names=["x"],
                      verbose=False, dynamic_shapes=({0: torch.export.Dim("N")},))


def grads(model, x, y, dtype, loss_of):
    m = model.to(dtype)
    m.zero_grad()
    loss = loss_of(m, x, y)
    loss.backward()
    out = {n: p.grad.detach().double().clone()
           for n, p in m.named_parameters(remove_duplicate=False)}
    return out, loss.item()


def save_ref(model, x, y, loss_of, path, batch1=False):
    """With batch1, also PyTorch float32's error with the gradient summed (in float64) over
    batches of one sample, as metadata f32_batch1_error."""
    from safetensors.torch import save_file

    g64, loss = grads(model, x, y, torch.float64, loss_of)
    g32, _ = grads(model, x, y, torch.float32, loss_of)
    floor = floor_of([g64[k].numpy() for k in g64])
    f32_error = max(rel(g32[k].numpy(), g64[k].numpy(), floor) for k in g64)
    meta = {"f32_error": repr(f32_error), "loss": repr(loss)}
    if batch1:
        g1 = {k: torch.zeros_like(v) for k, v in g64.items()}
        for i in range(len(x)):
            gi, _ = grads(model, x[i:i + 1], y[i:i + 1], torch.float32, loss_of)
            for k in g1:
                g1[k] += gi[k] / len(x)
        meta["f32_batch1_error"] = repr(max(rel(g1[k].numpy(), g64[k].numpy(), floor)
                                            for k in g64))
    save_file({k: v.contiguous() for k, v in g64.items()}, path, metadata=meta)
    model.float()


def image_loss(m, x, y):
    dt = next(m.parameters()).dtype
    return F.cross_entropy(m(x.to(dt)).double(), y, reduction="mean")


def token_loss(m, x, y):
    out = m(input_ids=x)
    return F.cross_entropy(out.logits.reshape(-1, V).double(), y.reshape(-1), reduction="mean")


def prepare(out):
    import h5py
    import torchvision
    import transformers as tf

    d = os.path.join(out, "mobilenet")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    with h5py.File(os.path.join(out, "images.h5"), "w") as f:
        f["x"], f["y"] = x.numpy(), y.numpy()
    export(model, x[:2], os.path.join(d, "m.onnx"))
    save_ref(model, x, y, image_loss, os.path.join(d, "ref.safetensors"), batch1=True)

    rng = np.random.default_rng(0)
    # Ids 0 and 1 (the padding rows) in about a quarter of the positions.
    seq = rng.integers(0, V, size=(N, T + 1))
    seq[rng.random(seq.shape) < 0.25] = 1
    seq[rng.random(seq.shape) < 0.1] = 0
    tx, ty = torch.from_numpy(seq[:, :T].copy()), torch.from_numpy(seq[:, 1:].copy())
    with h5py.File(os.path.join(out, "tokens.h5"), "w") as f:
        f["x"], f["y"] = tx.numpy(), ty.numpy()
    for name in ["opt", "bert"]:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        torch.manual_seed(0)
        if name == "opt":
            cfg = tf.OPTConfig(vocab_size=V, hidden_size=H, num_hidden_layers=2, ffn_dim=48,
                               num_attention_heads=2, max_position_embeddings=T + 2,
                               word_embed_proj_dim=H, pad_token_id=1, use_cache=False)
            model = tf.OPTForCausalLM(cfg).eval()
            emb = model.model.decoder.embed_tokens
        else:
            cfg = tf.BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=48,
                                max_position_embeddings=T, pad_token_id=0)
            model = tf.BertForMaskedLM(cfg).eval()
            emb = model.bert.embeddings.word_embeddings
        export(model, tx[:2], os.path.join(d, "m.onnx"))
        save_ref(model, tx, ty, token_loss, os.path.join(d, "ref.safetensors"))
        emb.padding_idx = None
        save_ref(model, tx, ty, token_loss, os.path.join(d, "ref_none.safetensors"))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--out", required=True)
    s = sub.add_parser("compare")
    s.add_argument("pairs", nargs="+", metavar="REF H5")
    a = p.parse_args()
    if a.cmd == "prepare":
        prepare(a.out)
    else:
        for ref, h5 in zip(a.pairs[::2], a.pairs[1::2]):
            compare(ref, h5)


if __name__ == "__main__":
    sys.exit(main())
