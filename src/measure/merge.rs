//! `probe merge`: the results files of one run, split across jobs, into the file one process
//! writes.
//!
//! Two kinds of split, freely mixed:
//! - **checkpoint shards** (`--shard i/n`, or any files of the same run): full rows, copied as
//!   they are;
//! - **data shards** (`--data-shard i/n`): per checkpoint, the raw f64 sums of a pass over one
//!   contiguous run of whole batches (`/partial/...`, see `docs/schema.md`). The n shards'
//!   sums are added in shard order, 0 to n-1, in f64 (each sum, element by element:
//!   `((s_0 + s_1) + s_2) + ...`), then divided by the total number of target elements and
//!   turned into a row by the same code a single pass uses ([`super::grad::row`]). A single
//!   pass adds the same batches' f32 sums one after another into one f64 accumulator; the two
//!   differ only where that f64 addition rounds (never, while each value is more than 2^-29 of
//!   the running sum, as f32 values added into f64 are then exact). The minibatch noise
//!   moments are sums over batches too, so they merge the same way (the identity of
//!   [`super::noise`] is the law of total variance over the batches). The columns of the
//!   weights alone (norms, distances and distributions against the previous and first
//!   checkpoint) are the same in every shard and are taken from shard 0.
//!
//! The rows come out in step order. Files of different runs (model, data, batch size, loss,
//! flags: every attribute the store records but the command line, the row counts and the shard
//! itself), a data shard given twice, a checkpoint in two files, and a checkpoint missing some
//! of its data shards are refused, naming the files.
use super::eval::EvalSums;
use super::grad::row;
use super::grad::PassSums;
use super::noise::{BatchSums, Dd};
use crate::error::input;
use crate::store::read::{Attr, ResultsFile};
use crate::store::{Cell, Row, RunInfo, Store};
use anyhow::Result;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub struct MergePlan {
    pub files: Vec<PathBuf>,
    pub out: PathBuf,
    pub force: bool,
    pub quiet: bool,
    pub command_line: String,
}

/// A printed row of the merged file.
pub struct MergedRow {
    pub step: i64,
    pub loss: f64,
    pub accuracy: f64,
    /// `probe grad`'s |g|.
    pub grad_l2: Option<f64>,
    pub path: String,
    /// Where it came from: a file, or "n data shards".
    pub from: String,
}

/// Attributes that may differ between the files of one run: how each job was started and how
/// far it got, and which data shard it is.
const PER_JOB: [&str; 7] = [
    "command_line",
    "ckpt_shard",
    "rows",
    "complete",
    "partial",
    "data_shard",
    "data_shard_range",
];

/// Where one checkpoint's row is: a full row in one file, or one row per data shard.
enum Source {
    Full(usize, usize),
    Shards(BTreeMap<usize, (usize, usize)>),
}

