"""The model zoo: architectures nobody here wrote (torchvision, timm, Hugging Face transformers),
tiny configurations, random init, exported and saved the way their users do, with PyTorch
float64 reference gradients. Used by benches/zoo.py (every model, a table) and tests/zoo.rs (a
subset). Not models/zoo.py, which defines the three models shipped with probe.

    .venv/bin/python models/zoo_models.py list
    .venv/bin/python models/zoo_models.py prepare NAME [NAME ...] [--cache DIR]   # one dir a line
    .venv/bin/python models/zoo_models.py compare DIR probe.h5 [DIR probe.h5 ...]  # one JSON a line
    .venv/bin/python models/zoo_models.py train-ref DIR --init step-0.safetensors --probe-run RUN \\
        --steps S --batch B --opt sgd|adamw ...                                     # one JSON line

`prepare` writes, per model, under CACHE/<name>-<hash> (the hash covers the name, its config,
the library versions and ZOO_FORMAT, so a rerun with nothing changed reuses everything; CACHE
defaults to target/zoo):

  m.onnx (+ m.onnx.data)   models/export.py's export_onnx of the initial weights (dynamo=True,
                           optimize=False, dynamic batch axis), as the README tells users
  data.h5                  x: N random images [N, 3, H, W] (float32, standard normal) with class
                           ids y in [0, 10), or N token sequences [N, T] with y the next tokens
  step-0.safetensors       the initial weights, and step-2.safetensors the weights after two SGD
                           steps in train mode on data.h5 (BatchNorm statistics moved too), saved
                           as users save them: torchvision/timm `save_file(model.state_dict(),
                           path)`; transformers `save_pretrained(step-K/)` (step-K/model.safetensors)
  ref-K.safetensors        the gradient of the mean cross-entropy over all N samples (N*T tokens)
                           at checkpoint K, PyTorch float64 autograd, under every
                           named_parameters() name (tied names each), plus "loss"; metadata:
                           "f32_error", PyTorch float32's own worst per-tensor error from float64
                           measured as probe's is (see compare), and "loss32"
  meta.json                library, parameter count, what each checkpoint file is

Errors are per tensor: |g - g64| / max(|g64|, 1e-4 |whole g64|) in the L2 norm (the floor keeps
a tensor whose exact gradient is zero, such as a bias before a BatchNorm, from counting its
rounding noise as a relative error of 1), the same for probe and for PyTorch float32. A model
passes when its worst tensor is within 2x of PyTorch float32's own worst, or <= 1e-5, at every
checkpoint, and the loss agrees likewise.
"""
import argparse
import contextlib
import hashlib
import inspect
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from export import export_onnx  # noqa: E402
from hf_reference import floor_of, rel  # noqa: E402

ZOO_FORMAT = 1  # bump when what `prepare` writes changes
N_IMAGES, N_SEQ, CLASSES = 16, 16, 10
V, T = 96, 16  # language models: vocabulary, sequence length
CHECKPOINTS = ["step-0", "step-2"]
SGD_STEPS, SGD_LR = 2, 0.01


class Entry:
    def __init__(self, name, library, build, inp, cfg):
        self.name, self.library, self.build, self.inp, self.cfg = name, library, build, inp, cfg

    def key(self):
        import timm
        import torchvision
        import transformers

        src = inspect.getsource(self.build)
        blob = json.dumps([ZOO_FORMAT, self.name, self.cfg, self.inp, src, torch.__version__,
                           torchvision.__version__, timm.__version__, transformers.__version__])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


ZOO = {}


def img(size):
    return ("image", 3, size, size)


def add(name, library, inp, build, **cfg):
    ZOO[name] = Entry(name, library, build, inp, cfg)


# --- torchvision ----------------------------------------------------------------------------------
def tv(fn_name):
    def build(**cfg):
        import torchvision.models as tvm

        return getattr(tvm, fn_name)(weights=None, num_classes=CLASSES, **cfg)
    return build


def tv_resnet_small(**cfg):
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, num_classes=CLASSES, **cfg)


