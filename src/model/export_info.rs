//! What PyTorch's exporter (`torch.onnx.export(..., dynamo=True)`, checked with torch 2.11) writes
//! about the module it exported, beside the graph itself:
//!
//! - on each initializer's `value_info`, `pkg.torch.export.graph_signature.InputSpec.kind`
//!   (`PARAMETER`, `BUFFER`, `CONSTANT_TENSOR`) and `...InputSpec.persistent` (`True`/`False` for
//!   buffers, `None` otherwise): a buffer registered with `persistent=False` (rotary `inv_freq`,
//!   BERT's `position_ids`, Gemma's `embed_scale`) is in the graph but never in `state_dict()`;
//! - on the graph, `pkg.torch.export.ExportedProgram.graph_signature`: every input of the
//!   exported program in order, e.g. `p_lm_head_weight: PARAMETER target='lm_head.weight'`,
//!   `b_idx: BUFFER target='idx' persistent=False`. It names the state the module had, also what
//!   the graph has no initializer for: a parameter the forward never reads, and one of two *tied*
//!   names (`transformer.wte.weight` and `lm_head.weight` are one tensor; the exporter keeps one
//!   initializer for both, under the name that comes last in this list);
//! - on each node, `pkg.torch.onnx.name_scopes`: the module path the node ran in
//!   (`['', 'transformer', 'transformer.wte', 'embedding']`), which tells a module whose
//!   parameter has no initializer because the module never ran from one whose parameter is tied;
//! - on each node, `pkg.torch.onnx.class_hierarchy`: the class of each of those modules, in the
//!   same order and one longer (the op), e.g. `['transformers.models.vit.modeling_vit.
//!   ViTForImageClassification', 'transformers.models.vit.modeling_vit.ViTModel', ...,
//!   'aten.conv2d.default']`: which Hugging Face class sits where, which tells the names its
//!   `save_pretrained` writes (see `hf_renames`);
//! - on each node, `pkg.torch.onnx.fx_node`: the PyTorch call the node was translated from, e.g.
//!   `%hardtanh : [num_users=1] = call_function[target=torch.ops.aten.hardtanh.default](args =
//!   (%x, 0.0, 6.0), kwargs = {})` ([`FxNode`]): what the ONNX op alone does not say, such as
//!   which of hardtanh and clamp a Clip computes (they differ in their gradient at the bounds) or
//!   an embedding's padding index (`aten.embedding.default` args `(weight, ids, 1)`).
use std::collections::{BTreeMap, HashMap, HashSet};

/// What an initializer is to the module it was exported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Trained by the optimizer (`nn.Parameter`).
    Parameter,
    /// State that is not trained by gradients (BatchNorm running statistics).
    Buffer,
    /// Part of the architecture (shape constants, masks): never in a checkpoint.
    Constant,
}

pub const ROLE_KEY: &str = "pkg.torch.export.graph_signature.InputSpec.kind";
const PERSISTENT_KEY: &str = "pkg.torch.export.graph_signature.InputSpec.persistent";
const SIGNATURE_KEY: &str = "pkg.torch.export.ExportedProgram.graph_signature";
const SCOPES_KEY: &str = "pkg.torch.onnx.name_scopes";
const FX_NODE_KEY: &str = "pkg.torch.onnx.fx_node";
const CLASSES_KEY: &str = "pkg.torch.onnx.class_hierarchy";

/// The PyTorch call an ONNX node was exported from (`pkg.torch.onnx.fx_node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FxNode {
    /// The ATen overload without `torch.ops.`, e.g. `aten.hardtanh.default`.
    pub target: String,
    /// The positional arguments as printed (`%x`, `0.0`, `None`, `[1, 2]`), in order.
    pub args: Vec<String>,
}

impl FxNode {
    /// The node's record, when the exporter wrote one for a `call_function`.
    pub fn of(node: &onnx_protobuf::NodeProto) -> Option<FxNode> {
        let m = node.metadata_props.iter().find(|m| m.key == FX_NODE_KEY)?;
        parse_fx_node(&m.value)
    }

    /// The op's name without namespace and overload: `hardtanh` for `aten.hardtanh.default`.
    pub fn op(&self) -> &str {
        let t = self.target.strip_prefix("aten.").unwrap_or(&self.target);
        t.split('.').next().unwrap_or(t)
    }
}

