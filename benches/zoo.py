"""The model zoo (models/zoo_models.py): every architecture, or the named ones, through
`probe grad --save-grad` at two checkpoints (the initial weights and two SGD steps later, saved as
the library's users save them), compared per tensor with PyTorch float64 autograd; prints a
markdown table.

    .venv/bin/python benches/zoo.py                     # the whole zoo
    .venv/bin/python benches/zoo.py resnet18 gpt2       # named models
    .venv/bin/python benches/zoo.py --train             # also probe train on five models
    .venv/bin/python benches/zoo.py --json out.json     # the numbers, for tools

Status per model:
  exact    probe's worst per-tensor relative L2 error (at both checkpoints) is within 2x of
           PyTorch float32's own error from float64 measured the same way, or <= 1e-5, and its
           loss within 2x of PyTorch float32's (or 1e-6 relative)
  OFF      probe gave a gradient, and it is not PyTorch's: the worst tensor is named. This is
           the outcome that must never pass unnoticed; the run exits 1 when any model is off.
  refused  probe exited 3 with its one-line reason (an op without a rule, a checkpoint that
           does not fit, ...): nothing wrong was reported, the model is not supported yet
  FAILED   the export or the reference failed in Python, or probe exited otherwise (a crash is
           a bug too); the run exits 1
Exports, checkpoints and references are cached under target/zoo/ by a hash of the model's
name, config, builder source and library versions, so reruns only run probe (~1-8 s a model).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
import zoo_models  # noqa: E402

PROBE = os.environ.get("PROBE_BIN", os.path.join(ROOT, "target", "release", "probe"))
BATCH = 6  # 16 samples: batches of 6, 6, 4 (the f64 sum over batches is exercised)
TRAIN = [  # (model, optimizer flags): probe train against torch.optim
    ("resnet18", ["--opt", "sgd", "--lr", "0.01", "--momentum", "0.9", "--weight-decay", "5e-4"]),
    ("vit-small", ["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"]),
    ("deit_tiny", ["--opt", "sgd", "--lr", "0.01", "--momentum", "0.9"]),
    ("gpt2", ["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.01"]),
    ("llama", ["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.01"]),
]
TRAIN_STEPS, TRAIN_BATCH = 3, 8


def reason(stderr):
    """probe's error line without its prefix and the cache folder's path."""
    lines = [l for l in stderr.splitlines() if l.startswith("probe: error:")]
    line = lines[-1] if lines else (stderr.strip().splitlines() or ["(no output)"])[-1]
    line = line.removeprefix("probe: error: ")
    line = re.sub(r"\S*/target/zoo/[^/\s]+/", "", line)

    def nodes(m):  # "at 'a', 'b', 'c'" -> "at 'a' and 2 more": the table names ops, not nodes
        names = re.findall(r"'[^']*'", m.group(0))
        return f"at {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
    return re.sub(r"at '[^']*'(?:, '[^']*')*", nodes, line)


def grad(name, cache, out_dir):
    """One model: prepare (cached), probe grad, compare. A dict for the table."""
    row = {"model": name, "library": zoo_models.ZOO[name].library}
    try:
        d = zoo_models.prepare(name, cache)
    except Exception as e:  # an export the exporter cannot do is the zoo's finding, not a crash
        msg = str(e).strip().splitlines()
        row.update(status="FAILED", reason=f"prepare: {type(e).__name__}: {msg[0] if msg else ''}"[:300])
        return row
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    row["params"] = meta["params"]
    h5 = os.path.join(out_dir, f"{name}.h5")
    args = [PROBE, "grad", "--model", os.path.join(d, "m.onnx"), "--ckpt",
            *[os.path.join(d, c) for c in meta["checkpoints"]], "--data", os.path.join(d, "data.h5"),
            "--batch", str(BATCH), "--save-grad", "--out", h5, "--force", "--quiet"]
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True)
    row["seconds"] = time.time() - t0
    if p.returncode == 3:
        row.update(status="refused", reason=reason(p.stderr))
        return row
    if p.returncode != 0:
        row.update(status="FAILED", reason=f"probe exit {p.returncode}: {reason(p.stderr)}")
        return row
    c = zoo_models.compare(d, h5)
    row.update(worst=c["worst"], f32_error=c["f32_error"], tensor=c["tensor"],
               loss_error=max(r["loss_error"] for r in c["rows"]),
               status="exact" if c["exact"] else "OFF", reason="; ".join(c["problems"]))
    if not c["exact"] and not row["reason"]:
        bad = [f"{zoo_models.CHECKPOINTS[k]}: {r['tensor']} {r['worst']:.1e} (bound {r['bound']:.1e}"
               f"{'; ' + r['where'] if r['where'] else ''}), "
               f"loss {r['loss_error']:.1e} (bound {r['loss_bound']:.1e})"
               for k, r in enumerate(c["rows"])
               if r["worst"] > r["bound"] or r["loss_error"] > r["loss_bound"]]
        row["reason"] = "; ".join(bad)
    return row


def train(name, flags, cache, out_dir):
    """probe train TRAIN_STEPS steps, then the same steps in PyTorch (float64 and float32)."""
    d = zoo_models.prepare(name, cache)
    run = os.path.join(out_dir, f"train-{name}")
    args = [PROBE, "train", "--model", os.path.join(d, "m.onnx"), "--data", os.path.join(d, "data.h5"),
            "--steps", str(TRAIN_STEPS), "--batch", str(TRAIN_BATCH), "--no-shuffle", "--threads", "1",
            "--out", run, "--quiet", *flags]
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True)
    row = {"model": name, "flags": " ".join(flags), "seconds": time.time() - t0}
    if p.returncode != 0:
        row.update(status="refused" if p.returncode == 3 else "FAILED",
                   reason=f"exit {p.returncode}: {reason(p.stderr)}")
        return row
    ns = argparse.Namespace(dir=d, init=os.path.join(run, "step-00000000.safetensors"),
                            probe_ckpt=os.path.join(run, f"step-{TRAIN_STEPS:08d}.safetensors"),
                            steps=TRAIN_STEPS, batch=TRAIN_BATCH, threads=1, momentum=None,
                            weight_decay=None, lr=1e-3, opt="sgd")
    it = iter(flags)
    for f in it:
        v = next(it)
        setattr(ns, f[2:].replace("-", "_"), v if f == "--opt" else float(v))
    c = zoo_models.train_compare(ns)
    row.update(c, status="exact" if c["exact"] else "OFF")
    return row


def fmt(x):
    return "" if x is None else f"{x:.1e}"


def table(rows):
    out = ["| model | library | params | status | probe's error | PyTorch f32's | ratio | loss error | probe s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        why = r.get("reason") or ""
        why = why if len(why) <= 240 else why[:240] + "..."  # the whole line is in --json
        status = r["status"] + (f": {why}" if why else "")
        ratio = f"{r['worst'] / r['f32_error']:.2f}" if r.get("worst") is not None and r.get("f32_error") else ""
        out.append(f"| {r['model']} | {r['library']} | {r.get('params', ''):,} | {status} | "
                   f"{fmt(r.get('worst'))} | {fmt(r.get('f32_error'))} | {ratio} | "
                   f"{fmt(r.get('loss_error'))} | {r.get('seconds', 0):.1f} |"
                   if r.get("params") is not None else
                   f"| {r['model']} | {r['library']} | | {status} | | | | | |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"models (default: all {len(zoo_models.NAMES)})")
    p.add_argument("--cache", default=os.path.join(ROOT, "target", "zoo"))
    p.add_argument("--train", action="store_true", help="also probe train on " +
                   ", ".join(n for n, _ in TRAIN) + " against torch.optim")
    p.add_argument("--no-grad", action="store_true", help="only the --train part")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    import torch

    torch.set_num_threads(2)
    names = a.names or zoo_models.NAMES
    unknown = [n for n in names if n not in zoo_models.ZOO]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; the zoo: {' '.join(zoo_models.NAMES)}")
    rows, trains = [], []
    with tempfile.TemporaryDirectory() as out_dir:
        if not a.no_grad:
            for n in names:
                t0 = time.time()
                r = grad(n, a.cache, out_dir)
                print(f"{n}: {r['status']} {r.get('reason', '')} ({time.time() - t0:.1f} s)",
                      file=sys.stderr, flush=True)
                rows.append(r)
        if a.train:
            for n, flags in TRAIN:
                r = train(n, flags, a.cache, out_dir)
                print(f"train {n}: {r['status']} {r.get('reason', '')}", file=sys.stderr, flush=True)
                trains.append(r)
    if rows:
        print(table(rows))
        counts = {s: sum(r["status"] == s for r in rows) for s in ["exact", "OFF", "refused", "FAILED"]}
        print(f"\n{len(rows)} models: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if trains:
        print("\n| model | optimizer | status | probe's error | PyTorch f32's | probe s |\n|---|---|---|---|---|---|")
        for r in trains:
            print(f"| {r['model']} | {r['flags']} | {r['status']} {r.get('reason', '')} | "
                  f"{fmt(r.get('worst'))} | {fmt(r.get('f32_error'))} | {r['seconds']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"grad": rows, "train": trains}, f, indent=1)
    bad = [r["model"] for r in rows + trains if r["status"] in ("OFF", "FAILED")]
    if bad:
        print(f"\nNOT PYTORCH'S GRADIENT OR FAILED: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