pub fn run(plan: &MergePlan, mut on_row: impl FnMut(&MergedRow)) -> Result<Vec<MergedRow>> {
    if plan.files.is_empty() {
        return Err(input("probe merge: no files given"));
    }
    let mut files = Vec::new();
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    for p in &plan.files {
        let canon = std::fs::canonicalize(p)
            .map_err(|e| input(format!("{}: cannot read it ({e})", p.display())))?;
        if let Some(&j) = seen.get(&canon) {
            return Err(input(format!(
                "{} is given twice (as {} too)",
                p.display(),
                plan.files[j].display()
            )));
        }
        seen.insert(canon, files.len());
        files.push(ResultsFile::open(p)?);
    }
    same_run(&files)?;
    let command = files[0].str_attr("command").unwrap_or_default().to_string();
    if command != "grad" && command != "eval" {
        return Err(input(format!(
            "{}: written by `probe {command}`; merge takes files of probe grad or probe eval",
            files[0].path.display()
        )));
    }
    let shards = data_shards(&files)?;
    checkpoint_shards(&files)?;
    let sources = checkpoints(&files, &shards)?;

    let info = merged_info(&files[0], &plan.command_line);
    let mut store = Store::open(&plan.out, &info, plan.force)?;
    let names = files[0].strings("params/name");
    if !names.is_empty() {
        store.put_strings("params/name", &names)?;
    }
    let done = store.done();
    let mut out = Vec::new();
    let mut nan_rows = 0;
    let result = (|| -> Result<()> {
        for (key, _, src) in &sources {
            if done.contains(key) {
                if !plan.quiet {
                    eprintln!("skip: {} is already in {}", key.0, plan.out.display());
                }
                continue;
            }
            let (row, from) = match src {
                Source::Full(f, k) => (files[*f].row(*k)?, files[*f].path.display().to_string()),
                Source::Shards(parts) => {
                    let rows = parts
                        .values()
                        .map(|&(f, k)| files[f].row(k))
                        .collect::<Result<Vec<Row>>>()?;
                    let row = if command == "grad" {
                        merge_grad(&files[0], &names, &rows)?
                    } else {
                        merge_eval(&rows)?
                    };
                    (row, format!("{} data shards", parts.len()))
                }
            };
            let f = |n: &str| match get(&row, n) {
                Some(Cell::F64(v)) => Some(*v),
                _ => None,
            };
            let loss = f("loss").unwrap_or(f64::NAN);
            if loss.is_nan() {
                nan_rows += 1;
            }
            let m = MergedRow {
                step: match get(&row, "checkpoints/step") {
                    Some(Cell::I64(s)) => *s,
                    _ => -1,
                },
                loss,
                accuracy: f("accuracy").unwrap_or(f64::NAN),
                grad_l2: f("grad/l2"),
                path: key.0.clone(),
                from,
            };
            store.append(&row)?;
            on_row(&m);
            out.push(m);
        }
        Ok(())
    })();
    let complete = files
        .iter()
        .all(|f| f.attrs.get("complete") == Some(&Attr::I64(1)));
    store.finish(result.is_ok() && complete && nan_rows == 0)?;
    result.map(|_| out)
}

/// Refuses files that are not of one run: every attribute but [`PER_JOB`]'s must agree with the
/// first file's, and so must the parameter names.
fn same_run(files: &[ResultsFile]) -> Result<()> {
    let first = &files[0];
    for f in &files[1..] {
        let mut diffs = Vec::new();
        let keys: std::collections::BTreeSet<&String> =
            first.attrs.keys().chain(f.attrs.keys()).collect();
        for k in keys {
            if PER_JOB.contains(&k.as_str()) {
                continue;
            }
            // A full file has no save_grad attribute; data shards must agree on it.
            if k == "save_grad" && !(is_partial(first) && is_partial(f)) {
                continue;
            }
            let (a, b) = (first.attrs.get(k), f.attrs.get(k));
            if a != b {
                let show = |v: Option<&Attr>| v.map(|v| v.to_string()).unwrap_or("none".into());
                diffs.push(format!("{k} {} vs {}", show(a), show(b)));
            }
        }
        if first.strings("params/name") != f.strings("params/name") {
            diffs.push("/params/name differ".into());
        }
        if !diffs.is_empty() {
            return Err(input(format!(
                "{} and {} are not files of the same run: {}",
                first.path.display(),
                f.path.display(),
                diffs.join("; ")
            )));
        }
    }
    Ok(())
}

/// Each file's shard `i/n` from its attribute `key` (None where it has none), checked: well
/// formed, and one count n for all the files that have one.
fn shard_attrs(
    files: &[ResultsFile],
    key: &str,
    what: &str,
) -> Result<Vec<Option<(usize, usize)>>> {
    let mut count: Option<(usize, &ResultsFile)> = None;
    let mut out = Vec::new();
    for f in files {
        let Some(s) = f.str_attr(key) else {
            out.push(None);
            continue;
        };
        let bad = || input(format!("{}: bad {key} attribute '{s}'", f.path.display()));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if let Some((m, g)) = count {
            if m != n {
                return Err(input(format!(
                    "{} is {what} {i}/{n} but {} is of {m} shards: merge shards of one split",
                    f.path.display(),
                    g.path.display()
                )));
            }
        }
        count = Some((n, f));
        out.push(Some((i, n)));
    }
    Ok(out)
}

