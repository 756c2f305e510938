//! Reading a results file written by `probe grad` for analysis and plotting: checked once on
//! opening (an HDF5 file, `command = grad`, at least `min_rows` complete rows), then read by
//! column, only the first `rows` entries, missing columns as `None`.
use crate::error::input;
use crate::store::{read_i64_attr, read_str_attr};
use anyhow::Result;
use hdf5::types::VarLenUnicode;
use ndarray::{s, Array2};
use std::path::{Path, PathBuf};

pub struct Results {
    pub path: PathBuf,
    file: hdf5::File,
    pub schema_version: i64,
    /// Complete rows (the file's `rows` attribute).
    pub rows: usize,
    /// `/checkpoints/step` per row, in file order; the row index where no step is known.
    pub step: Vec<i64>,
    /// Whether `/checkpoints/step` held real steps (not all -1).
    pub steps_known: bool,
    /// Rows in step order (stable: rows of equal step stay in file order).
    pub order: Vec<usize>,
    /// `/params/name` (empty if absent).
    pub params: Vec<String>,
    /// The `weight_decay` attribute ("" without --weight-decay).
    pub weight_decay: String,
    /// The `optimizer` attribute (from the checkpoints' metadata; `sgd momentum=0.9`, `adamw`).
    pub optimizer: Option<crate::model::optimizer_meta::OptimizerMeta>,
    /// The `complete` attribute: 0 while `probe grad` is still writing, or after it failed.
    pub complete: bool,
}

impl Results {
    /// Opens `path` for reading and checks it is a `probe grad` file with at least `min_rows`
    /// complete rows. Every failure is an input error (exit 3) naming the file. A data shard
    /// (`--data-shard`: sums over part of the data, no means) is refused unless `allow_partial`.
    pub fn open(path: &Path, min_rows: usize, allow_partial: bool) -> Result<Results> {
        let name = path.display();
        if !path.is_file() {
            return Err(input(format!("{name}: no such file")));
        }
        let file = hdf5::File::open(path)
            .map_err(|e| input(format!("{name}: not an HDF5 file, or not readable ({e})")))?;
        let command = read_str_attr(&file, "command");
        if command.as_deref() != Some("grad") {
            return Err(input(match command {
                Some(c) => format!(
                    "{name}: written by `probe {c}`, not `probe grad`: analysis needs the gradient columns"
                ),
                None => format!("{name}: not a results file of `probe grad` (no `command` attribute)"),
            }));
        }
        if let (Some(shard), false) = (read_str_attr(&file, "data_shard"), allow_partial) {
            return Err(input(format!(
                "{name}: is data shard {shard} of a run (its rows hold sums over part of the data, not the full loss and gradient): \
                 merge the shards first (probe merge --out R.h5 FILES...), or pass --allow-partial to look at this one alone"
            )));
        }
        let schema_version = read_i64_attr(&file, "schema_version").unwrap_or(0);
        let rows = read_i64_attr(&file, "rows").unwrap_or(0).max(0) as usize;
        if rows < min_rows {
            return Err(input(format!(
                "{name}: holds {rows} complete checkpoint{}; this needs at least {min_rows} \
                 (run probe grad over more checkpoints)",
                if rows == 1 { "" } else { "s" }
            )));
        }
        let step: Vec<i64> = file
            .dataset("checkpoints/step")
            .and_then(|d| d.read_slice_1d::<i64, _>(s![..rows]))
            .map_err(|e| input(format!("{name}: cannot read /checkpoints/step ({e})")))?
            .to_vec();
        let steps_known = step.iter().any(|&s| s >= 0);
        let step: Vec<i64> = if steps_known {
            step
        } else {
            (0..rows as i64).collect()
        };
        let mut order: Vec<usize> = (0..rows).collect();
        order.sort_by_key(|&r| step[r]);
        let params = file
            .dataset("params/name")
            .and_then(|d| d.read_raw::<VarLenUnicode>())
            .map(|v| v.iter().map(|s| s.as_str().to_string()).collect())
            .unwrap_or_default();
        let weight_decay = read_str_attr(&file, "weight_decay").unwrap_or_default();
        let optimizer = read_str_attr(&file, "optimizer")
            .and_then(|s| crate::model::optimizer_meta::OptimizerMeta::parse_described(&s));
        let complete = read_i64_attr(&file, "complete") == Some(1);
        Ok(Results {
            complete,
            path: path.to_path_buf(),
            file,
            schema_version,
            rows,
            step,
            steps_known,
            order,
            params,
            weight_decay,
            optimizer,
        })
    }