def tv_densenet_small(**cfg):
    from torchvision.models.densenet import DenseNet

    return DenseNet(num_classes=CLASSES, **cfg)


def tv_convnext_small(widths, depth):
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    setting = [CNBlockConfig(w, nxt, depth) for w, nxt in zip(widths, widths[1:] + [None])]
    return ConvNeXt(setting, num_classes=CLASSES)


def tv_vgg_small(cfg_name, hidden):
    # torchvision's VGG with its classifier narrowed (512*7*7 -> 4096 -> 4096 is 120M parameters;
    # the features, the adaptive pooling to 7x7 and the layer names stay torchvision's).
    import torchvision.models as tvm

    m = getattr(tvm, cfg_name)(weights=None, num_classes=CLASSES)
    m.classifier = torch.nn.Sequential(
        torch.nn.Linear(512 * 7 * 7, hidden), torch.nn.ReLU(True), torch.nn.Dropout(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(True), torch.nn.Dropout(),
        torch.nn.Linear(hidden, CLASSES))
    return m


def tv_swin_small(**cfg):
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(num_classes=CLASSES, **cfg)


def tv_vit_small(**cfg):
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(num_classes=CLASSES, **cfg)


add("resnet18", "torchvision", img(32), tv("resnet18"))
add("resnet50-narrow", "torchvision", img(32), tv_resnet_small, layers=[1, 1, 1, 1], width_per_group=16)
add("resnext-small", "torchvision", img(32), tv_resnet_small, layers=[1, 1, 1, 1], groups=4,
    width_per_group=8)
add("mobilenet_v2", "torchvision", img(32), tv("mobilenet_v2"), width_mult=0.25)
add("mobilenet_v3_small", "torchvision", img(32), tv("mobilenet_v3_small"), width_mult=0.25)
add("efficientnet_b0", "torchvision", img(32), tv("efficientnet_b0"))
add("densenet-small", "torchvision", img(32), tv_densenet_small, growth_rate=8,
    block_config=[2, 2, 2, 2], num_init_features=16)
add("convnext-small", "torchvision", img(32), tv_convnext_small, widths=[16, 32, 64], depth=1)
add("regnet_y_400mf", "torchvision", img(32), tv("regnet_y_400mf"))
add("shufflenet_v2_x0_5", "torchvision", img(32), tv("shufflenet_v2_x0_5"))
add("squeezenet1_0", "torchvision", img(64), tv("squeezenet1_0"))
add("mnasnet0_5", "torchvision", img(32), tv("mnasnet0_5"))
add("googlenet", "torchvision", img(64), tv("googlenet"), aux_logits=False, init_weights=True)
add("vgg11_bn-narrow", "torchvision", img(64), tv_vgg_small, cfg_name="vgg11_bn", hidden=64)
add("swin-small", "torchvision", img(32), tv_swin_small, patch_size=[4, 4], embed_dim=16,
    depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], stochastic_depth_prob=0.0)
add("vit-small", "torchvision", img(32), tv_vit_small, image_size=32, patch_size=8, num_layers=2,
    num_heads=2, hidden_dim=32, mlp_dim=64)


# --- timm -----------------------------------------------------------------------------------------
def timm_model(arch, **cfg):
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=CLASSES, **cfg)


def timm_mixer(**cfg):
    # timm's registered mixers fix depth and width; the class takes them.
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=CLASSES, **cfg)


add("deit_tiny", "timm", img(32), timm_model, arch="deit_tiny_patch16_224", img_size=32,
    patch_size=8, depth=2)
add("convnext_atto", "timm", img(32), timm_model, arch="convnext_atto")
add("timm-efficientnet_b0", "timm", img(32), timm_model, arch="efficientnet_b0")
add("resnet26d", "timm", img(32), timm_model, arch="resnet26d")
add("mixer-small", "timm", img(32), timm_mixer, img_size=32, patch_size=8, num_blocks=2,
    embed_dim=64)
