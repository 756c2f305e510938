"""Speed on the architectures researchers bring, at real sizes: `probe grad` against PyTorch eager,
same run, same machine, same data, same batch and threads.

Each model is built from torchvision, timm or transformers (random init, seed 0), exported as the
README says (models/export.py's export_onnx), saved as its users save it (safetensors of
`state_dict()`, `save_pretrained` for transformers), with random data of N samples in an HDF5 file
(images: standard normal x [N, 3, S, S], class ids in [0, 1000); language models: token windows).
Both sides compute the gradient of the summed cross-entropy over every sample, float32
forward/backward, gradients accumulated over batches in float64, at the same weights.

Per model and repeat, PyTorch's gradient loop runs right before and right after probe (in its own
process, data in memory, only the loop timed) and the two times are averaged: this machine's
speed drifts 20-30% over minutes, and the bracket keeps a drift from favouring either side.
Columns: "pass" is probe's own time for the pass (the results file's `/seconds`, the work
PyTorch's loop does), "whole" probe's whole process (libtorch's load, the gradient graph,
ONNX Runtime's session, the checkpoint, the data, HDF5); ratios are PyTorch's time over probe's
(above 1: probe is faster). Peak memory is each process's maximum resident set (wait4's
ru_maxrss): PyTorch's process holds its N samples in memory, probe reads them by batches.

    .venv/bin/python benches/real_models.py                      # every model, one repeat
    .venv/bin/python benches/real_models.py resnet50-224 gpt2 --repeat 3
    .venv/bin/python benches/real_models.py --seconds 30         # N so PyTorch's pass is ~30 s
    .venv/bin/python benches/real_models.py --quiet-load 1.5     # wait for a quiet machine
    .venv/bin/python benches/real_models.py resnet50-224 --profile /tmp/prof   # ORT per-node profile
    PROBE_BIN=/other/probe .venv/bin/python benches/real_models.py ...

Exports, checkpoints and data are cached under target/real_models/<name>/ (delete to redo).
--profile runs probe once more with PROBE_ORT_PROFILE set (a few batches) and prints
benches/profile_summary.py's table: time per op type, forward and backward, and the share in
GEMM/convolution kernels.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
PROBE = os.environ.get("PROBE_BIN", os.path.join(ROOT, "target", "release", "probe"))
CACHE = os.path.join(ROOT, "target", "real_models")
FORMAT = 1  # bump when what prepare writes changes


def tv(name, size):
    return dict(lib="torchvision", build=("tv", name), inp=("image", size), batch=32)


def timm_(name, size):
    return dict(lib="timm", build=("timm", name), inp=("image", size), batch=32)


# The list: resnet18/50 at 64 and 224, convnext_tiny, efficientnet_b0, mobilenet_v2, a ViT,
# GPT-2 small and a Llama-style decoder at sequence 256. Language models run 8 windows a batch
# (GPT-2's logits alone are 8 x 256 x 50257 floats, 412 MB, and again for their gradient).
MODELS = {
    "resnet18-64": tv("resnet18", 64),
    "resnet18-224": tv("resnet18", 224),
    "resnet50-64": tv("resnet50", 64),
    "resnet50-224": tv("resnet50", 224),
    "convnext_tiny-224": tv("convnext_tiny", 224),
    "efficientnet_b0-224": tv("efficientnet_b0", 224),
    "mobilenet_v2-224": tv("mobilenet_v2", 224),
    "deit_small-224": timm_("deit_small_patch16_224", 224),
    "gpt2": dict(lib="transformers", build=("hf", "GPT2LMHeadModel", dict(n_positions=256, use_cache=False)),
                 inp=("tokens", 50257, 256), batch=8),
    # A Llama-style decoder (RMSNorm, rotary, SwiGLU, grouped-query attention) of ~100M parameters.
    "llama": dict(lib="transformers", build=("hf", "LlamaForCausalLM", dict(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=256, use_cache=False)),
        inp=("tokens", 32000, 256), batch=8),
}


def build(spec):
    import torch

    torch.manual_seed(0)
    kind = spec["build"]
    if kind[0] == "tv":
        import torchvision.models as tvm

        m = getattr(tvm, kind[1])(weights=None)
    elif kind[0] == "timm":
        import timm

        m = timm.create_model(kind[1], pretrained=False)
    else:
        import transformers as tf

        cfg = getattr(tf, kind[1].replace("ForCausalLM", "Config").replace("LMHeadModel", "Config"))
        m = getattr(tf, kind[1])(cfg(**kind[2]))
    return m.eval()


def make_data(spec, n, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    if spec["inp"][0] == "image":
        s = spec["inp"][1]
        return torch.randn((n, 3, s, s), generator=g), torch.randint(0, 1000, (n,), generator=g)
    _, v, t = spec["inp"]
    seq = torch.randint(0, v, (n, t + 1), generator=g)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def prepare(name, spec, n):
    """The export, the checkpoint and N samples of data under target/real_models/<name>/."""
    d = os.path.join(CACHE, name)
    os.makedirs(d, exist_ok=True)
    onnx_path = os.path.join(d, "m.onnx")
    if not os.path.exists(onnx_path):
        import torch
        from export import export_onnx

        m = build(spec)
        x, _ = make_data(spec, 2)
        with torch.no_grad():
            export_onnx(m, x, onnx_path + ".tmp")
        if os.path.exists(onnx_path + ".tmp.data"):
            # export_onnx names the external data after the file it writes: rename both.
            import onnx

            model = onnx.load(onnx_path + ".tmp")
            onnx.save(model, onnx_path, save_as_external_data=True, location="m.onnx.data")
            os.remove(onnx_path + ".tmp")
            os.remove(onnx_path + ".tmp.data")
        else:
            os.replace(onnx_path + ".tmp", onnx_path)
        if spec["lib"] == "transformers":
            m.save_pretrained(os.path.join(d, "ckpt"))
        else:
            from safetensors.torch import save_file

            os.makedirs(os.path.join(d, "ckpt"), exist_ok=True)
            save_file(m.state_dict(), os.path.join(d, "ckpt", "model.safetensors"), metadata={"step": "0"})
    data = os.path.join(d, f"data-{n}.h5")
    if not os.path.exists(data):
        import h5py

        x, y = make_data(spec, n)
        with h5py.File(data + ".tmp", "w") as f:
            f["x"], f["y"] = x.numpy(), y.numpy()
        os.replace(data + ".tmp", data)
    return onnx_path, os.path.join(d, "ckpt", "model.safetensors"), data


def worker(name, n, batch, threads, calibrate):
    """PyTorch's side, in its own process (its peak memory is its own): the gradient loop over N
    samples, or with `calibrate` one warm batch, timed. Prints one JSON line."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    spec = MODELS[name]
    m = build(spec)
    params = dict(m.named_parameters())
    acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    x, y = make_data(spec, batch if calibrate else n)

    def step(xb, yb):
        m.zero_grad(set_to_none=True)
        out = m(xb)
        out = out if torch.is_tensor(out) else out.logits
        F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="sum").backward()
        for k, p in params.items():
            if p.grad is not None:
                acc[k] += p.grad.double()

    if calibrate:
        step(x, y)  # warm-up: first-call allocations and kernel selection
        t0 = time.perf_counter()
        step(x, y)
        seconds = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            step(x[i:i + batch], y[i:i + batch])
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds}), flush=True)


