"""What ONNX Runtime holds at the peak of one run of probe's gradient graph: the bytes of every
value alive after each node, in the order the run took, from the graph as ONNX Runtime ran it
(PROBE_ORT_OPTIMIZED=PREFIX writes PREFIX-gradient.onnx) and its profile of the same process
(PROBE_ORT_PROFILE=PREFIX: each node's output shapes, and the order):

    PROBE_ORT_OPTIMIZED=/tmp/m/o PROBE_ORT_PROFILE=/tmp/m/p target/release/probe grad ... --limit 96
    .venv/bin/python benches/live_memory.py /tmp/m/o-gradient.onnx /tmp/m/p-gradient_*.json

A value lives from its node to its last reader (graph outputs to the end); Reshape, Squeeze,
Unsqueeze, Flatten and Identity outputs share their input's buffer. Prints the peak, what is
alive there by producing op type (forward or backward), and the largest values with their
readers. This is the live set only: ONNX Runtime's arena holds it plus its own rounding and
free blocks, and the process adds the checkpoint, the float64 sums and the libraries.
(How this found the gradient graph's schedule problem: see the README's speed section.)
"""
import argparse
import collections
import json

import onnx

ALIAS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
WIDTH = {"double": 8, "int64": 8, "float": 4, "int32": 4, "float16": 2}


def nbytes(type_shape):
    (dtype, shape), = type_shape.items()
    n = 1
    for d in shape:
        n *= d
    return n * WIDTH.get(dtype, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graph", help="the optimized graph (PROBE_ORT_OPTIMIZED's -gradient.onnx)")
    p.add_argument("profile", help="the profile of the same graph (PROBE_ORT_PROFILE's -gradient_*.json)")
    p.add_argument("--run", type=int, default=1, help="which run (batch) of the profile (default 1: the second)")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    g = onnx.load(a.graph, load_external_data=False).graph
    nodes = {n.name: n for n in g.node}
    ev = json.load(open(a.profile))
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev
                  if e.get("cat") == "Session" and e["name"] == "model_run")
    lo, hi = runs[a.run]
    timed = sorted((e for e in ev if e.get("cat") == "Node" and lo <= e["ts"] <= hi
                    and e["name"].endswith("_kernel_time")), key=lambda e: e["ts"])
    order, size = [], {}
    for e in timed:
        n = nodes.get(e["name"][: -len("_kernel_time")])
        if n is None:
            continue
        order.append(n)
        for o, ts in zip(n.output, e["args"].get("output_type_shape", [])):
            if o:
                size[o] = nbytes(ts)
    root = {}

    def buf(v):
        while v in root:
            v = root[v]
        return v

    for n in order:
        if n.op_type in ALIAS and n.input[0] in size:
            root[n.output[0]] = n.input[0]
    first, last, readers = {}, {}, collections.defaultdict(list)
    for i, n in enumerate(order):
        for o in n.output:
            if o and buf(o) == o:
                first[o] = i
        for v in n.input:
            if v:
                last[buf(v)] = i
                readers[buf(v)].append(n.name)
    for o in g.output:
        last[buf(o.name)] = len(order)
    change = collections.defaultdict(int)
    for v, i in first.items():
        change[i] += size.get(v, 0)
        change[last.get(v, i) + 0.5] -= size.get(v, 0)
    live, peak, at = 0, 0, 0
    for t in sorted(change):
        live += change[t]
        if live > peak:
            peak, at = live, t
    at = int(at)
    print(f"peak {peak / 1e6:.0f} MB live after node {at} of {len(order)} ({order[at].name})")
    alive = sorted(((size.get(v, 0), v) for v, i in first.items() if i <= at <= last.get(v, i)), reverse=True)
    made = {o: n for n in order for o in n.output}
    by_op = collections.Counter()
    for s, v in alive:
        n = made[v]
        by_op[n.op_type + (" (bwd)" if n.name.startswith("grad") else "")] += s
    print("by op: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in by_op.most_common(10)))
    for s, v in alive[: a.top]:
        print(f"{s / 1e6:8.0f} MB  {v}  ({made[v].op_type}, node {first[v]}, read by {readers[v][-3:]})")


if __name__ == "__main__":
    main()
