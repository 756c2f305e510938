"""Export probe's models (models/zoo.py) to ONNX the way probe expects them, and check the result.

Why this exact exporter call: probe maps checkpoint tensors to ONNX initializers by name, so every
parameter and buffer must survive as an initializer named as in `model.state_dict()`.
`dynamo=True, optimize=False` does that; the default `optimize=True` folds eval-mode BatchNorm
into Conv and the `bn.*` names vanish (see shared/export.md). The batch dimension is dynamic ("N"),
everything else is fixed (the GPT's T=32 included).

After each export the file is re-read with its external data, run through onnx.checker, and a
report is printed: op-type census, initializer names vs state-dict names, value_info (shapes of
intermediate values) and which dims are symbolic.

    .venv/bin/python models/export.py                       # mlp, resnet, gpt into models/
    .venv/bin/python models/export.py --which resnet101 --out /tmp/r101 --with-ckpt
"""
import argparse
import collections
import os
import sys
import time

import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402


def export_onnx(model, x, path):
    """The one export call used for every model (eval mode, dynamic batch, nothing folded)."""
    model.eval()
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=True,
        optimize=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("N")},),
    )


def _shape(t):
    """'[N,1,28,28]' for a ValueInfoProto; symbolic dims print as their name, unknown as '?'."""
    tt = t.type.tensor_type
    if not t.type.HasField("tensor_type"):
        return f"<{t.type.WhichOneof('value')}>"
    if not tt.HasField("shape"):
        return "<no shape>"
    dims = [d.dim_param if d.HasField("dim_param") else (str(d.dim_value) if d.HasField("dim_value") else "?")
            for d in tt.shape.dim]
    return "[" + ",".join(dims) + "]"


def check(path, state_dict):
    """Re-read `path` with external data, validate it and print what the Rust side relies on."""
    onnx.checker.check_model(path, full_check=False)  # path form: external data is followed
    m = onnx.load(path)  # load_external_data=True by default
    g = m.graph
    census = collections.Counter(n.op_type for n in g.node)
    print(f"  opset: {[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}"
          f", nodes: {len(g.node)}, local functions: {len(m.functions)}")
    print("  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(census.items(), key=lambda kv: (-kv[1], kv[0]))))

    inits = {i.name: i for i in g.initializer}
    bare = onnx.load(path, load_external_data=False).graph.initializer
    ext = sum(1 for i in bare if i.data_location == onnx.TensorProto.EXTERNAL)
    sd = set(state_dict)
    print(f"  initializers: {len(inits)} ({ext} in external data, {len(inits) - ext} inline), "
          f"state_dict entries: {len(sd)}")
    missing, extra = sorted(sd - set(inits)), sorted(set(inits) - sd)
    if not missing and not extra:
        print("  initializer names == state_dict names: YES")
    else:
        nbt = [k for k in missing if k.endswith("num_batches_tracked")]
        other = [k for k in missing if k not in nbt]
        print(f"  initializer names == state_dict names: NO; state_dict-only: {len(nbt)} "
              f"*.num_batches_tracked (e.g. {nbt[:1]}; unused by an eval-mode graph, so dropped) "
              f"+ {len(other)} others {other[:5]}; onnx-only: {len(extra)} {extra[:5]}")
    # Values too, not just names: the export must carry the very tensors of the model.
    bad = [k for k in sd & set(inits)
           if not torch.equal(torch.from_numpy(onnx.numpy_helper.to_array(inits[k]).copy()),
                              state_dict[k].detach().cpu())]
    print(f"  initializer values == state_dict values: {'YES' if not bad else 'NO ' + str(bad)}")

    print("  inputs: " + ", ".join(f"{i.name}{_shape(i)} {onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type)}"
                                   for i in g.input))
    print("  outputs: " + ", ".join(f"{o.name}{_shape(o)}" for o in g.output))
    # value_info: which intermediate values come with a shape (the gradient builder's question).
    vi = {v.name: v for v in g.value_info}
    producer = {o: n.op_type for n in g.node for o in n.output if o}
    shaped = {k for k, v in vi.items() if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    sym = collections.Counter(d.dim_param for v in list(g.input) + list(g.output) + list(g.value_info)
                              if v.type.HasField("tensor_type")
                              for d in v.type.tensor_type.shape.dim if d.HasField("dim_param"))
    on_init = len(set(vi) & set(inits))
    on_nodes = set(vi) & set(producer)
    no_vi = collections.Counter(producer[o] for o in producer if o not in vi)
    no_shape = collections.Counter(producer.get(k, "?") for k in on_nodes - shaped)
    print(f"  value_info: {len(vi)} entries = {on_init} on initializers + {len(on_nodes)} on the "
          f"{len(producer)} node outputs; symbolic dims: {dict(sym)}")
    print(f"    node outputs without value_info, by producer: {dict(no_vi)}")
    print(f"    value_info with elem type but no shape, by producer: {dict(no_shape)}")
    for k in [k for k in vi if k in producer and k in shaped][:4]:
        print(f"    e.g. {k} ({producer[k]}): {_shape(vi[k])}")
    return census


def save_ckpt(model, path):
    """Initial weights as a PyTorch user would save them."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                   help="output folder (default: models/)")
    p.add_argument("--which", default="mlp,resnet,gpt",
                   help=f"comma-separated subset of {','.join(zoo.NAMES)} (resnet101 needs torchvision)")
    p.add_argument("--with-ckpt", action="store_true",
                   help="also write OUT/<name>.init.safetensors (the initial state dict)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name in a.which.split(","):
        name = name.strip()
        model = zoo.build(name)
        path = os.path.join(a.out, f"{name}.onnx")
        nparam = sum(p.numel() for p in model.parameters())
        print(f"== {name}: {nparam} parameters -> {path}")
        t0 = time.time()
        export_onnx(model, zoo.example_input(name), path)
        dt = time.time() - t0
        sizes = {f: os.path.getsize(f) for f in (path, path + ".data") if os.path.exists(f)}
        print(f"  export took {dt:.1f} s; " + ", ".join(f"{os.path.basename(f)} {s / 1e6:.3f} MB"
                                                         for f, s in sizes.items()))
        check(path, model.state_dict())
        if a.with_ckpt:
            ck = os.path.join(a.out, f"{name}.init.safetensors")
            save_ckpt(model, ck)
            print(f"  checkpoint: {ck} ({os.path.getsize(ck) / 1e6:.3f} MB)")


if __name__ == "__main__":
    main()