/// `... = call_function[target=torch.ops.aten.embedding.default](args = (%w, %x, 1), kwargs =
/// {})` -> target `aten.embedding.default`, args `["%w", "%x", "1"]`.
pub fn parse_fx_node(text: &str) -> Option<FxNode> {
    let t = text.split_once("call_function[target=")?.1;
    let (target, rest) = t.split_once(']')?;
    let target = target
        .strip_prefix("torch.ops.")
        .unwrap_or(target)
        .to_string();
    let inner = rest.split_once("(args = (")?.1;
    // The argument tuple ends at the parenthesis that closes it; commas split it only outside
    // brackets (a list argument `[1, 2]`).
    let (mut depth, mut args, mut cur) = (0i32, Vec::new(), String::new());
    for ch in inner.chars() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        args.push(cur.trim().to_string());
    }
    Some(FxNode { target, args })
}

/// One state input of the exported program, in the exporter's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// The state-dict name (`target='...'`).
    pub target: String,
    pub role: Role,
    /// False only for a buffer registered with `persistent=False`.
    pub persistent: bool,
}

/// The exporter's records, as far as probe uses them.
#[derive(Debug, Clone, Default)]
pub struct ExportInfo {
    /// Role and persistence of each initializer that carries the exporter's metadata.
    pub roles: HashMap<String, (Role, bool)>,
    /// The program's state inputs (parameters, buffers, constants), in order.
    pub signature: Vec<SignatureEntry>,
    /// Every module path some node ran in; empty when the graph records none.
    pub scopes: HashSet<String>,
    /// The class of each module that ran, by module path (`""` is the exported module), without
    /// its Python package: `ViTModel` for `transformers.models.vit.modeling_vit.ViTModel`.
    pub classes: BTreeMap<String, String>,
}

fn role_of(kind: &str) -> Role {
    match kind {
        "PARAMETER" => Role::Parameter,
        "BUFFER" => Role::Buffer,
        _ => Role::Constant,
    }
}

impl ExportInfo {
    pub fn of(g: &onnx_protobuf::GraphProto) -> ExportInfo {
        let mut info = ExportInfo::default();
        for v in &g.value_info {
            let prop = |k: &str| v.metadata_props.iter().find(|m| m.key == k);
            if let Some(m) = prop(ROLE_KEY) {
                let persistent = prop(PERSISTENT_KEY).is_none_or(|p| p.value != "False");
                info.roles
                    .insert(v.name.clone(), (role_of(&m.value), persistent));
            }
        }
        if let Some(m) = g.metadata_props.iter().find(|m| m.key == SIGNATURE_KEY) {
            info.signature = parse_signature(&m.value);
        }
        for n in &g.node {
            let prop = |k: &str| n.metadata_props.iter().find(|m| m.key == k);
            if let Some(m) = prop(SCOPES_KEY) {
                info.scopes.extend(parse_scopes(&m.value));
                if let Some(c) = prop(CLASSES_KEY) {
                    info.classes.extend(module_classes(&m.value, &c.value));
                }
            }
        }
        info
    }

    /// Whether module `module` (a dotted path) ran in the graph; `None` when the graph records
    /// no scopes to tell.
    pub fn module_ran(&self, module: &str) -> Option<bool> {
        (!self.scopes.is_empty()).then(|| self.scopes.contains(module))
    }

    /// The signature's position of `target`, if it is listed.
    pub fn position(&self, target: &str) -> Option<usize> {
        self.signature.iter().position(|e| e.target == target)
    }
}

/// The `# inputs` section of a printed `ExportGraphSignature`: one `name: KIND target='t'
/// [persistent=False]` line per input; user inputs (no target) are left out.
pub fn parse_signature(text: &str) -> Vec<SignatureEntry> {
    let mut out = Vec::new();
    let mut inputs = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            inputs = line == "# inputs";
            continue;
        }
        if !inputs {
            continue;
        }
        let Some((_, rest)) = line.split_once(": ") else {
            continue;
        };
        let kind = rest.split_whitespace().next().unwrap_or_default();
        let Some(start) = rest.find("target='") else {
            continue;
        };
        let t = &rest[start + "target='".len()..];
        // The target ends at the quote that ends the field (names hold no quote in practice).
        let end = t
            .find("' ")
            .or_else(|| t.ends_with('\'').then(|| t.len() - 1));
        let Some(end) = end else { continue };
        out.push(SignatureEntry {
            target: t[..end].to_string(),
            role: role_of(kind),
            persistent: !t[end..].contains("persistent=False"),
        });
    }
    out
}

/// The quoted strings of a printed Python list of strings, empty ones included.
fn parse_list(text: &str) -> impl Iterator<Item = &str> {
    text.split('\'').skip(1).step_by(2)
}

