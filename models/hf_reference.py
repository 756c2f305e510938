"""Tiny random-init Hugging Face models, exported and saved the ways users do, with PyTorch
reference gradients (tests/hf_checkpoints.rs).

    .venv/bin/python models/hf_reference.py prepare --out DIR [--which gpt2,llama,bert]
    .venv/bin/python models/hf_reference.py compare DIR/<model>/ref.safetensors probe.h5 [...]
    .venv/bin/python models/hf_reference.py train-ref DIR lstm|gru --init RUN/step-00000000.safetensors \
        --probe-ckpt RUN/step-<S>.safetensors --steps S --batch B [--opt ... --lr ...]

`prepare` writes, per model (gpt2: GPT2LMHeadModel, tied wte/lm_head; llama: LlamaForCausalLM,
non-persistent rotary inv_freq, grouped-query attention; bert: BertForMaskedLM, tied decoder
weight and bias, non-persistent int64 position_ids/token_type_ids), under DIR/<model>/:

  m.onnx (+ m.onnx.data)  torch.onnx.export(dynamo=True, optimize=False, dynamic batch) of the
                          initial weights
  m23.onnx                the same with opset_version=23 (an Attention node per layer)
  clone.safetensors       a later "checkpoint" (every weight moved) as
                          save_file({k: v.clone() for k, v in model.state_dict().items()}):
                          every state_dict() name, tied ones twice (plain save_file refuses
                          tensors that share memory)
  save_model.safetensors  the same weights by safetensors.torch.save_model (one name of a pair)
  pretrained/model.safetensors  the same weights by model.save_pretrained (one name of a pair)
  ref.safetensors         the gradient of the full-data mean cross-entropy at that checkpoint,
                          PyTorch float64, under every state_dict() name, plus "loss"; metadata
                          "f32_error": PyTorch float32's own worst per-tensor relative L2 error
                          from float64 (against at least 1e-4 of the whole gradient's norm: BERT's
                          key biases have a zero gradient, up to rounding)

lstm and gru (not Hugging Face's: token embeddings, a 2-layer nn.LSTM, bidirectional, or nn.GRU,
and a linear head per position, exported as ONNX LSTM/GRU nodes) get what perm gets (below).
`train-ref` takes the steps of a `probe train` run of DIR/<model>/m.onnx on DIR/tokens.h5 (from
its step-0 checkpoint, file order) with torch.optim, as zoo_models.py's train-ref does, and
prints the same JSON line.

perm (not Hugging Face's: a persistent int64 buffer the forward indexes with, reversed in the
checkpoint, so only a probe that feeds the checkpoint's integer buffer gets PyTorch's gradient)
gets the same but for pretrained/.

And DIR/tokens.h5 (x, y: [64, 8] int64 token ids; y is x shifted, as a language model's targets),
plus for gpt2 the checkpoints that must be refused or need a flag: ddp.safetensors (every name
prefixed "module."), untied.safetensors (lm_head.weight differs from transformer.wte.weight),
torch_save.pt (torch.save of the state dict), no_param.safetensors (a parameter left out); and
DIR/static/m.onnx, a small model exported with a fixed batch of 2 (and its state, c.safetensors).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

V, H, T, N = 64, 32, 8, 64


HF = ("gpt2", "llama", "bert")


def build(which):
    import transformers as tf

    torch.manual_seed(0)
    if which == "gpt2":
        cfg = tf.GPT2Config(vocab_size=V, n_embd=H, n_layer=2, n_head=2, n_positions=T,
                            bos_token_id=0, eos_token_id=0, use_cache=False)
        return tf.GPT2LMHeadModel(cfg)
    if which == "llama":
        cfg = tf.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=T,
                             bos_token_id=0, eos_token_id=0, use_cache=False)
        return tf.LlamaForCausalLM(cfg)
    if which == "bert":
        cfg = tf.BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=48, max_position_embeddings=T, pad_token_id=None)
        return tf.BertForMaskedLM(cfg)
    if which == "perm":
        return Perm()
    if which in ("lstm", "gru"):
        return Recurrent(which)
    raise SystemExit(f"unknown model {which!r}")


class Perm(torch.nn.Module):
    """Not a Hugging Face model: a persistent int64 buffer the forward indexes with (as swin's
    relative_position_index), whose checkpoint value differs from the exported one."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, H)
        self.proj = torch.nn.Linear(H, V)
        self.table = torch.nn.Parameter(torch.randn(T, V))
        self.register_buffer("perm", torch.arange(T))

    def forward(self, input_ids):
        h = torch.tanh(self.emb(input_ids).index_select(1, self.perm))
        return self.proj(h) + self.table.index_select(0, self.perm)


class Recurrent(torch.nn.Module):
    """Not a Hugging Face model: token embeddings, a 2-layer nn.LSTM (bidirectional) or nn.GRU
    (one way), a linear head per position; exported as ONNX LSTM/GRU nodes."""

    def __init__(self, kind):
        super().__init__()
        bi = kind == "lstm"
        self.emb = torch.nn.Embedding(V, H)
        cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        self.rnn = cls(H, H, num_layers=2, batch_first=True, bidirectional=bi)
        self.head = torch.nn.Linear(2 * H if bi else H, V)

    def forward(self, input_ids):
        y, _ = self.rnn(self.emb(input_ids))
        return self.head(y)


def export(model, path, batch_dim=True, opset=None):
    x = torch.randint(0, V, (2, T))
    torch.onnx.export(model, (x,), path, dynamo=True, optimize=False, input_names=["x"], verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("N")},) if batch_dim else None,
                      **({"opset_version": opset} if opset else {}))


