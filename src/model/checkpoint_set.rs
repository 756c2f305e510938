//! Checkpoint sets as users give them: `--ckpt runs/r/step-*.safetensors` expanded by a shell in
//! its own order, a folder, optimizer-state files among the weights, the same file twice.
//!
//! The one place that decides which checkpoints a command measures, and in what order; `probe
//! eval` and `probe grad` both take their checkpoints from [`load`] (through `measure::setup`):
//!
//! 1. **Expand.** A folder stands for its `*.safetensors` files. A file name with `*` or `?` that
//!    names no file (a pattern the shell left alone: quoted, or matching nothing) is matched
//!    against the files of its folder.
//! 2. **Classify.** A file that holds an optimizer's state is skipped, with one note for all of
//!    them: `probe train`'s `DIR/optim/step-<n>.safetensors` (and the
//!    `DIR/step-<n>.optim.safetensors` of runs made before that layout), recognized by its
//!    header alone: metadata `format` = `probe-optimizer-state-1`, or every tensor named
//!    `momentum_buffer/...`, `exp_avg/...`, `exp_avg_sq/...`, `max_exp_avg_sq/...` or `step/...`.
//! 3. **Order by step** (metadata `step` from the header, else the number in the file name; see
//!    [`Checkpoint::step`]), stably, so the columns computed against a neighbour (`moved` =
//!    `/weights/dist_prev`, `/weights/w1_prev`, the distances to the first) follow training
//!    whatever order the shell gave: a glob over `step-0`, `step-40`, ..., `step-160` gives 0,
//!    120, 160, 40, 80. When some file has no step, the order given is kept, with a note.
//! 4. **Read and match** against the model, before any work, every file the command needs: all
//!    of them, or with `--shard i/n` the shard's own, each one's predecessor and the first
//!    ([`load_shard`]), so that a task of a large job array reads and holds only its share.
//!    When several cannot be used, the error says so once: the count and the first file's
//!    problem.
//! 5. **Dedupe.** The same bytes twice (same sha256, under one name or two) among the files
//!    read are refused, naming both paths: the second row would silently repeat the first.
use super::checkpoint::Checkpoint;
use super::matching::Options;
use super::onnx::Model;
use crate::error::input;
use anyhow::Result;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The checkpoints to measure, in order, and what was noticed on the way (for stderr).
pub struct CheckpointSet {
    pub checkpoints: Vec<Checkpoint>,
    pub notes: Vec<String>,
}

/// The format tag in the metadata of an optimizer-state file (`probe train` writes it with every
/// checkpoint; here it tells such a file apart from weights).
pub const OPTIMIZER_STATE_FORMAT: &str = "probe-optimizer-state-1";

/// Tensor-name prefixes of optimizer state (`probe train`'s and PyTorch's state-dict slots).
const OPTIMIZER_SLOTS: [&str; 5] = [
    "momentum_buffer/",
    "exp_avg/",
    "exp_avg_sq/",
    "max_exp_avg_sq/",
    "step/",
];

/// Expands, classifies, reads, dedupes and orders the `--ckpt` paths (see the module doc).
pub fn load(paths: &[PathBuf], model: &Model) -> Result<CheckpointSet> {
    load_with(paths, model, &Options::default())
}

/// [`load`] with the checkpoints' names mapped as `opts` says (`--strip-prefix`).
pub fn load_with(paths: &[PathBuf], model: &Model, opts: &Options) -> Result<CheckpointSet> {
    load_shard(paths, model, opts, (0, 1))
}