/// Checkpoint shards (`--shard i/n`, attribute `ckpt_shard`): one count for all, and every
/// shard 0..n among the files; a missing one is named (its checkpoints would be missing from
/// the series without a trace).
fn checkpoint_shards(files: &[ResultsFile]) -> Result<()> {
    let shards = shard_attrs(files, "ckpt_shard", "checkpoint shard")?;
    let have: std::collections::BTreeSet<usize> = shards.iter().flatten().map(|s| s.0).collect();
    let count = shards.iter().flatten().next().copied();
    if let Some((_, n)) = count {
        let missing: Vec<String> = (0..n)
            .filter(|i| !have.contains(i))
            .map(|i| format!("{i}/{n}"))
            .collect();
        if !missing.is_empty() {
            return Err(input(format!(
                "checkpoint shard{} {} (--shard) missing among the {} files given",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                files.len()
            )));
        }
    }
    Ok(())
}

fn is_partial(f: &ResultsFile) -> bool {
    f.str_attr("data_shard").is_some()
}

/// Each file's data shard (None for full files), checked: one shard count for all, and each
/// file's sample range the one that count gives.
fn data_shards(files: &[ResultsFile]) -> Result<Vec<Option<(usize, usize)>>> {
    let shards = shard_attrs(files, "data_shard", "data shard")?;
    for (f, shard) in files.iter().zip(&shards) {
        let Some((i, n)) = *shard else {
            continue;
        };
        let attr_i64 = |k: &str| match f.attrs.get(k) {
            Some(Attr::I64(v)) => *v as usize,
            _ => 0,
        };
        let want =
            super::setup::data_shard_range(attr_i64("data_samples"), attr_i64("batch_size"), i, n)
                .map(|(a, b)| format!("{a}:{b}"));
        if want.as_deref() != f.str_attr("data_shard_range") {
            return Err(input(format!(
                "{}: data shard {i}/{n} holds samples {}, not the {} that split gives",
                f.path.display(),
                f.str_attr("data_shard_range").unwrap_or("?"),
                want.unwrap_or("none".into())
            )));
        }
    }
    Ok(shards)
}

/// Every checkpoint of the files, keyed by (path, sha256), with its step and where its rows are,
/// in step order (stable: as the files give them). Refuses a checkpoint in two files (but for
/// different data shards of it) and one with data shards missing.
#[allow(clippy::type_complexity)]
fn checkpoints(
    files: &[ResultsFile],
    shards: &[Option<(usize, usize)>],
) -> Result<Vec<((String, String), i64, Source)>> {
    let mut order: Vec<((String, String), i64)> = Vec::new();
    let mut srcs: HashMap<(String, String), Source> = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        let paths = f.strings("checkpoints/path");
        let shas = f.strings("checkpoints/sha256");
        let steps = f.i64s("checkpoints/step");
        if paths.len() < f.rows || shas.len() < f.rows || steps.len() < f.rows {
            return Err(input(format!(
                "{}: fewer /checkpoints entries than its {} rows",
                f.path.display(),
                f.rows
            )));
        }
        for k in 0..f.rows {
            let key = (paths[k].clone(), shas[k].clone());
            let other = |g: usize| files[g].path.display().to_string();
            match (srcs.get_mut(&key), shards[fi]) {
                (None, None) => {
                    srcs.insert(key.clone(), Source::Full(fi, k));
                    order.push((key, steps[k]));
                }
                (None, Some((i, _))) => {
                    srcs.insert(key.clone(), Source::Shards(BTreeMap::from([(i, (fi, k))])));
                    order.push((key, steps[k]));
                }
                (Some(Source::Shards(m)), Some((i, n))) => {
                    if let Some(&(g, _)) = m.get(&i) {
                        return Err(input(format!(
                            "{}: data shard {i}/{n} is in both {} and {}",
                            key.0,
                            other(g),
                            f.path.display()
                        )));
                    }
                    m.insert(i, (fi, k));
                }
                (Some(src), _) => {
                    let g = match src {
                        Source::Full(g, _) => *g,
                        Source::Shards(m) => m.values().next().unwrap().0,
                    };
                    return Err(input(format!(
                        "{}: is in both {} and {}",
                        key.0,
                        other(g),
                        f.path.display()
                    )));
                }
            }
        }
    }
    let n = shards.iter().flatten().map(|s| s.1).next().unwrap_or(1);
    for (key, _) in &order {
        if let Some(Source::Shards(m)) = srcs.get(key) {
            let missing: Vec<String> = (0..n)
                .filter(|i| !m.contains_key(i))
                .map(|i| format!("{i}/{n}"))
                .collect();
            if !missing.is_empty() {
                let have: Vec<String> = m
                    .iter()
                    .map(|(i, (f, _))| format!("{i}/{n} in {}", files[*f].path.display()))
                    .collect();
                return Err(input(format!(
                    "{}: data shard{} {} missing (given: {})",
                    key.0,
                    if missing.len() > 1 { "s" } else { "" },
                    missing.join(", "),
                    have.join(", ")
                )));
            }
        }
    }
    order.sort_by_key(|(_, step)| *step);
    Ok(order
        .into_iter()
        .map(|(key, step)| {
            let src = srcs.remove(&key).unwrap();
            (key, step, src)
        })
        .collect())
}

