"""Read a probe results file (HDF5) into a pandas table: one row per checkpoint.

    .venv/bin/python examples/read_results.py runs/demo.h5

The layout is described in docs/schema.md. Two things a reader must do, both shown below:
  - honour the `rows` attribute: only the first `rows` entries of each per-checkpoint dataset are
    complete (a run killed mid-write can leave one more, which probe trims on its next run);
  - tell per-checkpoint datasets (resizable first axis, one entry per row) from datasets written
    once (fixed size, e.g. /params/name).
Scalar per-checkpoint datasets become columns (step, loss, accuracy, samples first, the checkpoint
path last); per-checkpoint tensors (e.g. grad/per_param_l2) are left out of the table.
"""
import sys

import h5py
import pandas as pd

FIRST = ["step", "loss", "accuracy", "samples"]


def read(path):
    """(table, attributes) of a results file; the table has exactly `rows` rows."""
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        rows = int(attrs.get("rows", 0))
        cols = {}

        def visit(name, obj):
            per_row = isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,)
            if per_row and obj.ndim == 1:
                data = obj.asstr()[:rows] if h5py.check_string_dtype(obj.dtype) else obj[:rows]
                key = "step" if name == "checkpoints/step" else name
                key = "checkpoint" if key == "checkpoints/path" else key
                cols[key] = data

        f.visititems(visit)
    table = pd.DataFrame(cols)
    order = [c for c in FIRST if c in table] + sorted(
        c for c in table if c not in FIRST and c not in ("checkpoint", "checkpoints/sha256")
    ) + [c for c in ("checkpoint",) if c in table]
    return table[order], attrs


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    table, attrs = read(sys.argv[1])
    print(f"{sys.argv[1]}: probe {attrs.get('command')} of {attrs.get('model_path')} on "
          f"{attrs.get('data')} ({attrs.get('data_samples')} samples, loss {attrs.get('loss')}); "
          f"{attrs.get('rows')} rows, complete={attrs.get('complete')}")
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.6f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
