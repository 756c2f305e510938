//! The tensor names Hugging Face transformers writes with `save_pretrained`, where they are not the
//! module's `state_dict()` names (which the ONNX export's initializers carry).
//!
//! transformers 5 renamed the parameters of some classes (ViT's
//! `encoder.layer.N.attention.attention.query` is now `layers.N.attention.q_proj`; GPT-NeoX's
//! `embed_out` is `lm_head`) and keeps the checkpoints in their original names: `save_pretrained`
//! writes the old names and `from_pretrained` renames them back, with the `WeightRenaming`s of
//! `transformers/conversion_mapping.py` (`_build_checkpoint_conversion_mapping`). A class's
//! renamings apply within the module where that class sits (transformers' `scope_prefix`), in
//! the order listed, each one to the first occurrence of its pattern, one after the other on the
//! same name; then the `"legacy"` ones (TensorFlow-era `LayerNorm.gamma`/`beta`, weight norm's
//! `weight_g`/`weight_v` from before parametrizations) apply to every name.
//!
//! The graph says which class sits where (`pkg.torch.onnx.class_hierarchy`, see
//! `export_info`). A name is renamed only when the model has no tensor of that name and the
//! renamed one is the model's; every renaming is told in one note. Not here: classes whose
//! conversion also reshapes tensors (merged MoE experts, split fused projections) or moves a
//! prefix (ViTMSN), and transformers' adding or removing a `base_model_prefix` when a base
//! model's checkpoint meets a task model (the prefix hint of `matching` names that case).
//!
//! Table as of transformers 5.23; each class in it was checked by saving a tiny random model
//! with `save_pretrained` and comparing the file's names with `state_dict()`'s.
use std::collections::{BTreeMap, HashSet};

/// One `WeightRenaming`, as transformers applies it when it loads a checkpoint: the first
/// occurrence of `from` (at the start of the name, for a pattern anchored with `^`) becomes `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rename {
    pub from: &'static str,
    pub to: &'static str,
    pub at_start: bool,
}

const fn anywhere(from: &'static str, to: &'static str) -> Rename {
    Rename {
        from,
        to,
        at_start: false,
    }
}

const fn at_start(from: &'static str, to: &'static str) -> Rename {
    Rename {
        from,
        to,
        at_start: true,
    }
}

impl Rename {
    fn apply(&self, name: &str) -> Option<String> {
        if self.at_start {
            return name
                .strip_prefix(self.from)
                .map(|rest| format!("{}{rest}", self.to));
        }
        let i = name.find(self.from)?;
        Some(format!(
            "{}{}{}",
            &name[..i],
            self.to,
            &name[i + self.from.len()..]
        ))
    }
}

/// `ViTModel`'s renamings, which transformers also gives the classes it maps to them
/// (`_MODEL_TO_CONVERSION_PATTERN`).
const VIT: &[Rename] = &[
    anywhere("encoder.layer.", "layers."),
    anywhere("attention.query", "q_proj"),
    anywhere("attention.key", "k_proj"),
    anywhere("attention.value", "v_proj"),
    anywhere("attention.output.dense", "attention.o_proj"),
    anywhere("intermediate.dense", "mlp.fc1"),
    anywhere("output.dense", "mlp.fc2"),
];

/// The renamings of each class, under the class name transformers keys them by.
pub const CLASSES: &[(&str, &[Rename])] = &[
    ("GPTNeoXForCausalLM", &[at_start("embed_out.", "lm_head.")]),
    ("ViTModel", VIT),
    ("DeiTModel", VIT),
    ("ViTMAEModel", VIT),
    ("IJepaModel", VIT),
    ("ASTModel", VIT),
    ("VivitModel", VIT),
];

/// transformers' `"legacy"` renamings, applied after the classes' to every name.
pub const LEGACY: &[Rename] = &[
    anywhere("LayerNorm.gamma", "LayerNorm.weight"),
    anywhere("LayerNorm.beta", "LayerNorm.bias"),
    anywhere(".weight_g", ".parametrizations.weight.original0"),
    anywhere(".weight_v", ".parametrizations.weight.original1"),
];

/// A renaming where it applies: under module `scope` (`""`: everywhere), from `class`.
struct Scoped {
    scope: String,
    class: &'static str,
    rule: Rename,
}

/// The renamings for a graph whose modules have `classes` (module path -> class), in the order
/// transformers applies them: module by module from the root, a class's rules in its order,
/// then the legacy ones. A module inside one of the same class takes none (its ancestor's
/// already cover it, as in transformers).
fn rules(classes: &BTreeMap<String, String>) -> Vec<Scoped> {
    let mut out = Vec::new();
    let mut claimed: Vec<(&str, &str)> = Vec::new();
    for (module, class) in classes {
        let Some((class, renames)) = CLASSES.iter().find(|(c, _)| c == class) else {
            continue;
        };
        let inside = |m: &str| m.is_empty() || module.starts_with(&format!("{m}."));
        if claimed.iter().any(|(m, c)| c == class && inside(m)) {
            continue;
        }
        claimed.push((module, class));
        out.extend(renames.iter().map(|&rule| Scoped {
            scope: module.clone(),
            class,
            rule,
        }));
    }
    out.extend(LEGACY.iter().map(|&rule| Scoped {
        scope: String::new(),
        class: "legacy",
        rule,
    }));
    out
}