add("coatnet_nano", "timm", img(64), timm_model, arch="coatnet_nano_rw_224", img_size=64)
add("poolformer_s12", "timm", img(32), timm_model, arch="poolformer_s12")
add("mobilevit_xxs", "timm", img(64), timm_model, arch="mobilevit_xxs")
add("levit_128s", "timm", img(64), timm_model, arch="levit_128s", img_size=64)


# --- Hugging Face transformers -------------------------------------------------------------------
def hf(cls, **cfg):
    import transformers as tf

    config = getattr(tf, cls.replace("ForCausalLM", "Config").replace("LMHeadModel", "Config")
                     .replace("ForMaskedLM", "Config").replace("ForImageClassification", "Config"))
    return getattr(tf, cls)(config(**cfg))


DEC = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
           num_attention_heads=2, max_position_embeddings=T, use_cache=False)
LM = ("tokens", V, T)
add("gpt2", "transformers", LM, hf, cls="GPT2LMHeadModel", vocab_size=V, n_embd=32, n_layer=2,
    n_head=2, n_positions=T, use_cache=False)
add("llama", "transformers", LM, hf, cls="LlamaForCausalLM", num_key_value_heads=1, **DEC)
add("mistral", "transformers", LM, hf, cls="MistralForCausalLM", num_key_value_heads=1, **DEC)
add("qwen2", "transformers", LM, hf, cls="Qwen2ForCausalLM", num_key_value_heads=1, **DEC)
add("qwen3", "transformers", LM, hf, cls="Qwen3ForCausalLM", num_key_value_heads=1, head_dim=16,
    **DEC)
add("gpt_neox", "transformers", LM, hf, cls="GPTNeoXForCausalLM", **DEC)
add("phi", "transformers", LM, hf, cls="PhiForCausalLM", **DEC)
add("gemma", "transformers", LM, hf, cls="GemmaForCausalLM", num_key_value_heads=1, head_dim=16,
    **DEC)
add("opt", "transformers", LM, hf, cls="OPTForCausalLM", vocab_size=V, hidden_size=32,
    ffn_dim=48, num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=32,
    max_position_embeddings=T, use_cache=False)
ENC = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=48)
add("bert", "transformers", LM, hf, cls="BertForMaskedLM", max_position_embeddings=T, **ENC)
add("roberta", "transformers", LM, hf, cls="RobertaForMaskedLM", max_position_embeddings=T + 2,
    **ENC)
add("distilbert", "transformers", LM, hf, cls="DistilBertForMaskedLM", vocab_size=V, dim=32,
    n_layers=2, n_heads=2, hidden_dim=48, max_position_embeddings=T)
add("hf-vit", "transformers", img(32), hf, cls="ViTForImageClassification", image_size=32,
    patch_size=8, num_labels=CLASSES, **{k: v for k, v in ENC.items() if k != "vocab_size"})

NAMES = list(ZOO)


# --- what prepare writes --------------------------------------------------------------------------
def build(name, seed=0):
    e = ZOO[name]
    torch.manual_seed(seed)
    return e.build(**e.cfg).eval()


def data(e, seed=0):
    g = torch.Generator().manual_seed(seed)
    if e.inp[0] == "image":
        x = torch.randn((N_IMAGES,) + tuple(e.inp[1:]), generator=g)
        return x, torch.randint(0, CLASSES, (N_IMAGES,), generator=g)
    seq = torch.randint(0, e.inp[1], (N_SEQ, e.inp[2] + 1), generator=g)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def logits_of(model, x):
    out = model(x)
    if not torch.is_tensor(out):
        out = out.logits if hasattr(out, "logits") else out[0]
    return out


def mean_ce(model, x, y):
    out = logits_of(model, x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).double(), y.reshape(-1))


def gradients(model, x, y, dtype):
    """Gradient of the mean cross-entropy under every named_parameters() name, and the loss."""
    m = model.to(dtype)
    m.zero_grad(set_to_none=True)
    loss = mean_ce(m, x.to(dtype) if x.is_floating_point() else x, y)
    loss.backward()
    out = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().clone()
           for n, p in m.named_parameters(remove_duplicate=False)}
    m.zero_grad(set_to_none=True)
    return out, loss.item()


