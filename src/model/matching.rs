//! Matching a checkpoint's tensor names against the model's state, as users save checkpoints:
//!
//! - **Prefix.** `--strip-prefix P` removes `P` from the names that start with it (DDP's
//!   `module.`, torch.compile's `_orig_mod.`). Without it, a checkpoint that does not fit but
//!   would with a prefix removed (or added) is refused naming the prefix and the flag.
//! - **Non-persistent buffers** (`register_buffer(..., persistent=False)`: rotary `inv_freq`,
//!   `position_ids`, Gemma's `embed_scale`) are in the graph but never in `state_dict()`: when the
//!   checkpoint lacks one, the ONNX file's values are used, with a note. A missing parameter or
//!   persistent buffer is still refused.
//! - **Tied weights.** The exporter keeps one initializer for two tied names (the one its
//!   signature lists last, e.g. `lm_head.weight` for `transformer.wte.weight`). A checkpoint
//!   name that the export lists as the module's state but the graph has no initializer for is
//!   matched to the tensors it can be tied to: the graph's state tensors of its shape and dtype
//!   listed after it, if its module ran in the graph. When the checkpoint has the kept name too
//!   (`state_dict()` saves both), the alias must equal one of them bit for bit, else both are
//!   named in the error; when the checkpoint lacks the kept name (`save_pretrained`,
//!   `safetensors.torch.save_model` keep one name of a pair), the alias fills it. A name whose
//!   module never ran, or that nothing can be tied to, is a tensor the graph does not read:
//!   skipped with a note.
//! - **Integer buffers** of the graph (`relative_position_index`, `position_ids`) are taken as
//!   given; int64 ones are fed to the graph per checkpoint, other integer types must equal the
//!   ONNX file's values (the graph keeps those). Integer tensors the graph does not hold
//!   (`num_batches_tracked`) are skipped with a note.
//! - **transformers' renamings.** `save_pretrained` writes some classes' tensors under their
//!   original checkpoint names (ViT's `encoder.layer.N.attention.attention.query`, GPT-NeoX's
//!   `embed_out`), which `from_pretrained` renames to the module's (`layers.N.attention.q_proj`,
//!   `lm_head`). A name the model lacks is renamed as transformers would (see [`hf_renames`]:
//!   the graph tells which class sits where) when the model has the renamed name, with one note
//!   saying what was renamed; a renaming onto a name the checkpoint also has, or of two names
//!   onto one, is refused.
//!
//! Every problem is reported at once, in one error line.
use super::export_info::Role;
use super::hf_renames;
use super::onnx::{Model, ParamInfo};
use crate::tensor::{DType, HostTensor, Values};
use anyhow::Result;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// How a checkpoint's names map to the model's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Removed from the start of every name that has it (`module.`).
    pub strip_prefix: Option<String>,
    /// `--step-from REGEX`: the step is the first capture group (else the whole match) of this
    /// pattern in the checkpoint's path as given; checked when the flag is parsed.
    pub step_from: Option<String>,
}

/// One tensor of a checkpoint file, under the name the model would give it.
#[derive(Clone)]
pub struct Entry {
    /// The name with the prefix stripped.
    pub name: String,
    /// The name in the file.
    pub file_name: String,
    /// `None`: an element type probe does not read.
    pub dtype: Option<DType>,
    /// The file's element type, as safetensors names it (for messages).
    pub file_dtype: String,
    pub shape: Vec<usize>,
    /// Whether `name` is transformers' renaming of the file's name (see [`hf_renames`]).
    pub renamed: bool,
}

/// What matching found: the state tensors by initializer name, and notes for the log.
pub struct Matched {
    pub tensors: BTreeMap<String, HostTensor>,
    pub notes: Vec<String>,
}