/// `name` through every renaming in turn, and the indices of those that changed it.
fn apply(rules: &[Scoped], name: &str) -> (String, Vec<usize>) {
    let mut name = name.to_string();
    let mut fired = Vec::new();
    for (k, r) in rules.iter().enumerate() {
        let (head, rest) = if r.scope.is_empty() {
            ("", name.as_str())
        } else {
            match name
                .strip_prefix(&r.scope)
                .and_then(|s| s.strip_prefix('.'))
            {
                Some(rest) => (&name[..r.scope.len() + 1], rest),
                None => continue,
            }
        };
        if let Some(new) = r.rule.apply(rest) {
            name = format!("{head}{new}");
            fired.push(k);
        }
    }
    (name, fired)
}

/// What the renamings made of a checkpoint's names.
#[derive(Debug, Default)]
pub struct Renamed {
    /// `(index into the names, the model's name)` for each name renamed.
    pub renamed: Vec<(usize, String)>,
    /// Names a renaming would put onto a name the checkpoint has as well, or two names put onto
    /// one: left as they are, each said here.
    pub clashes: Vec<String>,
    /// What was renamed, for the log; `None` when nothing was.
    pub note: Option<String>,
}

/// Renames the checkpoint's `names` that `known` (the model's state names) lacks, as
/// transformers would for a graph with module `classes` (see the module doc).
pub fn rename(
    classes: &BTreeMap<String, String>,
    names: &[&str],
    known: impl Fn(&str) -> bool,
) -> Renamed {
    let rules = rules(classes);
    let mut candidates: Vec<(usize, String, Vec<usize>)> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| !known(n))
        .filter_map(|(i, n)| {
            let (new, fired) = apply(&rules, n);
            (!fired.is_empty() && known(&new)).then_some((i, new, fired))
        })
        .collect();
    // safetensors lists names in hash order: sorted, the same file gives the same note.
    candidates.sort_by(|a, b| names[a.0].cmp(names[b.0]));
    let given: HashSet<&str> = names.iter().copied().filter(|n| known(n)).collect();
    let mut onto: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (i, new, _) in &candidates {
        onto.entry(new.clone()).or_default().push(names[*i]);
    }
    let mut out = Renamed::default();
    for (new, olds) in &onto {
        if given.contains(new.as_str()) {
            out.clashes.extend(olds.iter().map(|old| {
                format!(
                    "'{old}' is '{new}' as transformers renames it, and the checkpoint has \
                     '{new}' too: cannot tell which to take"
                )
            }));
        } else if olds.len() > 1 {
            let olds: Vec<String> = olds.iter().map(|o| format!("'{o}'")).collect();
            out.clashes.push(format!(
                "{} are all '{new}' as transformers renames them: cannot tell which to take",
                olds.join(", ")
            ));
        }
    }
    candidates.retain(|(_, new, _)| !given.contains(new.as_str()) && onto[new].len() == 1);
    if candidates.is_empty() {
        return out;
    }
    out.note = Some(note(&rules, names, &candidates));
    out.renamed = candidates.into_iter().map(|(i, new, _)| (i, new)).collect();
    out
}

/// `renamed 1 tensor name(s) as transformers' from_pretrained does (GPTNeoXForCausalLM:
/// 'embed_out.' -> 'lm_head.' 1x): embed_out.weight -> lm_head.weight`; past three names, the
/// first and a count.
fn note(rules: &[Scoped], names: &[&str], renamed: &[(usize, String, Vec<usize>)]) -> String {
    let mut uses = vec![0usize; rules.len()];
    for k in renamed.iter().flat_map(|(_, _, fired)| fired) {
        uses[*k] += 1;
    }
    // One group per class and scope, in the rules' order.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (r, &n) in rules.iter().zip(&uses).filter(|(_, &n)| n > 0) {
        let label = match r.scope.as_str() {
            "" => r.class.to_string(),
            s => format!("{} at '{s}.'", r.class),
        };
        let what = format!(
            "'{}{}' -> '{}' {n}x",
            if r.rule.at_start { "^" } else { "" },
            r.rule.from,
            r.rule.to
        );
        match groups.last_mut() {
            Some((l, w)) if *l == label => w.push(what),
            _ => groups.push((label, vec![what])),
        }
    }
    let groups: Vec<String> = groups
        .into_iter()
        .map(|(l, w)| format!("{l}: {}", w.join(", ")))
        .collect();
    let pairs: Vec<String> = renamed
        .iter()
        .map(|(i, new, _)| format!("{} -> {new}", names[*i]))
        .collect();
    let listed = match pairs.len() {
        0..=3 => pairs.join(", "),
        n => format!("{} and {} more", pairs[0], n - 1),
    };
    format!(
        "renamed {} tensor name(s) as transformers' from_pretrained does ({}): {listed}",
        renamed.len(),
        groups.join("; ")
    )
}