def save_checkpoint(e, model, d, tag):
    """As the library's users save one; returns the file probe reads."""
    if e.library == "transformers":
        model.save_pretrained(os.path.join(d, tag))
        return os.path.join(tag, "model.safetensors")
    from safetensors.torch import save_file

    save_file(model.state_dict(), os.path.join(d, tag + ".safetensors"),
              metadata={"step": tag.split("-")[1]})
    return tag + ".safetensors"


def sgd_steps(model, x, y):
    """A later checkpoint as training makes one: SGD steps in train mode (dropout on, BatchNorm
    statistics updated), then eval mode."""
    opt = torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=0.9)
    model.train()
    torch.manual_seed(1)
    for _ in range(SGD_STEPS):
        opt.zero_grad()
        mean_ce(model, x, y).backward()
        opt.step()
    return model.eval()


def prepare(name, cache, seed=0):
    """Everything probe and the comparison need for `name`, made once (see the module doc). A
    `seed` other than 0 (benches/zoo_seeds.py) draws the initial weights and the data from it,
    in <name>-<hash>-seed<seed>, with seed 0's export copied (the same graph)."""
    from safetensors.torch import save_file
    import h5py

    e = ZOO[name]
    d = os.path.join(cache, f"{name}-{e.key()}" + (f"-seed{seed}" if seed else ""))
    if os.path.exists(os.path.join(d, "meta.json")):
        return d
    os.makedirs(d, exist_ok=True)
    model = build(name, seed)
    x, y = data(e, seed)
    with h5py.File(os.path.join(d, "data.h5"), "w") as f:
        f["x"], f["y"] = x.numpy(), y.numpy()
    t0 = time.time()
    if seed:
        import shutil

        first = prepare(name, cache)
        for f in os.listdir(first):
            if f.startswith("m.onnx"):
                shutil.copy(os.path.join(first, f), d)
    else:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress; stdout names the dirs
            export_onnx(model, x[:2], os.path.join(d, "m.onnx"))
    export_s = time.time() - t0
    ckpts = []
    for k, tag in enumerate(CHECKPOINTS):
        if k > 0:
            sgd_steps(model, x, y)
        with contextlib.redirect_stdout(sys.stderr):
            ckpts.append(save_checkpoint(e, model, d, tag))
        g64, loss = gradients(model, x, y, torch.float64)
        g32, loss32 = gradients(model, x, y, torch.float32)
        floor = floor_of([g.numpy() for g in g64.values()])
        f32_error = max(rel(g32[n].numpy(), g64[n].numpy(), floor) for n in g64)
        g64["loss"] = torch.tensor(loss, dtype=torch.float64)
        save_file({n: g.contiguous() for n, g in g64.items()}, os.path.join(d, f"ref-{k}.safetensors"),
                  metadata={"f32_error": repr(f32_error), "loss": repr(loss), "loss32": repr(loss32)})
    params = sum(p.numel() for p in model.parameters())
    meta = {"name": name, "library": e.library, "params": params, "checkpoints": ckpts,
            "export_s": export_s, "input": list(e.inp)}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return d