/// The merged file's identity: the first file's, less what is a data shard's own.
fn merged_info(first: &ResultsFile, command_line: &str) -> RunInfo {
    let s = |k: &str| first.str_attr(k).unwrap_or_default().to_string();
    let i = |k: &str| match first.attrs.get(k) {
        Some(Attr::I64(v)) => *v,
        _ => -1,
    };
    let fixed = [
        "schema_version",
        "probe_version",
        "command",
        "model_path",
        "model_sha256",
        "data",
        "data_samples",
        "batch_size",
        "loss",
        "save_grad",
    ];
    let extra = first
        .attrs
        .iter()
        .filter(|(k, _)| !PER_JOB.contains(&k.as_str()) && !fixed.contains(&k.as_str()))
        .filter_map(|(k, v)| match v {
            Attr::Str(v) => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect();
    RunInfo {
        command: s("command"),
        command_line: command_line.to_string(),
        model_path: s("model_path"),
        model_sha256: s("model_sha256"),
        data: s("data"),
        data_samples: i("data_samples"),
        batch_size: i("batch_size"),
        loss: s("loss"),
        extra,
    }
}

fn get<'a>(row: &'a Row, name: &str) -> Option<&'a Cell> {
    row.iter().find(|(n, _)| n == name).map(|(_, c)| c)
}

fn f64_of(row: &Row, name: &str) -> Result<f64> {
    match get(row, name) {
        Some(Cell::F64(v)) => Ok(*v),
        _ => Err(input(format!("a data shard's row has no /{name}"))),
    }
}

fn i64_of(row: &Row, name: &str) -> Result<i64> {
    match get(row, name) {
        Some(Cell::I64(v)) => Ok(*v),
        _ => Err(input(format!("a data shard's row has no /{name}"))),
    }
}

fn tensor_of(row: &Row, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    match get(row, name) {
        Some(Cell::F64s(s, v)) => Ok((s.clone(), v.clone())),
        _ => Err(input(format!("a data shard's row has no /{name}"))),
    }
}

/// A `probe grad` data shard's sums, as its pass left them.
fn grad_sums(row: &Row, names: &[String], noise: bool) -> Result<PassSums> {
    let acc = names
        .iter()
        .map(|p| tensor_of(row, &format!("partial/grad_sum/{p}")).map(|t| t.1))
        .collect::<Result<Vec<_>>>()?;
    let noise = if noise {
        let sq = tensor_of(row, "partial/noise/sq_sum")?.1;
        let sizes = match get(row, "partial/noise/batch_elements") {
            Some(Cell::I64s(_, v)) => v.clone(),
            _ => {
                return Err(input(
                    "a data shard's row has no /partial/noise/batch_elements",
                ))
            }
        };
        let by_param = names
            .iter()
            .map(|p| tensor_of(row, &format!("partial/noise/grad_sum_by_size/{p}")).map(|t| t.1))
            .collect::<Result<Vec<_>>>()?;
        let by_size = sizes
            .iter()
            .enumerate()
            .map(|(j, &e)| {
                let per: Vec<Vec<f64>> = by_param
                    .iter()
                    .map(|v| {
                        let n = v.len() / sizes.len();
                        v[j * n..(j + 1) * n].to_vec()
                    })
                    .collect();
                (e as usize, per)
            })
            .collect();
        Some(BatchSums {
            batches: i64_of(row, "partial/noise/batches")? as usize,
            sq: sq.chunks(2).map(|c| Dd { hi: c[0], lo: c[1] }).collect(),
            by_size,
        })
    } else {
        None
    };
    let correct = f64_of(row, "partial/correct_sum")?;
    Ok(PassSums {
        acc,
        noise,
        loss: f64_of(row, "partial/loss_sum")?,
        correct: if correct.is_nan() { 0.0 } else { correct },
        has_correct: !correct.is_nan(),
        samples: i64_of(row, "samples")? as usize,
        elements: i64_of(row, "elements")? as usize,
        nonfinite: vec![0; i64_of(row, "nonfinite_batches")?.max(0) as usize],
        seconds: f64_of(row, "seconds")?,
    })
}