def move(model, seed):
    """A later checkpoint: every weight moved a little (tied weights stay one tensor)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def mean_ce_grads(model, x, y, dtype):
    """Gradient of the mean cross-entropy over all N*T targets, under every state_dict name."""
    m = model.to(dtype)
    m.zero_grad()
    logits = m(input_ids=x)
    logits = logits if torch.is_tensor(logits) else logits.logits
    loss = F.cross_entropy(logits.reshape(-1, V).double(), y.reshape(-1), reduction="mean")
    loss.backward()
    out = {n: p.grad.detach().double().clone() for n, p in m.named_parameters(remove_duplicate=False)}
    return out, loss.item()


def rel(a, b, floor):
    """Relative L2 error of `a` from `b`, against at least `floor` (a tensor whose gradient is
    zero in exact arithmetic, as BERT's key biases under softmax, has only rounding noise)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                 / max(float(np.linalg.norm(b)), floor))


def floor_of(grads):
    """1e-4 of the whole gradient's norm."""
    return 1e-4 * float(np.sqrt(sum(float((np.asarray(g, np.float64) ** 2).sum()) for g in grads)))


def prepare(out, which):
    import h5py
    from safetensors.torch import save_file, save_model

    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    seq = rng.integers(0, V, size=(N, T + 1))
    x, y = torch.from_numpy(seq[:, :T].copy()), torch.from_numpy(seq[:, 1:].copy())
    with h5py.File(os.path.join(out, "tokens.h5"), "w") as f:
        f["x"], f["y"] = x.numpy(), y.numpy()
    for name in which:
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model = build(name).eval()
        export(model, os.path.join(d, "m.onnx"))
        if name in HF:
            # Opset 23: attention as one Attention node (what sdpa attention exports to).
            export(model, os.path.join(d, "m23.onnx"), opset=23)
        move(model, 1)
        if name == "perm":
            with torch.no_grad():
                model.perm.copy_(torch.arange(T).flip(0))
        sd = model.state_dict()
        save_file({k: v.clone() for k, v in sd.items()}, os.path.join(d, "clone.safetensors"))
        save_model(model, os.path.join(d, "save_model.safetensors"))
        if name in HF:
            model.save_pretrained(os.path.join(d, "pretrained"))
        g64, loss = mean_ce_grads(model, x, y, torch.float64)
        g32, _ = mean_ce_grads(model, x, y, torch.float32)
        floor = floor_of([g64[k].numpy() for k in g64])
        f32_error = max(rel(g32[k].numpy(), g64[k].numpy(), floor) for k in g64)
        g64["loss"] = torch.tensor(loss, dtype=torch.float64)
        save_file({k: v.contiguous() for k, v in g64.items()}, os.path.join(d, "ref.safetensors"),
                  metadata={"f32_error": repr(f32_error), "loss": repr(loss)})
        model.float()
        if name == "gpt2":
            sd = {k: v.clone() for k, v in model.state_dict().items()}
            save_file({"module." + k: v for k, v in sd.items()}, os.path.join(d, "ddp.safetensors"))
            untied = dict(sd)
            untied["lm_head.weight"] = sd["lm_head.weight"] + 0.01
            save_file(untied, os.path.join(d, "untied.safetensors"))
            torch.save(sd, os.path.join(d, "torch_save.pt"))
            no_param = {k: v for k, v in sd.items() if k != "transformer.h.0.mlp.c_fc.bias"}
            save_file(no_param, os.path.join(d, "no_param.safetensors"))
    d = os.path.join(out, "static")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Embedding(V, 8), torch.nn.Linear(8, V)).eval()
    export(small, os.path.join(d, "m.onnx"), batch_dim=False)
    save_file(small.state_dict(), os.path.join(d, "c.safetensors"))


def compare(ref_path, h5_path):
    """Worst per-tensor relative L2 error of probe's --save-grad against the reference, as one
    JSON line."""
    import h5py
    from safetensors import safe_open

    with safe_open(ref_path, "np") as r:
        meta = r.metadata()
        ref = {k: r.get_tensor(k) for k in r.keys()}
    f = h5py.File(h5_path, "r")
    assert f.attrs["complete"] == 1, "results file is not complete"
    names = [n.decode() if isinstance(n, bytes) else n for n in f["params/name"][:]]
    floor = floor_of([ref[n] for n in names])
    worst, wname = 0.0, ""
    for n in names:
        g, r = f["grad/full/" + n][0], ref[n]
        assert g.shape == r.shape, (n, g.shape, r.shape)
        e = rel(g, r, floor)
        if e > worst:
            worst, wname = e, n
    out = {"worst": worst, "name": wname, "tensors": len(names),
           "f32_error": float(meta["f32_error"]), "loss": float(f["loss"][0]),
           "ref_loss": float(meta["loss"])}
    if "f32_batch1_error" in meta:
        out["f32_batch1_error"] = float(meta["f32_batch1_error"])
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--out", required=True)
    s.add_argument("--which", default="gpt2,llama,bert,perm,lstm,gru")
    s = sub.add_parser("compare")
    s.add_argument("pairs", nargs="+", metavar="REF H5")
    s = sub.add_parser("train-ref")
    s.add_argument("dir")
    s.add_argument("model", choices=["lstm", "gru"])
    import zoo_models  # not at the top: it imports this file

    zoo_models.train_ref_args(s)
    a = p.parse_args()
    if a.cmd == "prepare":
        prepare(a.out, a.which.split(","))
    elif a.cmd == "train-ref":
        c = zoo_models.train_compare(a, lambda: build(a.model), os.path.join(a.dir, "tokens.h5"))
        print(json.dumps(c))
    else:
        for ref, h5 in zip(a.pairs[::2], a.pairs[1::2]):
            compare(ref, h5)


if __name__ == "__main__":
    sys.exit(main())