# --- comparison -----------------------------------------------------------------------------------
def compare(d, h5_path):
    """probe's --save-grad rows (one per checkpoint, in meta.json's order) against the references:
    a dict with the verdict and the numbers behind it."""
    import h5py
    from safetensors import safe_open

    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    f = h5py.File(h5_path, "r")
    rows = int(f.attrs["rows"])
    names = [n.decode() if isinstance(n, bytes) else n for n in f["params/name"][:]]
    out = {"name": meta["name"], "rows": [], "problems": []}
    if rows != len(meta["checkpoints"]):
        out["problems"].append(f"{rows} rows for {len(meta['checkpoints'])} checkpoints")
    for k in range(min(rows, len(meta["checkpoints"]))):
        with safe_open(os.path.join(d, f"ref-{k}.safetensors"), "np") as r:
            rm = r.metadata()
            ref = {n: r.get_tensor(n) for n in r.keys() if n != "loss"}
        floor = floor_of(list(ref.values()))
        worst, wname = 0.0, ""
        for n in names:
            if n not in ref:
                out["problems"].append(f"probe differentiates {n}, which is no parameter of the model")
                continue
            g = f["grad/full/" + n][k]
            if g.shape != ref[n].shape:
                out["problems"].append(f"{n}: shape {list(g.shape)} vs {list(ref[n].shape)}")
                continue
            e = rel(g, ref[n], floor)
            if not np.isfinite(e) or e > worst:
                worst, wname = (e if np.isfinite(e) else float("inf")), n
        # A parameter PyTorch gives a gradient but probe lists under no name (nor a tied alias
        # of equal gradient) would be a silent gap.
        for n in ref:
            if n not in names and not any(np.array_equal(ref[n], ref[m]) for m in names if m in ref):
                if float(np.abs(ref[n]).max(initial=0.0)) > 0:
                    out["problems"].append(f"no gradient from probe for parameter {n}")
        loss, ref_loss, loss32 = float(f["loss"][k]), float(rm["loss"]), float(rm["loss32"])
        where = ""
        if wname and ref[wname].ndim == 2:
            # An error all in one row of a matrix is the signature of an embedding's padding row
            # (PyTorch's padding_idx gives it no gradient; the exported Gather does not say so).
            d2 = ((f["grad/full/" + wname][k].astype(np.float64) - ref[wname]) ** 2).sum(axis=1)
            if d2.sum() > 0 and d2.max() >= 0.99 * d2.sum():
                where = f"row {int(d2.argmax())} holds {d2.max() / d2.sum():.0%} of the error"
        out["rows"].append({"worst": worst, "tensor": wname, "where": where, "f32_error": float(rm["f32_error"]),
                            "loss": loss, "ref_loss": ref_loss, "f32_loss_error":
                            abs(loss32 - ref_loss) / abs(ref_loss)})
    ok = bool(out["rows"]) and not out["problems"]
    for r in out["rows"]:
        r["bound"] = max(2 * r["f32_error"], 1e-5)
        r["loss_error"] = abs(r["loss"] - r["ref_loss"]) / abs(r["ref_loss"])
        r["loss_bound"] = max(2 * r["f32_loss_error"], 1e-6)
        ok = ok and r["worst"] <= r["bound"] and r["loss_error"] <= r["loss_bound"]
    worst_row = max(out["rows"], key=lambda r: r["worst"] / r["bound"], default=None)
    out.update({"exact": ok, "worst": worst_row and worst_row["worst"],
                "f32_error": worst_row and worst_row["f32_error"],
                "tensor": worst_row and worst_row["tensor"]})
    return out


# --- training against torch.optim -----------------------------------------------------------------
def train_ref(d, init, a, dtype, make=None, data=None):
    """The PyTorch side of `probe train` on a zoo model: load `init` (probe's step-0 checkpoint,
    keyed by the ONNX names: a tied pair under one name), take `a.steps` steps in `dtype` as
    models/train_reference.py does (its batches, optimizer and step), return the state dict and
    the losses. Dropout is off: the graph probe trains is the eval-mode export, which has none.
    Another model than the zoo's: `make()` builds it, `data` is its HDF5 file (hf_reference.py's
    recurrent models)."""
    from safetensors.torch import load_file
    from train_reference import batch_of, make_optimizer, train_step

    import h5py

    if make is None:
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
        make = lambda: build(meta["name"])  # noqa: E731
    torch.set_num_threads(a.threads)
    model = make()
    state = load_file(init)
    # probe's checkpoints hold every buffer of the graph, the non-persistent ones too (rotary
    # inv_freq), which state_dict() leaves out: they must equal the model's own.
    sd = model.state_dict()
    for n, b in model.named_buffers():
        if n not in sd and n in state:
            if not torch.equal(state.pop(n).to(b.dtype), b):
                raise SystemExit(f"{init}: non-persistent buffer {n} differs from the model's")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # What may be missing: a tied name (its partner is in `state`) or an integer buffer.
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)
            for m, q in model.named_parameters(remove_duplicate=False) if p is q and m in state}
    bad = [n for n in missing if n not in tied and not n.endswith("num_batches_tracked")]
    if bad or unexpected:
        raise SystemExit(f"{init}: missing {bad}, unexpected {unexpected}")
    model.to(dtype).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        # Functional dropout with the rate in a float attribute (OPT's `self.dropout =
        # config.dropout`, its attention's `self.dropout`).
        for k, v in vars(m).items():
            if "dropout" in k and isinstance(v, float):
                setattr(m, k, 0.0)
    opt = make_optimizer(model.parameters(), a)
    with h5py.File(data or os.path.join(d, "data.h5"), "r") as f:
        x, y = torch.from_numpy(f["x"][()]), torch.from_numpy(f["y"][()])
    if x.is_floating_point():
        x = x.to(dtype)
    losses = []
    for s in range(1, a.steps + 1):
        xb, yb = batch_of(x, y, a.batch, s)
        losses.append(train_step(_Logits(model), opt, None, xb, yb, "ce")[0])
    return model.state_dict(), losses