/// Tensors bit for bit equal (NaNs and signed zeros included).
fn same_bits(a: &HostTensor, b: &HostTensor) -> bool {
    a.shape == b.shape
        && match (&a.values, &b.values) {
            (Values::F32(x), Values::F32(y)) => x
                .iter()
                .map(|v| v.to_bits())
                .eq(y.iter().map(|v| v.to_bits())),
            (Values::I64(x), Values::I64(y)) => x == y,
            _ => false,
        }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a checkpoint does not fit: every problem, sorted.
#[derive(Default)]
struct Problems {
    missing: Vec<String>,
    extra: Vec<String>,
    wrong: Vec<String>,
    /// What was renamed as transformers does, said with the problems (they use those names).
    renamed: Option<String>,
}

/// Matches `entries` (the file's tensors) against `model`; `read` gives an entry's values.
pub fn match_state(
    path: &Path,
    model: &Model,
    entries: &[Entry],
    opts: &Options,
    mut read: impl FnMut(&Entry) -> Result<HostTensor>,
) -> Result<Matched> {
    let problems = match try_match(model, entries, &mut read)? {
        Ok(mut m) => {
            if let Some(p) = &opts.strip_prefix {
                let n = entries.iter().filter(|e| e.name != e.file_name).count();
                m.notes.insert(
                    0,
                    format!("stripped the prefix '{p}' from {n} tensor name(s)"),
                );
            }
            return Ok(m);
        }
        Err(p) => p,
    };
    let mut parts = Vec::new();
    let state: HashSet<&str> = model
        .state()
        .map(|p| p.name.as_str())
        .chain(model.export.signature.iter().map(|s| s.target.as_str()))
        .collect();
    let extra: Vec<&str> = problems.extra.iter().map(String::as_str).collect();
    let missing: Vec<&str> = problems.missing.iter().map(String::as_str).collect();
    let ckpt: HashSet<&str> = extra.iter().copied().collect();
    match &opts.strip_prefix {
        // A prefix that would make it fit is named first, with the flag; what remains with the
        // prefix stripped follows (nothing, when that fits).
        None => match common_prefix(&extra, |rest| state.contains(rest)) {
            Some(p) => {
                let why = match p.as_str() {
                    "module." => "as DistributedDataParallel saves them",
                    "_orig_mod." => "as torch.compile saves them",
                    _ => "a wrapper module's name",
                };
                let stripped: Vec<Entry> = entries.iter().map(|e| strip(e, &p)).collect();
                let rest = match try_match(model, &stripped, &mut read)? {
                    Ok(_) => "then it fits".to_string(),
                    Err(rest) => format!("with it, still: {}", listed(rest).join("; ")),
                };
                parts.push(format!(
                    "its tensor names start with '{p}' ({why}), which the model's do not: give \
                     --strip-prefix {p} ({rest})"
                ));
                return Err(refusal(path, model, parts));
            }
            None => {
                if let Some(p) = common_prefix(&missing, |rest| ckpt.contains(rest)) {
                    parts.push(format!(
                        "the model's names start with '{p}' and the checkpoint's do not: export \
                         the module itself, not a wrapper that holds it as '{}'",
                        p.trim_end_matches('.')
                    ));
                }
            }
        },
        Some(p) if entries.iter().all(|e| e.name == e.file_name) => {
            parts.push(format!("--strip-prefix '{p}' matched none of its names"));
        }
        Some(_) => {}
    }
    parts.extend(listed(problems));
    Err(refusal(path, model, parts))
}

fn refusal(path: &Path, model: &Model, parts: Vec<String>) -> anyhow::Error {
    crate::error::input(format!(
        "{}: checkpoint does not fit {}: {}",
        path.display(),
        model.path.display(),
        parts.join("; ")
    ))
}

/// `e` under its name with `prefix` removed.
fn strip(e: &Entry, prefix: &str) -> Entry {
    Entry {
        name: e.name.strip_prefix(prefix).unwrap_or(&e.name).to_string(),
        file_name: e.file_name.clone(),
        dtype: e.dtype,
        file_dtype: e.file_dtype.clone(),
        shape: e.shape.clone(),
        renamed: e.renamed,
    }
}

/// The problems as the error lists them: missing names, extra names, then each wrong tensor;
/// first what was renamed, when something was.
fn listed(p: Problems) -> Vec<String> {
    let mut parts: Vec<String> = p.renamed.into_iter().collect();
    if !p.missing.is_empty() {
        parts.push(format!(
            "missing {} of the model's tensors: {}",
            p.missing.len(),
            p.missing.join(", ")
        ));
    }
    if !p.extra.is_empty() {
        let mut s = format!(
            "{} tensors the model does not have: {}",
            p.extra.len(),
            p.extra.join(", ")
        );
        if p.extra
            .iter()
            .any(|n| n.contains("running_mean") || n.contains("running_var"))
        {
            s.push_str(
                " (BatchNorm statistics with no match in the graph: was the model exported with \
                 BatchNorm folded into Conv? export with torch.onnx.export(..., dynamo=True, optimize=False))",
            );
        }
        parts.push(s);
    }
    parts.extend(p.wrong);
    parts
}

/// The matching itself: the state and notes, or every problem.
fn try_match(
    model: &Model,
    entries: &[Entry],
    read: &mut impl FnMut(&Entry) -> Result<HostTensor>,
) -> Result<std::result::Result<Matched, Problems>> {
    let mut tensors: BTreeMap<String, HostTensor> = BTreeMap::new();
    let mut problems = Problems::default();
    let (entries, renamed) = renamed(model, entries);
    let entries = &entries[..];
    problems.wrong.extend(renamed.clashes);
    problems.renamed = renamed.note;
    let mut ignored = vec![];
    // Names the export lists as the module's state with no initializer: tied or unread.
    let mut listed: Vec<(&Entry, HostTensor)> = Vec::new();
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut bad: HashSet<&str> = HashSet::new();
    for e in entries {
        if let Some(first) = seen.insert(&e.name, &e.file_name) {
            problems.wrong.push(format!(
                "'{first}' and '{}' are both '{}' once the prefix is stripped",
                e.file_name, e.name
            ));
            bad.insert(&e.name);
            continue;
        }
        let Some(info) = model.param(&e.name).filter(|p| p.role != Role::Constant) else {
            let float = e.dtype.is_some_and(|d| d.is_float());
            let in_signature = model
                .export
                .signature
                .iter()
                .any(|s| s.target == e.name && s.role != Role::Constant);
            if in_signature && float {
                listed.push((e, read(e)?));
            } else if e.dtype.is_some() && !float {
                ignored.push(e.name.as_str());
            } else {
                problems.extra.push(e.name.clone());
            }
            continue;
        };
        if let Some(problem) = type_problem(e, info, &shown(e)) {
            problems.wrong.push(problem);
            bad.insert(&e.name);
            continue;
        }
        let t = read(e)?;
        if !info.dtype.is_float() && info.dtype != DType::I64 {
            // The graph keeps integer buffers other than int64 as the ONNX file stores them.
            if !same_bits(&t, &model.initializer(&info.name)?) {
                problems.wrong.push(format!(
                    "'{}' ({}) differs from its values in the ONNX file, and probe takes {} buffers \
                     from the ONNX file (int64 ones from the checkpoint)",
                    e.name, info.dtype, info.dtype
                ));
                bad.insert(&e.name);
                continue;
            }
        }
        tensors.insert(e.name.clone(), t);
    }
    let mut absent: Vec<&ParamInfo> = model
        .state()
        .filter(|p| !tensors.contains_key(&p.name) && !bad.contains(p.name.as_str()))
        .collect();
    let (aliases, unread) = tie(
        model,
        listed,
        &mut tensors,
        &mut absent,
        &mut problems.wrong,
    );

    // Non-persistent buffers the checkpoint lacks: from the ONNX file.
    let (from_file, missing): (Vec<&ParamInfo>, Vec<&ParamInfo>) = absent
        .into_iter()
        .partition(|p| p.role == Role::Buffer && !p.persistent);
    problems.missing = missing.iter().map(|p| p.name.clone()).collect();
    if !problems.missing.is_empty() || !problems.extra.is_empty() || !problems.wrong.is_empty() {
        // safetensors lists tensors in hash order: sort, so the same file gives the same message.
        problems.extra.sort();
        problems.wrong.sort();
        return Ok(Err(problems));
    }
    for p in &from_file {
        tensors.insert(p.name.clone(), model.initializer(&p.name)?);
    }
    let mut notes: Vec<String> = problems.renamed.into_iter().collect();
    if !ignored.is_empty() {
        ignored.sort();
        notes.push(format!(
            "ignored {} integer buffer(s) the ONNX graph does not use: {}",
            ignored.len(),
            ignored.join(", ")
        ));
    }
    if !from_file.is_empty() {
        notes.push(format!(
            "took {} non-persistent buffer(s) from the ONNX file (state_dict() leaves them out): {}",
            from_file.len(),
            from_file
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !aliases.is_empty() {
        notes.push(format!(
            "tied weights (the graph holds one tensor for both names): {}",
            aliases.join(", ")
        ));
    }
    if !unread.is_empty() {
        notes.push(format!(
            "ignored {} tensor(s) of the exported module that the graph does not read: {}",
            unread.len(),
            unread.join(", ")
        ));
    }
    Ok(Ok(Matched { tensors, notes }))
}

/// Matches the checkpoint's names that the export lists but the graph has no initializer for
/// (see the module doc). Fills `tensors` (and takes what it fills out of `absent`), adds
/// refusals to `wrong`; returns the notes' alias and unread lists.
fn tie<'a>(
    model: &Model,
    mut listed: Vec<(&'a Entry, HostTensor)>,
    tensors: &mut BTreeMap<String, HostTensor>,
    absent: &mut Vec<&ParamInfo>,
    wrong: &mut Vec<String>,
) -> (Vec<String>, Vec<&'a str>) {
    listed.sort_by_key(|(e, _)| model.export.position(&e.name));
    let (mut aliases, mut unread) = (vec![], vec![]);
    for (e, t) in listed {
        let pos = model.export.position(&e.name);
        let module = e.name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
        let candidates: Vec<&ParamInfo> = model
            .state()
            .filter(|p| p.shape == e.shape && p.dtype.is_float())
            .filter(|p| model.export.position(&p.name) > pos)
            .collect();
        if candidates.is_empty() || model.export.module_ran(module) == Some(false) {
            unread.push(e.name.as_str());
            continue;
        }
        let lacking: Vec<&str> = candidates
            .iter()
            .filter(|p| absent.iter().any(|a| a.name == p.name))
            .map(|p| p.name.as_str())
            .collect();
        let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
        match lacking.as_slice() {
            [p] => {
                aliases.push(format!("'{p}' from its tied name '{}'", e.name));
                absent.retain(|a| a.name != *p);
                tensors.insert(p.to_string(), t);
            }
            [] => match names
                .iter()
                .find(|p| tensors.get(**p).is_some_and(|v| same_bits(v, &t)))
            {
                Some(p) => aliases.push(format!("'{}' = '{p}'", e.name)),
                None if names.len() == 1 => wrong.push(format!(
                    "'{}' and '{}' are one tied tensor in the model (the graph holds it as '{}') \
                     but their values differ in the checkpoint",
                    e.name, names[0], names[0]
                )),
                None => wrong.push(format!(
                    "'{}' is tied to one of {} in the model (the graph holds one tensor for tied \
                     names) but equals none of them in the checkpoint",
                    e.name,
                    quoted(&names)
                )),
            },
            many => wrong.push(format!(
                "'{}' is tied to one of {}, which the checkpoint lacks: cannot tell which",
                e.name,
                quoted(many)
            )),
        }
    }
    (aliases, unread)
}

/// The entries under the names transformers' `from_pretrained` would give them where the model
/// lacks theirs (see [`hf_renames`]), and what was renamed.
fn renamed(model: &Model, entries: &[Entry]) -> (Vec<Entry>, hf_renames::Renamed) {
    let known = |n: &str| {
        model.param(n).is_some_and(|p| p.role != Role::Constant)
            || model
                .export
                .signature
                .iter()
                .any(|s| s.target == n && s.role != Role::Constant)
    };
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let r = hf_renames::rename(&model.export.classes, &names, known);
    let mut out = entries.to_vec();
    for (i, new) in &r.renamed {
        out[*i].name = new.clone();
        out[*i].renamed = true;
    }
    (out, r)
}

/// How a message names entry `e`: `'lm_head.weight'`, or `'lm_head.weight' ('embed_out.weight'
/// in the file)` when it was renamed as transformers does.
fn shown(e: &Entry) -> String {
    if e.renamed {
        format!("'{}' ('{}' in the file)", e.name, e.file_name)
    } else {
        format!("'{}'", e.name)
    }
}

/// Why entry `e` (named `name` in messages) cannot fill `info`, if it cannot: its element type
/// or shape.
fn type_problem(e: &Entry, info: &ParamInfo, name: &str) -> Option<String> {
    match e.dtype {
        None => Some(format!(
            "{name} has dtype {}, model {}",
            e.file_dtype, info.dtype
        )),
        Some(d) if d.is_float() != info.dtype.is_float() => Some(format!(
            "{name} is {d} in the checkpoint, {} in the model",
            info.dtype
        )),
        _ if e.shape != info.shape => Some(format!(
            "{name} has shape {:?} in the checkpoint, {:?} in the model",
            e.shape, info.shape
        )),
        _ => None,
    }
}

/// The prefix (ending in '.') that most of `names` carry before a name `known` accepts, if it
/// explains at least half of them.
pub fn common_prefix(names: &[&str], known: impl Fn(&str) -> bool) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in names {
        for (i, _) in n.match_indices('.') {
            if known(&n[i + 1..]) {
                *counts.entry(&n[..=i]).or_default() += 1;
            }
        }
    }
    let (p, c) = counts
        .into_iter()
        .max_by_key(|&(p, c)| (c, std::cmp::Reverse(p)))?;
    (c * 2 >= names.len()).then(|| p.to_string())
}

#[cfg(test)]
#[path = "matching_tests.rs"]
mod tests;
