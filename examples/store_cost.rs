//! What a crash-safe row costs: times `Store::append` on rows shaped like `probe grad`'s for a
//! large model, against the same rows written in place into one open HDF5 file and flushed (what
//! the store did before commits were atomic).
//!
//!     cargo run --release --example store_cost -- DIR [ROWS] [PARAMS_MILLIONS]
//!
//! DIR should be on the disk the results go to. Rows: the scalar columns, per-parameter norms and
//! 257-level weight quantiles for P tensors, and with --save-grad the gradient itself (f64),
//! split into tensors like torchvision's resnet101 (314 tensors, 44.5 M parameters by default).
use probe::store::{Cell, Row, RunInfo, Store};
use std::time::Instant;

fn rows(k: usize, sizes: &[usize], save_grad: bool) -> Row {
    let p = sizes.len();
    let mut row: Row = vec![
        ("loss".into(), Cell::F64(1.0 + k as f64)),
        ("accuracy".into(), Cell::F64(0.5)),
        ("samples".into(), Cell::I64(1_281_167)),
        (
            "checkpoints/path".into(),
            Cell::Str(format!("step-{k}.safetensors")),
        ),
        ("checkpoints/step".into(), Cell::I64(k as i64)),
        ("checkpoints/sha256".into(), Cell::Str("0".repeat(64))),
        ("seconds".into(), Cell::F64(1.0)),
        ("grad/l2".into(), Cell::F64(2.0)),
        (
            "grad/per_param_l2".into(),
            Cell::F64s(vec![p], vec![1.0; p]),
        ),
        (
            "weights/quantiles".into(),
            Cell::F64s(vec![p, 257], vec![0.5; p * 257]),
        ),
    ];
    if save_grad {
        for (i, &n) in sizes.iter().enumerate() {
            row.push((
                format!("grad/full/t{i:03}"),
                Cell::F64s(vec![n], (0..n).map(|j| (j + k) as f64).collect()),
            ));
        }
    }
    row
}

/// The old way: one open file, each row written in place, then flushed.
fn in_place(path: &std::path::Path, all: &[Row]) -> Vec<f64> {
    use hdf5::types::VarLenUnicode;
    let f = hdf5::File::create(path).unwrap();
    let mut times = Vec::new();
    for (k, row) in all.iter().enumerate() {
        let t = Instant::now();
        for (name, cell) in row {
            if let Some((g, _)) = name.rsplit_once('/') {
                let mut acc = String::new();
                for part in g.split('/') {
                    acc = if acc.is_empty() {
                        part.into()
                    } else {
                        format!("{acc}/{part}")
                    };
                    if f.group(&acc).is_err() {
                        f.create_group(&acc).unwrap();
                    }
                }
            }
            let inner = match cell {
                Cell::F64s(s, _) => s.clone(),
                _ => vec![],
            };
            let ds = f.dataset(name).unwrap_or_else(|_| {
                let mut shape = vec![hdf5::Extent::resizable(0)];
                shape.extend(inner.iter().map(|&d| hdf5::Extent::fixed(d)));
                let tail: usize = inner.iter().product::<usize>().max(1);
                let mut chunk = vec![(8192 / tail).clamp(1, 1024)];
                chunk.extend(inner.iter().copied());
                match cell {
                    Cell::Str(_) => f.new_dataset::<VarLenUnicode>(),
                    Cell::I64(_) => f.new_dataset::<i64>(),
                    _ => f.new_dataset::<f64>(),
                }
                .chunk(chunk)
                .shape(shape)
                .create(name.as_str())
                .unwrap()
            });
            let mut shape = ds.shape();
            shape[0] = k + 1;
            ds.resize(shape).unwrap();
            match cell {
                Cell::F64(v) => ds.write_slice(&ndarray::arr1(&[*v]), k..k + 1).unwrap(),
                Cell::I64(v) => ds.write_slice(&ndarray::arr1(&[*v]), k..k + 1).unwrap(),
                Cell::Str(s) => ds
                    .write_slice(
                        &ndarray::arr1(&[s.parse::<VarLenUnicode>().unwrap()]),
                        k..k + 1,
                    )
                    .unwrap(),
                Cell::F64s(s, v) => {
                    let mut full = vec![1];
                    full.extend(s);
                    let a = ndarray::ArrayView::from_shape(ndarray::IxDyn(&full), v).unwrap();
                    let mut parts = vec![hdf5::SliceOrIndex::from(k..k + 1)];
                    parts.extend(s.iter().map(|_| hdf5::SliceOrIndex::from(..)));
                    ds.write_slice(&a, hdf5::Hyperslab::from(parts)).unwrap()
                }
                _ => unreachable!(),
            }
        }
        f.flush().unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    times
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: store_cost DIR [ROWS] [M]"));
    let n_rows: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(5);
    let millions: f64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(44.5);
    // 314 tensors: a few large ones and many small ones, as in resnet101.
    let total = (millions * 1e6) as usize;
    let p = 314;
    let weights: Vec<f64> = (0..p)
        .map(|i| 1.0 + (i % 12) as f64 * (i % 12) as f64)
        .collect();
    let wsum: f64 = weights.iter().sum();
    let sizes: Vec<usize> = weights
        .iter()
        .map(|w| ((w / wsum) * total as f64) as usize)
        .collect();
    let info = RunInfo {
        command: "grad".into(),
        command_line: "store_cost".into(),
        model_path: "resnet101.onnx".into(),
        model_sha256: "0".into(),
        data: "imagenet".into(),
        data_samples: 1_281_167,
        batch_size: 256,
        loss: "cross_entropy".into(),
        extra: Default::default(),
    };
    for save_grad in [false, true] {
        let all: Vec<Row> = (0..n_rows).map(|k| rows(k, &sizes, save_grad)).collect();
        let atomic = dir.join(format!("atomic-{save_grad}.h5"));
        let old = dir.join(format!("inplace-{save_grad}.h5"));
        let _ = std::fs::remove_file(&atomic);
        let _ = std::fs::remove_file(&old);
        let t_open = Instant::now();
        let mut store = Store::open(&atomic, &info, true).unwrap();
        let open_s = t_open.elapsed().as_secs_f64();
        let mut times = Vec::new();
        for row in &all {
            let t = Instant::now();
            store.append(row).unwrap();
            times.push(t.elapsed().as_secs_f64());
        }
        store.finish(true).unwrap();
        let old_times = in_place(&old, &all);
        let row_mb = std::fs::metadata(&atomic).unwrap().len() as f64 / n_rows as f64 / 1e6;
        // Reopening an existing file copies it once (the working copy).
        let t_reopen = Instant::now();
        let store = Store::open(&atomic, &info, false).unwrap();
        let reopen_s = t_reopen.elapsed().as_secs_f64();
        store.finish(true).unwrap();
        println!(
            "{} tensors, {:.1} M parameters, save_grad={save_grad}: {:.2} MB a row; atomic commit median {:.3} s (max {:.3}), in place + flush median {:.3} s (max {:.3}); create {:.3} s, reopen with {n_rows} rows {:.3} s",
            p,
            sizes.iter().sum::<usize>() as f64 / 1e6,
            row_mb,
            median(times.clone()),
            times.iter().cloned().fold(0.0, f64::max),
            median(old_times.clone()),
            old_times.iter().cloned().fold(0.0, f64::max),
            open_s,
            reopen_s
        );
        let _ = std::fs::remove_file(&atomic);
        let _ = std::fs::remove_file(&old);
    }
}
