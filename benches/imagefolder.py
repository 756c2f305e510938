"""Benchmark: decoding + the ImageNet evaluation transform, images/s, probe against torchvision.

One tree of real images (models/imagefolder_reference.py's: the scikit-learn / scikit-image
photographs, 300x200 to 1411x1411, and Fashion-MNIST written as JPEG/PNG at 28x28 to 500x700, in
`--copies` copies), read through Resize(256), CenterCrop(224), ToTensor, Normalize by:
- probe: `probe eval --data imagefolder:DIR:workers=K` on a model that costs next to nothing (a
  global average pool and a 3->10 linear layer), so the pass time (the results file's /seconds)
  is the decoding and the transform; K = 1 and K = all cores.
- torchvision: `DataLoader(ImageFolder(DIR, transform), batch_size=B)` iterated to the end, with
  num_workers = 0 (the main process alone: one core) and num_workers = all cores.
Same images, same run, same machine; each number is the best of `--repeat` runs (the machine is
shared). Output: a table of images/s, images/s per core, and for probe images/s over its whole
process (start-up, model load and session included; torchvision's column repeats its loop rate).

    .venv/bin/python benches/imagefolder.py [--copies 8] [--batch 64] [--repeat 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import h5py
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
from export import export_onnx  # noqa: E402


def probe_bin():
    return os.environ.get("PROBE_BIN", os.path.join(ROOT, "target", "release", "probe"))


def tiny_model(path):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    export_onnx(m, torch.randn(2, 3, 224, 224), path)


def probe_rate(tree, model, workers, batch, tmp):
    out = os.path.join(tmp, f"r{workers}.h5")
    t0 = time.perf_counter()
    subprocess.run([probe_bin(), "eval", "--model", model, "--data", f"imagefolder:{tree}:workers={workers}",
                    "--batch", str(batch), "--threads", "1", "--out", out, "--force"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with h5py.File(out) as f:
        n = int(f["samples"][0])
        return n / float(f["seconds"][0]), n / wall


def torch_rate(tree, workers, batch):
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dl = torch.utils.data.DataLoader(ImageFolder(tree, tf), batch_size=batch, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in dl)
    r = n / (time.perf_counter() - t0)
    return r, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "imagenet")
        info = subprocess.run([sys.executable, os.path.join(ROOT, "models", "imagefolder_reference.py"), "tree",
                               tree, "--photos", os.path.join(ROOT, "data", "cache", "photos"),
                               "--copies", str(a.copies)], check=True, capture_output=True, text=True).stdout
        info = json.loads(info)
        model = os.path.join(tmp, "gap.onnx")
        tiny_model(model)
        readers = [
            ("probe, workers=1", lambda: probe_rate(tree, model, 1, a.batch, tmp), 1),
            (f"probe, workers={cores}", lambda: probe_rate(tree, model, cores, a.batch, tmp), cores),
            ("torchvision DataLoader, num_workers=0", lambda: torch_rate(tree, 0, a.batch), 1),
            (f"torchvision DataLoader, num_workers={cores}", lambda: torch_rate(tree, cores, a.batch), cores),
        ]
        # Interleaved (one run of each reader per round), so a drift in the machine's load
        # touches every reader alike.
        runs = [[] for _ in readers]
        for _ in range(a.repeat):
            for i, (_, fn, _) in enumerate(readers):
                runs[i].append(fn())
        rows = []
        for (label, _, k), rs in zip(readers, runs):
            best, whole = max(r for r, _ in rs), max(w for _, w in rs)
            rows.append((label, best, best / k, whole))
    n = info["fmnist"] + info["photos"]
    print(f"{n} images ({info['photos']} photographs, {info['fmnist']} Fashion-MNIST re-encodings), "
          f"batch {a.batch}, {cores} cores, best of {a.repeat}")
    print(f"{'reader':44s} {'images/s':>9s} {'per core':>9s} {'process':>9s}")
    for label, r, per, whole in rows:
        print(f"{label:44s} {r:9.1f} {per:9.1f} {whole:9.1f}")


if __name__ == "__main__":
    main()
