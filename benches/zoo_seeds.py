"""How often the zoo's rule holds for one model over other draws of its weights and data: seeds
0..S-1 (seed 0 is benches/zoo.py's own case; models/zoo_models.py's prepare(seed=)), the same
export, two checkpoints each. The rule (benches/zoo.py): the worst per-tensor error from
PyTorch float64 within 2x of PyTorch float32's own, or 1e-5.

Where a model's gradient hangs on a value within float32's rounding of a kink (a ReLU input
1e-8 from zero, two maxima of a max-pool window 1e-9 apart), which side a float32 computation
lands on is chance, and one such flip moves the worst tensor by 1e-5 to 1e-2. The rule then
compares two draws: PyTorch float32's (batch 16, the reference) and probe's. This counts, per
seed and checkpoint, whether each candidate meets it:
  probe:<label>   `probe grad` as benches/zoo.py runs it (batches of 6), with each --variant's
                  flags (default: the default engine, and --standard-ops)
  pytorch-b6      PyTorch float32 itself, in probe's batches of 6 on one thread: the same
                  maths as the reference, other float32 roundings
and how often PyTorch float32's own error is over 1e-5 (it flipped one).

    .venv/bin/python benches/zoo_seeds.py googlenet --seeds 17
    .venv/bin/python benches/zoo_seeds.py resnet50-narrow --seeds 21 --variant default= \\
        --variant std=--standard-ops
Seeds are cached beside the zoo's own (target/zoo/<name>-<hash>-seed<k>); a new seed costs its
references (~15 s for resnet50-narrow, ~45 s for googlenet, 2 cores).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
import zoo_models  # noqa: E402
from hf_reference import floor_of, rel  # noqa: E402

# As benches/zoo.py runs probe (models/zoo.py, on the path first, is another module).
PROBE = os.environ.get("PROBE_BIN", os.path.join(ROOT, "target", "release", "probe"))
BATCH = 6


def probe_rows(d, flags, out):
    """probe grad on the cached case `d`: zoo_models.compare's rows, one per checkpoint."""
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    args = [PROBE, "grad", "--model", os.path.join(d, "m.onnx"), "--ckpt",
            *[os.path.join(d, c) for c in meta["checkpoints"]], "--data", os.path.join(d, "data.h5"),
            "--batch", str(BATCH), "--save-grad", "--out", out, "--force", "--quiet", *flags]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    c = zoo_models.compare(d, out)
    return [(r["worst"], r["bound"]) for r in c["rows"]]


def pytorch_rows(name, d):
    """PyTorch float32's gradient of the mean cross-entropy summed over batches of BATCH, one
    thread, against the reference: (worst, bound) per checkpoint."""
    import h5py
    from safetensors import safe_open
    from safetensors.torch import load_file

    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    with h5py.File(os.path.join(d, "data.h5"), "r") as f:
        x, y = torch.from_numpy(f["x"][()]), torch.from_numpy(f["y"][()])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    for k, ck in enumerate(meta["checkpoints"]):
        with safe_open(os.path.join(d, f"ref-{k}.safetensors"), "np") as r:
            ref = {n: r.get_tensor(n) for n in r.keys() if n != "loss"}
            f32_error = float(r.metadata()["f32_error"])
        m = zoo_models.build(name)
        m.load_state_dict(load_file(os.path.join(d, ck)), strict=False)
        n = y.numel()
        for i in range(0, x.shape[0], BATCH):
            out = zoo_models.logits_of(m, x[i:i + BATCH])
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]).double(), y[i:i + BATCH].reshape(-1),
                                   reduction="sum") / n
            loss.backward()
        g = {p: (t.grad if t.grad is not None else torch.zeros_like(t)).double().numpy()
             for p, t in m.named_parameters(remove_duplicate=False)}
        floor = floor_of(list(ref.values()))
        rows.append((max(rel(g[p], ref[p], floor) for p in ref), max(2 * f32_error, 1e-5), f32_error))
    torch.set_num_threads(threads)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--seeds", type=int, default=9, help="seeds 0..S-1 (default 9)")
    p.add_argument("--variant", action="append", metavar="LABEL=FLAGS",
                   help="a probe run: its label and its extra flags, space-separated (repeatable; "
                        "default: default= and std=--standard-ops)")
    p.add_argument("--cache", default=os.path.join(ROOT, "target", "zoo"))
    a = p.parse_args()
    if a.name not in zoo_models.ZOO:
        raise SystemExit(f"unknown model {a.name}; the zoo: {' '.join(zoo_models.NAMES)}")
    variants = [v.split("=", 1) for v in (a.variant or ["default=", "std=--standard-ops"])]
    torch.set_num_threads(2)
    labels = [f"probe:{v[0]}" for v in variants] + ["pytorch-b6"]
    over = {lab: 0 for lab in labels}
    own_flips, cases = 0, 0
    print("| seed | checkpoint | PyTorch f32's own | " + " | ".join(labels) + " |")
    print("|---|---|---|" + "---|" * len(labels))
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(a.seeds):
            d = zoo_models.prepare(a.name, a.cache, seed=s)
            cols = [probe_rows(d, flags.split(), os.path.join(tmp, "g.h5")) for _, flags in variants]
            pt = pytorch_rows(a.name, d)
            cols.append([(w, b) for w, b, _ in pt])
            for k, tag in enumerate(zoo_models.CHECKPOINTS):
                cases += 1
                own_flips += pt[k][2] > 1e-5
                cells = []
                for lab, col in zip(labels, cols):
                    w, b = col[k]
                    over[lab] += w > b
                    cells.append(f"{w:.1e}{' OVER' if w > b else ''}")
                print(f"| {s} | {tag} | {pt[k][2]:.1e} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{a.name}, {cases} cases ({a.seeds} seeds x {len(zoo_models.CHECKPOINTS)} checkpoints): "
          f"PyTorch float32's own error over 1e-5 in {own_flips}; over the rule's bound: "
          + ", ".join(f"{lab} {n}" for lab, n in over.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