/// The row one process writes, from a checkpoint's data shards' rows (in shard order).
fn merge_grad(first: &ResultsFile, names: &[String], rows: &[Row]) -> Result<Row> {
    let noise = !first.str_attr("noise").unwrap_or_default().is_empty();
    let mut sums = grad_sums(&rows[0], names, noise)?;
    for r in &rows[1..] {
        sums.add(&grad_sums(r, names, noise)?);
    }
    let r = sums.mean();
    let (mut row, g_l2) = row::gradient_columns(&r);
    // The weights' own columns, identical in every shard: shard 0's.
    let own = ["samples", "elements", "nonfinite_batches", "seconds"];
    row.extend(
        rows[0]
            .iter()
            .filter(|(n, _)| !n.starts_with("partial/") && !own.contains(&n.as_str()))
            .cloned(),
    );
    row.push(("seconds".into(), Cell::F64(r.seconds)));
    if noise {
        // The per-sample part is refused with --data-shard: as with --noise-samples 0.
        row::noise(&mut row, &r, None, g_l2);
    }
    if let Some(l) = first.str_attr("weight_decay").filter(|s| !s.is_empty()) {
        let lambda: f64 = l
            .parse()
            .map_err(|_| input(format!("bad weight_decay attribute '{l}'")))?;
        let w = names
            .iter()
            .map(|p| match get(&rows[0], &format!("partial/weights/{p}")) {
                Some(Cell::F32s(_, v)) => Ok(&v[..]),
                _ => Err(input(format!(
                    "data shard 0 has no /partial/weights/{p}, which --weight-decay needs"
                ))),
            })
            .collect::<Result<Vec<&[f32]>>>()?;
        row::weight_decay(&mut row, &r.grads, &w, lambda);
    }
    if first.str_attr("save_grad") == Some("true") {
        for (p, g) in names.iter().zip(&r.grads) {
            let shape = tensor_of(&rows[0], &format!("partial/grad_sum/{p}"))?.0;
            row.push((format!("grad/full/{p}"), Cell::F64s(shape, g.clone())));
        }
    }
    Ok(row)
}

/// The row one `probe eval` process writes, from a checkpoint's data shards' rows.
fn merge_eval(rows: &[Row]) -> Result<Row> {
    let sums = |row: &Row| -> Result<EvalSums> {
        Ok(EvalSums {
            loss: f64_of(row, "partial/loss_sum")?,
            correct: f64_of(row, "partial/correct_sum")?,
            samples: i64_of(row, "samples")? as usize,
            elements: i64_of(row, "elements")? as usize,
            seconds: f64_of(row, "seconds")?,
        })
    };
    let mut s = sums(&rows[0])?;
    for r in &rows[1..] {
        s.add(&sums(r)?);
    }
    let r = s.mean();
    let mut row: Row = vec![
        ("loss".into(), Cell::F64(r.loss)),
        ("accuracy".into(), Cell::F64(r.accuracy)),
        ("samples".into(), Cell::I64(r.samples as i64)),
        ("elements".into(), Cell::I64(r.elements as i64)),
        ("seconds".into(), Cell::F64(r.seconds)),
    ];
    row.extend(
        rows[0]
            .iter()
            .filter(|(n, _)| n.starts_with("checkpoints/"))
            .cloned(),
    );
    Ok(row)
}
