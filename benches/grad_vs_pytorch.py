"""Benchmark: the full-dataset gradient by `probe grad` against PyTorch eager, same run, same machine.

Both compute the gradient of the mean cross-entropy over the same N samples, with the same batch
size and thread count, at the model's initial weights. By default N is the whole training set
(Fashion-MNIST's 60,000 images; all 158,037 Shakespeare windows of 32 tokens), the gradient the
tool exists to measure; `--n N` takes the first N. PyTorch's time covers only its gradient loop
(data already in memory, f32 forward/backward, f64 accumulation as probe does); probe's time is
its whole process (loading, building the gradient graph, reading the data, writing HDF5).
The "pass" column is probe's own time for the pass over the data (the results file's
`/seconds`: reading and decoding the data, the gradient graph's runs, the f64 sums and the row's
statistics), which is what PyTorch's time covers; the start-up it leaves out (libtorch's
operator registration at load, ~0.25 s here, building the gradient graph, ONNX Runtime's
session) is paid once per process, however many checkpoints it measures. probe runs three times: with its default engine (the ONNX gradient graph on ONNX Runtime, with
probe's libtorch kernels for convolution gradients), with `--standard-ops` (the same graph in
standard ONNX ops only, the "std" columns) and with `--engine torch` (libtorch autograd on the
interpreted graph, the "torch" columns); each ratio is PyTorch's time over that run's (above 1:
faster than PyTorch). PyTorch runs right before and right after each probe run and its two
times are averaged (this machine's speed drifts over minutes). `--repeat R` runs the whole row R
times and prints the median ratios (timings on a shared machine vary).

    .venv/bin/python benches/grad_vs_pytorch.py [--model resnet|gpt|mlp|all] [--n N] [--batch B]
    PROBE_BIN=/path/to/other/probe .venv/bin/python benches/grad_vs_pytorch.py ...   (another build)
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
sys.path.insert(0, os.path.join(ROOT, "data"))
import reference  # noqa: E402
import zoo  # noqa: E402


def pytorch_grad(name, x, y, batch, threads):
    torch.set_num_threads(threads)
    model = reference.load_model(name)
    params = dict(model.named_parameters())
    acc = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        model.zero_grad(set_to_none=True)
        logits = model(x[i:i + batch])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch].reshape(-1), reduction="sum")
        loss.backward()
        for k, p in params.items():
            acc[k] += p.grad.double()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all")
    p.add_argument("--n", type=int, default=None, help="the first N samples (default: all)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--onnx", help="with --model FILE.py: the ONNX export of that model")
    p.add_argument("--data", help="an HDF5 file with x and y to use (its first N samples) instead of "
                   "writing one")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--no-torch-engine", action="store_true", help="skip the --engine torch run")
    p.add_argument("--no-standard-ops", action="store_true", help="skip the --standard-ops run")
    a = p.parse_args()
    # PROBE_BIN: another build of probe (e.g. an older commit's) to compare with this one.
    exe = os.environ.get("PROBE_BIN") or os.path.join(ROOT, "target", "release", "probe")
    if not os.path.exists(exe) and "PROBE_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    names = ["mlp", "resnet", "gpt"] if a.model == "all" else [a.model]
    onnx_of = lambda n: a.onnx if a.onnx else os.path.join(ROOT, "models", f"{n}.onnx")
    print(f"{'model':>10} {'N':>7} {'batch':>6} {'PyTorch s/s':>12} {'probe s/s':>10} {'ratio':>6} "
          f"{'pass s/s':>9} {'ratio':>6} {'std s/s':>8} {'ratio':>6} {'torch s/s':>10} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            if name == "gpt" or (a.onnx and "lm" in name):
                x, y = reference.shakespeare(a.n)
            else:
                x, y = reference.fashion_mnist(a.n)
            n = len(x)
            import h5py

            tag = os.path.basename(name).replace(".py", "")
            data = a.data or os.path.join(d, f"{tag}.h5")
            if not a.data:
                with h5py.File(data, "w") as f:
                    f["x"], f["y"] = x, y
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            limit = ["--limit", str(n)] if a.data else []
            cmd = [exe, "--quiet", "grad", "--model", onnx_of(name),
                   "--data", data, "--batch", str(a.batch), "--threads", str(a.threads)] + limit + [
                   "--force", "--out", os.path.join(d, f"{tag}.out.h5")]

            def timed(extra):
                t0 = time.perf_counter()
                subprocess.run(cmd + extra, check=True, stdout=subprocess.DEVNULL)
                return time.perf_counter() - t0

            def pass_seconds():
                with h5py.File(os.path.join(d, f"{tag}.out.h5"), "r") as f:
                    return float(f["seconds"][0])

            ratios = []
            for _ in range(a.repeat):
                # PyTorch before and after probe, averaged: this machine's speed drifts over
                # minutes, and bracketing keeps a drift from favouring either side.
                t_pt1 = pytorch_grad(name, xt, yt, a.batch, a.threads)
                t_pr = timed([])
                t_pass = pass_seconds()
                t_pt = (t_pt1 + pytorch_grad(name, xt, yt, a.batch, a.threads)) / 2
                ratios.append((t_pt / t_pr, t_pt / t_pass))
                t_st = float("nan") if a.no_standard_ops else timed(["--standard-ops"])
                t_to = float("nan") if a.no_torch_engine else timed(["--engine", "torch"])
                print(f"{tag:>10} {n:>7} {a.batch:>6} {n / t_pt:>12.0f} {n / t_pr:>10.0f} {t_pt / t_pr:>6.2f}x "
                      f"{n / t_pass:>9.0f} {t_pt / t_pass:>6.2f}x {n / t_st:>8.0f} {t_pt / t_st:>6.2f}x {n / t_to:>10.0f} {t_pt / t_to:>6.2f}x",
                      flush=True)
            if a.repeat > 1:
                med = lambda v: sorted(v)[len(v) // 2]
                print(f"{tag:>10} median of {a.repeat}: {med([r[0] for r in ratios]):.2f}x whole process, "
                      f"{med([r[1] for r in ratios]):.2f}x pass", flush=True)

if __name__ == "__main__":
    main()