/// [`load_with`] for checkpoint shard `i/n` (`--shard`): the whole set is ordered from the
/// files' headers and names alone, and only what the shard needs is read: its own checkpoints
/// (every n-th from the i-th), the one before each (`moved`, the W1 distances) and the first
/// (the distances to it). The others are in the set, in their place, as [`Checkpoint::unread`]
/// (path, step and metadata, no tensors). Duplicates are found among the checkpoints read.
pub fn load_shard(
    paths: &[PathBuf],
    model: &Model,
    opts: &Options,
    (shard, shards): (usize, usize),
) -> Result<CheckpointSet> {
    let mut notes = Vec::new();
    let files = expand(paths)?;
    let (optimizer, weights): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|p| is_optimizer_state(p));
    if weights.is_empty() {
        return Err(input(format!(
            "{} (the first of {} file(s) given to --ckpt) holds an optimizer's state, not weights, \
             and so do the others; give the weights (probe train writes them as DIR/step-<n>.safetensors)",
            optimizer[0].display(),
            optimizer.len()
        )));
    }
    if !optimizer.is_empty() {
        notes.push(format!(
            "skipped {} optimizer-state file{} (the first: {}); they are not weights",
            optimizer.len(),
            if optimizer.len() == 1 { "" } else { "s" },
            optimizer[0].display()
        ));
    }

    // Order first, from headers: a file whose header cannot be read gets the step of its name
    // (reading it, if this shard needs it, gives the precise error).
    let mut order: Vec<(PathBuf, i64, BTreeMap<String, String>)> = weights
        .into_iter()
        .map(|p| {
            let metadata = header(&p).map(|h| h.1).unwrap_or_default();
            let step = Checkpoint::step_of(&p, &metadata, opts)?;
            Ok((p, step, metadata))
        })
        .collect::<Result<_>>()?;
    if let Some((p, _, _)) = order.iter().find(|c| c.1 < 0) {
        if order.len() > 1 {
            notes.push(format!(
                "{} has no step (metadata 'step', or a name such as step-<n>, iter_<n>, \
                 checkpoint-<n>; or give --step-from REGEX): the checkpoints are taken in the \
                 order given, and moved/dist_prev compare each with the one given before it",
                p.display()
            ));
        }
    } else {
        order.sort_by_key(|c| c.1);
        if let Some(w) = order.windows(2).find(|w| w[0].1 == w[1].1) {
            notes.push(format!(
                "{} and {} are both step {}: moved/dist_prev compare them in the order given",
                w[0].0.display(),
                w[1].0.display(),
                w[0].1
            ));
        }
    }

    let len = order.len();
    let own = |k: usize| k % shards == shard;
    let needed = |k: usize| k == 0 || own(k) || (k + 1 < len && own(k + 1));
    let mut checkpoints = Vec::with_capacity(order.len());
    let mut errors = Vec::new();
    let mut read = 0;
    for (k, (p, step, metadata)) in order.into_iter().enumerate() {
        if !needed(k) {
            checkpoints.push(Checkpoint::unread(p, step, metadata));
            continue;
        }
        read += 1;
        match Checkpoint::load_with(&p, model, opts) {
            Ok(c) => checkpoints.push(c),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => {}
        1 => return Err(errors.remove(0)),
        n => {
            return Err(input(format!(
                "{n} of the {read} checkpoints cannot be used; the first: {:#}",
                errors[0]
            )))
        }
    }

    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut twice = Vec::new();
    for (k, c) in checkpoints.iter().enumerate().filter(|(_, c)| c.is_read()) {
        if let Some(&j) = seen.get(c.sha256.as_str()) {
            twice.push((j, k));
        } else {
            seen.insert(&c.sha256, k);
        }
    }
    if let Some(&(j, k)) = twice.first() {
        let (a, b) = (&checkpoints[j], &checkpoints[k]);
        return Err(input(format!(
            "{} and {} are the same checkpoint (same sha256, {}){}; give each once",
            a.path.display(),
            b.path.display(),
            &a.sha256[..16.min(a.sha256.len())],
            match twice.len() {
                1 => String::new(),
                n => format!(", and {} more file(s) repeat another", n - 1),
            }
        )));
    }
    Ok(CheckpointSet { checkpoints, notes })
}