/// `"['', 'transformer', 'transformer.wte', 'embedding']"` -> its non-empty strings.
fn parse_scopes(text: &str) -> Vec<String> {
    parse_list(text)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A node's module paths and their classes side by side; the last of each names the op, not a
/// module, and is left out. Lists of unequal length (not as torch 2.11 writes them) give nothing.
fn module_classes(scopes: &str, classes: &str) -> Vec<(String, String)> {
    let s: Vec<&str> = parse_list(scopes).collect();
    let c: Vec<&str> = parse_list(classes).collect();
    if s.len() != c.len() || s.is_empty() {
        return vec![];
    }
    s.iter()
        .zip(&c)
        .take(s.len() - 1)
        .map(|(m, c)| (m.to_string(), c.rsplit('.').next().unwrap_or(c).to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_lines_as_torch_2_11_prints_them() {
        let text = "\n# inputs\np_transformer_wte_weight: PARAMETER target='transformer.wte.weight'\n\
                    p_lm_head_weight: PARAMETER target='lm_head.weight'\n\
                    b_model_rotary_emb_inv_freq: BUFFER target='model.rotary_emb.inv_freq' persistent=False\n\
                    b_idx: BUFFER target='idx' persistent=True\n\
                    c_c: CONSTANT_TENSOR target='c'\n\
                    input_ids: USER_INPUT\n\n# outputs\nlinear: USER_OUTPUT\n";
        let s = parse_signature(text);
        let got: Vec<(&str, Role, bool)> = s
            .iter()
            .map(|e| (e.target.as_str(), e.role, e.persistent))
            .collect();
        assert_eq!(
            got,
            [
                ("transformer.wte.weight", Role::Parameter, true),
                ("lm_head.weight", Role::Parameter, true),
                ("model.rotary_emb.inv_freq", Role::Buffer, false),
                ("idx", Role::Buffer, true),
                ("c", Role::Constant, true),
            ]
        );
    }

    #[test]
    fn fx_nodes_as_torch_2_11_writes_them() {
        let relu6 = "%hardtanh : [num_users=1] = call_function[target=torch.ops.aten.hardtanh.default](args = (%x, 0.0, 6.0), kwargs = {})";
        let f = parse_fx_node(relu6).unwrap();
        assert_eq!(f.target, "aten.hardtanh.default");
        assert_eq!(f.op(), "hardtanh");
        assert_eq!(f.args, ["%x", "0.0", "6.0"]);
        let emb = "%embedding : [num_users=1] = call_function[target=torch.ops.aten.embedding.default](args = (%p_e_weight, %x), kwargs = {})";
        assert_eq!(parse_fx_node(emb).unwrap().args, ["%p_e_weight", "%x"]);
        let list = "%v : [num_users=1] = call_function[target=torch.ops.aten.view.default](args = (%x, [-1, 4]), kwargs = {})";
        assert_eq!(parse_fx_node(list).unwrap().args, ["%x", "[-1, 4]"]);
        let none = "%c : [num_users=1] = call_function[target=torch.ops.aten.clamp.default](args = (%x, None, 1.0), kwargs = {})";
        assert_eq!(parse_fx_node(none).unwrap().args, ["%x", "None", "1.0"]);
        assert_eq!(
            parse_fx_node("%x : [num_users=2] = placeholder[target=x]"),
            None
        );
    }

    #[test]
    fn scopes_of_a_node() {
        assert_eq!(
            parse_scopes("['', 'transformer', 'transformer.wte', 'embedding']"),
            ["transformer", "transformer.wte", "embedding"]
        );
        assert!(parse_scopes("[]").is_empty());
    }

    #[test]
    fn classes_of_a_nodes_modules() {
        let got = module_classes(
            "['', 'vit', 'vit.embeddings', 'conv2d']",
            "['transformers.models.vit.modeling_vit.ViTForImageClassification', \
             'transformers.models.vit.modeling_vit.ViTModel', \
             'transformers.models.vit.modeling_vit.ViTEmbeddings', 'aten.conv2d.default']",
        );
        let want = [
            ("", "ViTForImageClassification"),
            ("vit", "ViTModel"),
            ("vit.embeddings", "ViTEmbeddings"),
        ];
        assert_eq!(
            got,
            want.map(|(m, c)| (m.to_string(), c.to_string())).to_vec()
        );
        assert!(module_classes("['', 'a', 'x']", "['A', 'x']").is_empty());
    }
}
