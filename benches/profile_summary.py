"""Summarizes ONNX Runtime profiles that probe wrote (PROBE_ORT_PROFILE=PREFIX, one JSON file per
session): time per op type, split into the forward graph and the backward part ("grad/..."
nodes, which probe's autodiff names so), per batch, and the share spent in GEMM and convolution
kernels against everything else (elementwise ops, reductions, copies, layout changes).

    PROBE_ORT_PROFILE=/tmp/p/resnet target/release/probe grad ... --limit 128
    .venv/bin/python benches/profile_summary.py /tmp/p/resnet-gradient_*.json [--skip-first 1] [--top 15]

--skip-first K leaves out each session's first K runs (the first batch allocates and picks
kernels). Only sessions that ran at least one batch after that are counted.
"""
import argparse
import collections
import json

# GEMM and convolution kernels, standard and probe's own (domain probe.cpu, src/runtime/cpu_ops/).
HEAVY = {"Conv", "ConvTranspose", "ConvGrad", "ConvGradX", "FusedConv", "MatMul", "Gemm",
         "FusedMatMul", "MatMulAdd", "Attention", "ScaledDotProductAttention",
         "ScaledDotProductAttentionGrad"}


def summarize(path, skip, top):
    ev = json.load(open(path))
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("cat") == "Session" and e["name"] == "model_run")
    kept = runs[skip:]
    if not kept:
        return None
    inside = lambda ts: any(a <= ts <= b for a, b in kept)
    fwd, bwd = collections.Counter(), collections.Counter()
    for e in ev:
        if e.get("cat") != "Node" or not inside(e["ts"]):
            continue
        op = e["args"].get("op_name", "?")
        (bwd if e["name"].startswith("grad/") else fwd)[op] += e["dur"]
    nb = len(kept)
    total_node = sum(fwd.values()) + sum(bwd.values())
    run_ms = sum(b - a for a, b in kept) / nb / 1e3
    heavy = sum(v for k, v in fwd.items() if k in HEAVY) + sum(v for k, v in bwd.items() if k in HEAVY)
    print(f"\n{path}: {nb} batches counted, {run_ms:.1f} ms a batch (nodes {total_node / nb / 1e3:.1f} ms: "
          f"forward {sum(fwd.values()) / nb / 1e3:.1f}, backward {sum(bwd.values()) / nb / 1e3:.1f}); "
          f"GEMM/conv kernels {100 * heavy / max(total_node, 1):.0f}%, others {100 - 100 * heavy / max(total_node, 1):.0f}%")
    allops = collections.Counter()
    for k, v in fwd.items():
        allops[("fwd", k)] += v
    for k, v in bwd.items():
        allops[("bwd", k)] += v
    print("| part | op | ms a batch | share |")
    print("|---|---|---|---|")
    shown = 0
    for (part, op), v in allops.most_common():
        if shown >= top:
            break
        print(f"| {part} | {op} | {v / nb / 1e3:.2f} | {100 * v / max(total_node, 1):.1f}% |")
        shown += 1
    rest = sum(v for _, v in allops.most_common()[top:])
    if rest:
        print(f"| | others ({len(allops) - top} op types) | {rest / nb / 1e3:.2f} | {100 * rest / max(total_node, 1):.1f}% |")
    return run_ms


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--skip-first", type=int, default=1)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    for f in a.files:
        summarize(f, a.skip_first, a.top)


if __name__ == "__main__":
    main()