/// Folders become their `*.safetensors` files, unexpanded patterns their matches (by name).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let pattern = !p.exists() && name.contains(['*', '?']);
        if !p.is_dir() && !pattern {
            out.push(p.clone());
            continue;
        }
        let (dir, keep): (&Path, Box<dyn Fn(&str) -> bool>) = if pattern {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            (
                dir.unwrap_or(Path::new(".")),
                Box::new(|n: &str| matches(&name, n)),
            )
        } else {
            // Not hidden files: writers' temporaries (`.probe-tmp-...safetensors`, probe train's).
            (
                p.as_path(),
                Box::new(|n: &str| n.ends_with(".safetensors") && !n.starts_with('.')),
            )
        };
        let rd = std::fs::read_dir(dir).map_err(|e| input(format!("{}: {e}", dir.display())))?;
        let mut found: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.path().is_file() && keep(&e.file_name().to_string_lossy()))
            // Beside the path as given, so results name `runs/r/step-..` as a shell would.
            .map(|e| {
                if pattern {
                    p.with_file_name(e.file_name())
                } else {
                    p.join(e.file_name())
                }
            })
            .collect();
        if found.is_empty() {
            return Err(input(if pattern {
                format!("{}: no file matches", p.display())
            } else {
                format!("{}: a folder with no .safetensors files", p.display())
            }));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Shell-style name matching: `*` any run of characters, `?` one character.
fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy with backtracking to the last `*`: linear in practice, never exponential.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Whether the safetensors file at `path` holds an optimizer's state, from its header alone.
/// A file whose header cannot be read is not: reading it as weights gives the precise error.
pub fn is_optimizer_state(path: &Path) -> bool {
    let Some((names, metadata)) = header(path) else {
        return false;
    };
    if metadata.get("format").map(String::as_str) == Some(OPTIMIZER_STATE_FORMAT) {
        return true;
    }
    !names.is_empty()
        && names
            .iter()
            .all(|n| OPTIMIZER_SLOTS.iter().any(|s| n.starts_with(s)))
}

/// A safetensors file's tensor names and metadata: the 8-byte header length, then the JSON.
pub(crate) fn header(path: &Path) -> Option<(Vec<String>, BTreeMap<String, String>)> {
    // Regular files only: opening a FIFO blocks; the weights reader then says what it is.
    let (mut f, len) = super::checkpoint::open_regular(path).ok()?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).ok()?;
    let n = u64::from_le_bytes(n);
    // What the safetensors crate accepts at most, and never more than the file holds.
    if n > 100_000_000 || n > len.saturating_sub(8) {
        return None;
    }
    let mut json = vec![0u8; n as usize];
    f.read_exact(&mut json).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let mut names = Vec::new();
    let mut metadata = BTreeMap::new();
    for (k, v) in v.as_object()? {
        if k == "__metadata__" {
            for (mk, mv) in v.as_object()? {
                metadata.insert(mk.clone(), mv.as_str().unwrap_or_default().to_string());
            }
        } else {
            names.push(k.clone());
        }
    }
    Some((names, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_patterns() {
        for (p, n, want) in [
            ("step-*.safetensors", "step-00000040.safetensors", true),
            ("step-*.safetensors", "step-1.optim.safetensors", true),
            ("step-*.safetensors", "model.safetensors", false),
            ("*.safetensors", "a.safetensors", true),
            ("*.safetensors", "a.safetensors.tmp", false),
            ("step-??.safetensors", "step-40.safetensors", true),
            ("step-??.safetensors", "step-400.safetensors", false),
            ("*", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(matches(p, n), want, "{p} against {n}");
        }
    }

    fn write(path: &Path, names: &[&str], meta: &[(&str, &str)]) {
        let data = [0u8; 4];
        let views: Vec<(String, safetensors::tensor::TensorView)> = names
            .iter()
            .map(|n| {
                let v =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data);
                (n.to_string(), v.unwrap())
            })
            .collect();
        let meta = (!meta.is_empty()).then(|| {
            meta.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        safetensors::tensor::serialize_to_file(views, &meta, path).unwrap();
    }

    #[test]
    fn optimizer_state_is_recognized_by_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases: [(&str, &[&str], &[(&str, &str)], bool); 6] = [
            (
                "weights",
                &["fc.weight", "fc.bias"],
                &[("step", "3")],
                false,
            ),
            ("sgd", &["momentum_buffer/fc.weight"], &[], true),
            (
                "adam",
                &[
                    "exp_avg/fc.weight",
                    "exp_avg_sq/fc.weight",
                    "step/fc.weight",
                ],
                &[],
                true,
            ),
            // SGD without momentum keeps no tensors: the metadata tells.
            (
                "plain_sgd",
                &[],
                &[("format", OPTIMIZER_STATE_FORMAT)],
                true,
            ),
            (
                "mixed",
                &["momentum_buffer/fc.weight", "fc.weight"],
                &[],
                false,
            ),
            ("empty", &[], &[], false),
        ];
        for (name, names, meta, want) in cases {
            let p = d.join(format!("{name}.safetensors"));
            write(&p, names, meta);
            assert_eq!(is_optimizer_state(&p), want, "{name}");
        }
        std::fs::write(
            d.join("junk.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\x7f{}",
        )
        .unwrap();
        assert!(!is_optimizer_state(&d.join("junk.safetensors")));
        assert!(!is_optimizer_state(&d.join("missing.safetensors")));
    }

    #[test]
    fn folders_and_unexpanded_patterns_expand() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for n in ["step-2.safetensors", "step-10.safetensors", "notes.txt"] {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.join("optim")).unwrap();
        let got = expand(&[d.to_path_buf()]).unwrap();
        assert_eq!(
            got,
            [d.join("step-10.safetensors"), d.join("step-2.safetensors")]
        );
        let got = expand(&[d.join("step-?.safetensors"), d.join("notes.txt")]).unwrap();
        assert_eq!(got, [d.join("step-2.safetensors"), d.join("notes.txt")]);
        // A missing plain file stays, for the read to report; a pattern matching nothing fails.
        let missing = d.join("step-3.safetensors");
        assert_eq!(expand(std::slice::from_ref(&missing)).unwrap(), [missing]);
        let e = expand(&[d.join("epoch-*.safetensors")]).unwrap_err();
        assert!(format!("{e}").contains("no file matches"), "{e}");
        let e = expand(&[d.join("optim")]).unwrap_err();
        assert!(format!("{e}").contains("no .safetensors"), "{e}");
    }
}
