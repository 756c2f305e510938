"""Benchmark: K checkpoints in one pass over an image folder against one pass each.

`probe grad --ckpts-per-pass K` reads and decodes each batch once and computes every
checkpoint's gradient on it; `--ckpts-per-pass 1` decodes the whole folder once per checkpoint.
Where decoding is the cost (an image folder, a small model), K checkpoints in one pass should
cost well under K passes. Same tree of real images as benches/imagefolder.py
(models/imagefolder_reference.py's photographs and Fashion-MNIST re-encodings), the small CNN
of models/imagefolder_reference.py (224x224 input), K checkpoints saved from `state_dict()`.
Each configuration runs `--repeat` times, interleaved so drift in the machine's load touches
both alike; the table gives the median and range of the whole process's wall time, and
checks that both give the same rows (every dataset but `seconds`).

    .venv/bin/python benches/ckpts_per_pass.py [--copies 4] [--k 4] [--repeat 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
from export import export_onnx  # noqa: E402
from imagefolder_reference import build_cnn  # noqa: E402


def probe_bin():
    return os.environ.get("PROBE_BIN", os.path.join(ROOT, "target", "release", "probe"))


def rows(path):
    out = {}
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name != "seconds":
                out[name] = obj[()]
        f.visititems(visit)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "imagenet")
        info = json.loads(subprocess.run(
            [sys.executable, os.path.join(ROOT, "models", "imagefolder_reference.py"), "tree", tree,
             "--photos", os.path.join(ROOT, "data", "cache", "photos"), "--copies", str(a.copies)],
            check=True, capture_output=True, text=True).stdout)
        model = build_cnn()
        onnx = os.path.join(tmp, "cnn.onnx")
        export_onnx(model, torch.randn(2, 3, 224, 224), onnx)
        ckpts = []
        for k in range(a.k):
            torch.manual_seed(100 + k)
            sd = {n: p * (1.0 + 0.1 * k) + 0.01 * torch.randn_like(p) for n, p in model.state_dict().items()}
            path = os.path.join(tmp, f"step-{1000 * k:08d}.safetensors")
            save_file({n: t.contiguous() for n, t in sd.items()}, path)
            ckpts.append(path)

        def run(group):
            out = os.path.join(tmp, f"g{group}.h5")
            t0 = time.perf_counter()
            subprocess.run([probe_bin(), "grad", "--model", onnx, "--data", f"imagefolder:{tree}",
                            "--batch", str(a.batch), "--ckpts-per-pass", str(group), "--out", out,
                            "--force", "--quiet", "--ckpt", *ckpts],
                           check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0, rows(out)

        times = {1: [], a.k: []}
        results = {}
        for _ in range(a.repeat):
            for g in times:
                t, r = run(g)
                times[g].append(t)
                results[g] = r
        same = results[1].keys() == results[a.k].keys() and all(
            np.array_equal(results[1][n], results[a.k][n], equal_nan=results[1][n].dtype.kind == "f")
            for n in results[1])
    n = info["fmnist"] + info["photos"]
    print(f"{n} images, {a.k} checkpoints, batch {a.batch}, {os.cpu_count()} cores, "
          f"{a.repeat} runs each (median [min, max] s, whole process)")
    med = {g: statistics.median(ts) for g, ts in times.items()}
    for g, ts in times.items():
        print(f"--ckpts-per-pass {g:<3d} {med[g]:7.2f} [{min(ts):.2f}, {max(ts):.2f}]")
    print(f"one pass / {a.k} passes: {med[a.k] / med[1]:.2f}; rows identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
