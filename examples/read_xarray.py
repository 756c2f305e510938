"""Read a probe results file with xarray: labelled arrays, no glue code (schema version 3).

    .venv/bin/python examples/read_xarray.py runs/demo/grad.h5 [loss.png]

xarray reads the HDF5 file through h5netcdf (both installed in .venv by setup.sh). Every axis in
the file is a named dimension (docs/schema.md, "Dimensions"): `step`, the rows, whose coordinate
is the training step; `param`, whose coordinate is the parameter names; `quantile` (the levels
j/256), `bin` and `bin_edge` of the weight histograms. `xr.open_dataset` reads the root group
(loss, accuracy, ...); `xr.open_datatree` reads every group, each seeing the root's `step` and
`param` coordinates. Files of schema version 2 and older open too, but with unnamed axes
(`phony_dim_N`) and no `step` coordinate: read those with examples/read_results.py.
"""
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import xarray as xr  # noqa: E402


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    path = sys.argv[1]
    ds = xr.open_dataset(path, engine="h5netcdf")
    # Rows are in the order the checkpoints were evaluated: sort by step to draw lines.
    print(ds.sortby("step")[["loss"]].to_dataframe().to_string())
    dt = xr.open_datatree(path, engine="h5netcdf")
    if "grad" in dt.children:
        per = dt["grad"].per_param_l2.sortby("step")  # dims (step, param)
        print("\n|g| per parameter tensor:")
        print(per.to_pandas().to_string())
        first = str(dt["param"].values[0])
        print(f"\n|g| of {first}:", per.sel(param=first).values)
    if "analysis" in dt.children:
        print("\nprobe analyze's series:")
        print(dt["analysis/series"].to_dataset()[["first", "last", "slope"]].to_dataframe())
    if len(sys.argv) == 3:
        lines = ds.sortby("step").loss.plot(x="step", marker="o")
        lines[0].figure.savefig(sys.argv[2])
        print("wrote", sys.argv[2])


if __name__ == "__main__":
    main()
