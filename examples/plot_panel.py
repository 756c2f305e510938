"""Redraw one panel of `probe plot` with h5py and matplotlib: a column of a results file against step.

    .venv/bin/python examples/plot_panel.py runs/demo/grad.h5 grad.png            # |g| vs step
    .venv/bin/python examples/plot_panel.py runs/demo/grad.h5 loss.png --column loss

The layout is in docs/schema.md. What a reader must do, shown below: read only the first `rows`
entries (the `rows` attribute counts complete rows), and sort by step (rows are in the order the
checkpoints were evaluated, which `--shard` runs need not keep). If `probe analyze` has run on the
file, its fitted trend over the last half (/analysis/series) is drawn too.
"""
import argparse

import h5py
import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("out", help="the figure (.png, .svg, .pdf)")
    ap.add_argument("--column", default="grad/l2", help="a per-checkpoint dataset (default grad/l2)")
    args = ap.parse_args()

    with h5py.File(args.results, "r") as f:
        rows = int(f.attrs["rows"])
        step = f["checkpoints/step"][:rows]
        y = f[args.column][:rows].astype(float)
        trend = None
        if "analysis/series/name" in f:
            names = list(f["analysis/series/name"].asstr()[:])
            if args.column in names:
                i = names.index(args.column)
                s = f["analysis/series"]
                trend = (s["slope"][i], s["intercept"][i], s["half_step_first"][i], s["half_step_last"][i])
    order = np.argsort(step, kind="stable")
    step, y = step[order], y[order]

    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(step, y, "o-", ms=3, lw=1.5, label=args.column)
    if trend is not None and np.isfinite(trend[0]):
        slope, intercept, a, b = trend
        xs = np.array([a, b], dtype=float)
        ax.plot(xs, intercept + slope * xs, "--", color="C3", label="OLS trend, last half")
    if np.all(y[np.isfinite(y)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(args.column)
    ax.set_title(f"{args.column} vs step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}: {rows} checkpoints")


if __name__ == "__main__":
    main()