class _Logits(torch.nn.Module):
    """A Hugging Face model's logits as a plain tensor (what train_reference's loss reads)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return logits_of(self.m, x)


def train_compare(a, make=None, data=None):
    """probe's weights after the steps against PyTorch's in float64, and PyTorch float32's own
    error from float64 the same way: per float tensor of probe's checkpoint (parameters and
    BatchNorm statistics), |w - w64| / max(|w64 - w0|, 1e-4 |all of w64 - w0|) in the L2 norm:
    the error relative to how far the steps moved the tensor (relative to the weights alone, an
    update off by 1% of a small step would hide in 1e-5), the worst of each."""
    from safetensors.torch import load_file

    w64, losses = train_ref(a.dir, a.init, a, torch.float64, make, data)
    w32, _ = train_ref(a.dir, a.init, a, torch.float32, make, data)
    got, w0 = load_file(a.probe_ckpt), load_file(a.init)
    names = [n for n, g in got.items() if g.is_floating_point() and n in w64]
    moved = {n: (w64[n] - w0[n].double()).numpy() for n in names}
    floor = floor_of(list(moved.values()))

    def err(w):
        e = {n: rel(w[n].double().numpy() - w0[n].double().numpy(), moved[n], floor) for n in names}
        n = max(e, key=e.get)
        return e[n], n

    (worst, tensor), (f32_error, f32_tensor) = err(got), err(w32)
    return {"worst": worst, "tensor": tensor, "f32_error": f32_error, "f32_tensor": f32_tensor,
            "tensors": len(names), "losses": losses, "exact": worst <= max(2 * f32_error, 1e-5)}


def train_ref_args(s):
    """The options of `train-ref` after its positionals: probe's run and its optimizer flags
    (hf_reference.py's train-ref takes them too)."""
    s.add_argument("--init", required=True)
    s.add_argument("--probe-ckpt", required=True, help="probe's last checkpoint, to compare with")
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--opt", choices=["sgd", "adam", "adamw"], default="sgd")
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--momentum", type=float)
    s.add_argument("--weight-decay", type=float)
    s.add_argument("--threads", type=int, default=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    s = sub.add_parser("prepare")
    s.add_argument("names", nargs="+")
    s.add_argument("--cache", default=os.path.join(ROOT, "target", "zoo"))
    s.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("compare")
    s.add_argument("pairs", nargs="+", metavar="DIR H5")
    s = sub.add_parser("train-ref")
    s.add_argument("dir")
    train_ref_args(s)
    a = p.parse_args()
    if a.cmd == "list":
        for n, e in ZOO.items():
            print(n, e.library)
    elif a.cmd == "prepare":
        torch.set_num_threads(a.threads)
        for n in a.names:
            print(prepare(n, a.cache), flush=True)
    elif a.cmd == "compare":
        for d, h5 in zip(a.pairs[::2], a.pairs[1::2]):
            print(json.dumps(compare(d, h5)), flush=True)
    else:
        print(json.dumps(train_compare(a)))


if __name__ == "__main__":
    sys.exit(main())