    pub fn file(&self) -> &hdf5::File {
        &self.file
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.link_exists(name)
    }

    /// A per-row scalar column, file order, first `rows` entries, as f64 (integer columns
    /// converted); `None` if absent, unreadable or short.
    pub fn series(&self, name: &str) -> Option<Vec<f64>> {
        series(&self.file, name, self.rows)
    }

    /// A per-row, per-tensor column [rows, P].
    pub fn matrix(&self, name: &str) -> Option<Array2<f64>> {
        let ds = self.file.dataset(name).ok()?;
        if ds.ndim() != 2 || ds.shape()[0] < self.rows {
            return None;
        }
        if let Ok(v) = ds.read_slice_2d::<f64, _>(s![..self.rows, ..]) {
            return Some(v);
        }
        ds.read_slice_2d::<i64, _>(s![..self.rows, ..])
            .ok()
            .map(|v| v.mapv(|x| x as f64))
    }

    /// (P, L) of a per-row, per-tensor vector column [rows, P, L] holding every row.
    pub fn cube_shape(&self, name: &str) -> Option<(usize, usize)> {
        let sh = self.file.dataset(name).ok()?.shape();
        (sh.len() == 3 && sh[0] >= self.rows).then(|| (sh[1], sh[2]))
    }

    /// Tensor `p`'s slice [rows, L] of a per-row, per-tensor vector column (read one tensor at
    /// a time: the whole column can be large, e.g. quantiles of 300 tensors at 1000 rows).
    pub fn cube_param(&self, name: &str, p: usize) -> Option<Array2<f64>> {
        self.file
            .dataset(name)
            .ok()?
            .read_slice_2d::<f64, _>(s![..self.rows, p, ..])
            .ok()
    }

    /// Row `r`'s slice [P, L] of a per-row, per-tensor vector column.
    pub fn cube_row(&self, name: &str, r: usize) -> Option<Array2<f64>> {
        self.file
            .dataset(name)
            .ok()?
            .read_slice_2d::<f64, _>(s![r, .., ..])
            .ok()
    }

    /// Entries per parameter tensor: the sum of `/weights/hist/counts` over bins at the first
    /// row (every row counts the same entries). `None` without the histogram.
    pub fn entries(&self) -> Option<Vec<f64>> {
        let ds = self.file.dataset("weights/hist/counts").ok()?;
        if ds.ndim() != 3 || ds.shape()[0] < 1 {
            return None;
        }
        let c = ds.read_slice::<i64, _, ndarray::Ix2>(s![0, .., ..]).ok()?;
        Some(c.rows().into_iter().map(|r| r.sum() as f64).collect())
    }

    /// The learning rate per row from `/checkpoints/lr`, when it holds any finite value.
    pub fn lr(&self) -> Option<Vec<f64>> {
        self.series("checkpoints/lr")
            .filter(|v| v.iter().any(|x| x.is_finite()))
    }

    /// A column in step order.
    pub fn sorted(&self, v: &[f64]) -> Vec<f64> {
        self.order.iter().map(|&r| v[r]).collect()
    }

    /// Steps in step order, as f64.
    pub fn sorted_steps(&self) -> Vec<f64> {
        self.order.iter().map(|&r| self.step[r] as f64).collect()
    }
}

/// Dataset `name` of `file` as a per-row scalar column: its first `rows` entries as f64 (integer
/// columns converted); `None` if absent, not 1-D, unreadable or shorter than `rows`.
pub fn series(file: &hdf5::File, name: &str, rows: usize) -> Option<Vec<f64>> {
    let ds = file.dataset(name).ok()?;
    if ds.ndim() != 1 || ds.shape()[0] < rows {
        return None;
    }
    if let Ok(v) = ds.read_slice_1d::<f64, _>(s![..rows]) {
        return Some(v.to_vec());
    }
    ds.read_slice_1d::<i64, _>(s![..rows])
        .ok()
        .map(|v| v.iter().map(|&x| x as f64).collect())
}