def time_v(cmd, env=None):
    """cmd under /usr/bin/time: (wall seconds, peak RSS MB, stdout)."""
    full = ["/usr/bin/time", "-f", "PEAK_RSS_KB %M"] + cmd
    t0 = time.perf_counter()
    p = subprocess.run(full, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({p.returncode}):\n{p.stderr.decode()[-2000:]}")
    kb = [l for l in p.stderr.decode().splitlines() if l.startswith("PEAK_RSS_KB")]
    return wall, int(kb[-1].split()[1]) / 1024, p.stdout.decode()


def pytorch(name, n, batch, threads, calibrate=False):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--n", str(n),
           "--batch", str(batch), "--threads", str(threads)] + (["--calibrate"] if calibrate else [])
    _, peak, out = time_v(cmd)
    return json.loads(out.strip().splitlines()[-1])["seconds"], peak


def wait_quiet(limit, most=900):
    """Waits (at most `most` seconds) until the 1-minute load average is under `limit`."""
    t0 = time.time()
    while os.getloadavg()[0] >= limit and time.time() - t0 < most:
        time.sleep(10)
    return os.getloadavg()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"models (default: all): {', '.join(MODELS)}")
    p.add_argument("--n", type=int, help="samples (default: from --seconds)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="pick N so PyTorch's pass takes about this long (default 10; the issue's "
                   "whole-process bar is at N where it takes >= 30)")
    p.add_argument("--batch", type=int, help="samples a batch (default: 32 images, 8 token windows)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--quiet-load", type=float, help="before each row, wait until the load average is below this")
    p.add_argument("--profile", metavar="DIR", help="also write and summarize ONNX Runtime's profile")
    p.add_argument("--json", help="append every row here as a JSON line")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker, a.n, a.batch, a.threads, a.calibrate)
    names = a.names or list(MODELS)
    for n_ in names:
        if n_ not in MODELS:
            sys.exit(f"unknown model {n_!r}; known: {', '.join(MODELS)}")
    print("| model | N | batch | PyTorch s | probe pass s | pass ratio | whole s | whole ratio | "
          "PyTorch MB | probe MB | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    import h5py

    for name in names:
        spec = MODELS[name]
        batch = a.batch or spec["batch"]
        prepare(name, spec, batch)  # the export, before any timing
        if a.n:
            n = a.n
        else:
            per_batch, _ = pytorch(name, batch, batch, a.threads, calibrate=True)
            n = max(batch, int(round(a.seconds / per_batch)) * batch)
        onnx_path, ckpt, data = prepare(name, spec, n)
        out = os.path.join(CACHE, name, "r.h5")
        # The shapes probe observes are kept between runs (--shape-cache): a model's first run
        # observes them (cold), later runs of the same model and data read them (warm). Each
        # model's first repeat starts cold; a row says which it was.
        shapes = os.path.join(CACHE, name, "shapes")
        shutil.rmtree(shapes, ignore_errors=True)
        cmd = [PROBE, "--quiet", "grad", "--model", onnx_path, "--ckpt", ckpt, "--data", data,
               "--batch", str(batch), "--threads", str(a.threads), "--force", "--out", out,
               "--shape-cache", shapes]
        rows = []
        for _ in range(a.repeat):
            load = wait_quiet(a.quiet_load) if a.quiet_load else os.getloadavg()[0]
            t1, pk1 = pytorch(name, n, batch, a.threads)
            cold = not (os.path.isdir(shapes) and os.listdir(shapes))
            whole, pk_probe, _ = time_v(cmd)
            with h5py.File(out, "r") as f:
                pass_s = float(f["seconds"][0])
            t2, pk2 = pytorch(name, n, batch, a.threads)
            t_pt = (t1 + t2) / 2
            row = dict(model=name, n=n, batch=batch, threads=a.threads, pytorch_s=t_pt,
                       pytorch_s_range=[t1, t2], pass_s=pass_s, whole_s=whole,
                       pass_ratio=t_pt / pass_s, whole_ratio=t_pt / whole,
                       pytorch_mb=max(pk1, pk2), probe_mb=pk_probe, load=[load, os.getloadavg()[0]],
                       shapes="cold" if cold else "warm")
            rows.append(row)
            print(f"| {name} | {n} | {batch} | {t1:.1f}, {t2:.1f} | {pass_s:.1f} | "
                  f"{row['pass_ratio']:.2f}x | {whole:.1f} ({row['shapes']}) | {row['whole_ratio']:.2f}x | "
                  f"{row['pytorch_mb']:.0f} | {pk_probe:.0f} | {load:.1f}-{row['load'][1]:.1f} |", flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if a.repeat > 1:
            med = lambda v: sorted(v)[len(v) // 2]
            pr, wr = [r["pass_ratio"] for r in rows], [r["whole_ratio"] for r in rows]
            print(f"| {name} median of {a.repeat} | | | | | **{med(pr):.2f}x** ({min(pr):.2f}-{max(pr):.2f}) "
                  f"| | **{med(wr):.2f}x** ({min(wr):.2f}-{max(wr):.2f}) | | | |", flush=True)
        if a.profile:
            os.makedirs(a.profile, exist_ok=True)
            prefix = os.path.join(a.profile, name)
            env = dict(os.environ, PROBE_ORT_PROFILE=prefix)
            # Five batches of their own data (the first is left out of the summary).
            _, _, pdata = prepare(name, spec, 5 * batch)
            pcmd = [pdata if c == data else c for c in cmd]
            subprocess.run(pcmd, check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run([sys.executable, os.path.join(ROOT, "benches", "profile_summary.py"),
                            "--skip-first", "1"] + sorted(
                os.path.join(a.profile, f) for f in os.listdir(a.profile)
                if f.startswith(name + "-gradient") and f.endswith(".json")), check=True)


if __name__ == "__main__":
    main()
