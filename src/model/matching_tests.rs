//! Checkpoints as users save them, against a small graph that carries the metadata PyTorch 2.11's
//! exporter writes (roles, persistence, the program's signature, node scopes): tied weights under
//! one name or two, non-persistent and integer buffers, a parameter that is never read, a DDP
//! prefix, a `torch.save` file, a fixed batch axis; and, against graphs that say their modules'
//! classes, the original names transformers' `save_pretrained` writes (ViT, GPT-NeoX, legacy).
use super::*;
use crate::model::graph::{tensor_f32, tensor_i64, value_info};
use crate::model::{Checkpoint, Model};
use onnx_protobuf::{ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto};
use std::path::PathBuf;

fn prop(k: &str, v: &str) -> StringStringEntryProto {
    let mut p = StringStringEntryProto::new();
    p.key = k.into();
    p.value = v.into();
    p
}

/// The state of the test module, as `(name, kind, persistent, dtype, shape)` in the order of the
/// exporter's signature; `tied`/`unused` entries are listed there but have no initializer.
const SIGNATURE: &str = "\n# inputs\n\
    p_emb_weight: PARAMETER target='emb.weight'\n\
    p_unused_weight: PARAMETER target='unused.weight'\n\
    p_a_weight: PARAMETER target='a.weight'\n\
    p_head_weight: PARAMETER target='head.weight'\n\
    b_rot_inv_freq: BUFFER target='rot.inv_freq' persistent=False\n\
    b_bn_running_mean: BUFFER target='bn.running_mean' persistent=True\n\
    b_idx: BUFFER target='idx' persistent=True\n\
    b_pos: BUFFER target='pos' persistent=False\n\
    b_small: BUFFER target='small' persistent=True\n\
    x: USER_INPUT\n\n# outputs\ny: USER_OUTPUT\n";

/// A model whose graph holds `a.weight` [4, 4], `head.weight` [5, 4] (also read by module `emb`:
/// `emb.weight` is tied to it), `rot.inv_freq` (non-persistent), `bn.running_mean`, `idx` (int64),
/// `pos` (int64, non-persistent), `small` (int32); `unused` never runs. `batch` fixes the input's
/// first axis when given.
fn write_model(dir: &Path, batch: Option<i64>) -> PathBuf {
    let mut g = onnx_protobuf::GraphProto::new();
    g.name = "m".into();
    let init: Vec<(onnx_protobuf::TensorProto, &str, &str)> = vec![
        (
            tensor_f32("a.weight", &[4, 4], &[0.5; 16]),
            "PARAMETER",
            "None",
        ),
        (
            tensor_f32("head.weight", &[5, 4], &[0.25; 20]),
            "PARAMETER",
            "None",
        ),
        (
            tensor_f32("rot.inv_freq", &[2], &[1.0, 0.1]),
            "BUFFER",
            "False",
        ),
        (
            tensor_f32("bn.running_mean", &[4], &[0.0; 4]),
            "BUFFER",
            "True",
        ),
        (tensor_i64("idx", &[4], &[0, 1, 2, 3]), "BUFFER", "True"),
        (tensor_i64("pos", &[4], &[3, 2, 1, 0]), "BUFFER", "False"),
        (
            {
                let mut t = tensor_i64("small", &[2], &[]);
                t.data_type = DType::I32.onnx();
                t.raw_data = [7i32, 8].iter().flat_map(|v| v.to_le_bytes()).collect();
                t
            },
            "BUFFER",
            "True",
        ),
    ];
    for (t, kind, persistent) in init {
        let dims: Vec<Option<i64>> = t.dims.iter().map(|&d| Some(d)).collect();
        let dtype = DType::from_onnx(t.data_type).unwrap();
        let mut v = value_info(&t.name, dtype, &dims, "N");
        v.metadata_props
            .push(prop(super::super::export_info::ROLE_KEY, kind));
        v.metadata_props.push(prop(
            "pkg.torch.export.graph_signature.InputSpec.persistent",
            persistent,
        ));
        g.value_info.push(v);
        g.initializer.push(t);
    }
    g.metadata_props.push(prop(
        "pkg.torch.export.ExportedProgram.graph_signature",
        SIGNATURE,
    ));
    g.input
        .push(value_info("x", DType::F32, &[batch, Some(4)], "N"));
    // One node per module scope that runs; each reads its tensors (the values do not matter).
    let scoped = [
        ("emb", "head.weight"),
        ("a", "a.weight"),
        ("head", "head.weight"),
        ("rot", "rot.inv_freq"),
        ("bn", "bn.running_mean"),
        ("idx", "idx"),
        ("pos", "pos"),
        ("small", "small"),
    ];
    for (k, (scope, input)) in scoped.iter().enumerate() {
        let mut n = NodeProto::new();
        n.op_type = "Identity".into();
        n.input = vec![input.to_string()];
        n.output = vec![format!("o{k}")];
        n.metadata_props.push(prop(
            "pkg.torch.onnx.name_scopes",
            &format!("['', '{scope}', 'identity_{k}']"),
        ));
        g.node.push(n);
        g.output
            .push(value_info(&format!("o{k}"), DType::F32, &[], "N"));
    }
    let mut m = ModelProto::new();
    m.ir_version = 10;
    let mut o = OperatorSetIdProto::new();
    o.version = 20;
    m.opset_import.push(o);
    m.graph = protobuf::MessageField::some(g);
    let path = dir.join("m.onnx");
    std::fs::write(&path, protobuf::Message::write_to_bytes(&m).unwrap()).unwrap();
    path
}

#[derive(Clone)]
enum V {
    F(Vec<f32>),
    I(Vec<i64>),
    I32(Vec<i32>),
}

fn write_ckpt(path: &Path, tensors: &[(&str, Vec<usize>, V)]) {
    let bytes: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let (d, b) = match v {
                V::F(v) => (
                    safetensors::Dtype::F32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                V::I(v) => (
                    safetensors::Dtype::I64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                V::I32(v) => (
                    safetensors::Dtype::I32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
            };
            (n.to_string(), s.clone(), d, b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, d, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, &None, path).unwrap();
}

/// `state_dict()` of the module at a later step: every persistent name, the tied pair twice.
fn state_dict() -> Vec<(&'static str, Vec<usize>, V)> {
    let head: Vec<f32> = (0..20).map(|i| i as f32 / 8.0).collect();
    vec![
        ("emb.weight", vec![5, 4], V::F(head.clone())),
        ("unused.weight", vec![5, 4], V::F(vec![9.0; 20])),
        ("a.weight", vec![4, 4], V::F(vec![1.5; 16])),
        ("head.weight", vec![5, 4], V::F(head)),
        ("bn.running_mean", vec![4], V::F(vec![0.1; 4])),
        ("idx", vec![4], V::I(vec![3, 3, 3, 3])),
        ("small", vec![2], V::I32(vec![7, 8])),
        ("bn.num_batches_tracked", vec![], V::I(vec![12])),
    ]
}

struct Case {
    dir: tempfile::TempDir,
    model: Model,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::load(&write_model(dir.path(), None)).unwrap();
        Case { dir, model }
    }
    fn load(&self, tensors: &[(&str, Vec<usize>, V)], opts: &Options) -> Result<Checkpoint> {
        let p = self.dir.path().join("c.safetensors");
        write_ckpt(&p, tensors);
        Checkpoint::load_with(&p, &self.model, opts)
    }
    fn refused(&self, tensors: &[(&str, Vec<usize>, V)], opts: &Options) -> String {
        let e = self.load(tensors, opts).err().expect("refused");
        assert_eq!(
            crate::error::fault_of(&e),
            Some(crate::error::Fault::Input),
            "{e:#}"
        );
        format!("{e:#}")
    }
}

fn f32s(c: &Checkpoint, n: &str) -> Vec<f32> {
    c.tensors[n].as_f32().unwrap().to_vec()
}

#[test]
fn the_exporters_metadata_gives_roles_and_persistence() {
    let c = Case::new();
    let p = |n: &str| c.model.param(n).unwrap().clone();
    assert_eq!(
        (p("a.weight").role, p("a.weight").persistent),
        (Role::Parameter, true)
    );
    assert_eq!(
        (p("rot.inv_freq").role, p("rot.inv_freq").persistent),
        (Role::Buffer, false)
    );
    assert_eq!((p("idx").role, p("idx").persistent), (Role::Buffer, true));
    assert_eq!(c.model.export.signature.len(), 9);
    assert_eq!(c.model.export.module_ran("emb"), Some(true));
    assert_eq!(c.model.export.module_ran("unused"), Some(false));
}

#[test]
fn state_dict_with_tied_names_twice_fits() {
    let c = Case::new();
    let ck = c.load(&state_dict(), &Options::default()).unwrap();
    let head: Vec<f32> = (0..20).map(|i| i as f32 / 8.0).collect();
    assert_eq!(f32s(&ck, "head.weight"), head);
    assert_eq!(f32s(&ck, "a.weight"), vec![1.5; 16]);
    // Non-persistent buffers from the ONNX file; int64 buffers as the checkpoint gives them.
    assert_eq!(f32s(&ck, "rot.inv_freq"), vec![1.0, 0.1]);
    assert_eq!(ck.tensors["pos"].as_i64().unwrap(), [3, 2, 1, 0]);
    assert_eq!(ck.tensors["idx"].as_i64().unwrap(), [3, 3, 3, 3]);
    assert!(!ck.tensors.contains_key("emb.weight"));
    assert!(!ck.tensors.contains_key("unused.weight"));
    let notes = ck.notes.join("\n");
    for want in [
        "'emb.weight' = 'head.weight'",
        "2 non-persistent buffer(s) from the ONNX file (state_dict() leaves them out): rot.inv_freq, pos",
        "graph does not read: unused.weight",
        "integer buffer(s) the ONNX graph does not use: bn.num_batches_tracked",
    ] {
        assert!(notes.contains(want), "{want} not in\n{notes}");
    }
}

/// With the model's parameter values released (`probe grad` after its first checkpoint), a
/// checkpoint still loads the same (its non-persistent buffers from the ONNX file), and the
/// released values are refused, not read as empty.
#[test]
fn checkpoints_load_after_the_parameters_are_released() {
    let mut c = Case::new();
    let before = c.load(&state_dict(), &Options::default()).unwrap();
    c.model.release_parameters();
    let after = c.load(&state_dict(), &Options::default()).unwrap();
    assert_eq!(before.tensors, after.tensors);
    let e = c.model.initializer("a.weight").unwrap_err();
    assert!(format!("{e}").contains("'a.weight' were released"), "{e}");
    assert_eq!(
        c.model
            .initializer("rot.inv_freq")
            .unwrap()
            .as_f32()
            .unwrap(),
        [1.0, 0.1]
    );
    let a = c
        .model
        .graph()
        .initializer
        .iter()
        .find(|t| t.name == "a.weight")
        .unwrap();
    assert!(a.raw_data.is_empty() && a.float_data.is_empty());
}

#[test]
fn one_name_of_a_tied_pair_fills_the_graphs_tensor() {
    // safetensors.torch.save_model and save_pretrained keep one name of the pair.
    let c = Case::new();
    let mut t = state_dict();
    t.retain(|(n, _, _)| *n != "head.weight");
    let ck = c.load(&t, &Options::default()).unwrap();
    let head: Vec<f32> = (0..20).map(|i| i as f32 / 8.0).collect();
    assert_eq!(f32s(&ck, "head.weight"), head);
    assert!(
        ck.notes
            .join(" ")
            .contains("'head.weight' from its tied name 'emb.weight'"),
        "{:?}",
        ck.notes
    );
}

#[test]
fn tied_names_with_different_values_are_refused_naming_both() {
    let c = Case::new();
    let mut t = state_dict();
    t[0].2 = V::F(vec![0.0; 20]);
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains("'emb.weight' and 'head.weight' are one tied tensor in the model")
            && line.contains("differ in the checkpoint"),
        "{line}"
    );
}

#[test]
fn a_missing_parameter_or_persistent_buffer_is_still_refused() {
    let c = Case::new();
    let mut t = state_dict();
    t.retain(|(n, _, _)| *n != "a.weight" && *n != "bn.running_mean" && *n != "idx");
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains("missing 3 of the model's tensors: a.weight, bn.running_mean, idx"),
        "{line}"
    );
}

#[test]
fn integer_buffers_other_than_int64_must_equal_the_onnx_files() {
    let c = Case::new();
    let mut t = state_dict();
    t[6].2 = V::I32(vec![7, 9]);
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains("'small' (int32) differs from its values in the ONNX file"),
        "{line}"
    );
}

#[test]
fn a_common_prefix_is_named_with_the_flag_and_the_flag_strips_it() {
    let c = Case::new();
    let mut t = state_dict();
    let names: Vec<String> = t.iter().map(|(n, _, _)| format!("module.{n}")).collect();
    for (e, n) in t.iter_mut().zip(&names) {
        e.0 = n;
    }
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains(
            "its tensor names start with 'module.' (as DistributedDataParallel saves them)"
        ) && line.contains("give --strip-prefix module. (then it fits)"),
        "{line}"
    );
    // No BatchNorm-folding hint and no list of every name.
    assert!(
        !line.contains("folded") && !line.contains("module.a.weight"),
        "{line}"
    );
    let strip = Options {
        strip_prefix: Some("module.".into()),
        ..Default::default()
    };
    let ck = c.load(&t, &strip).unwrap();
    assert_eq!(f32s(&ck, "a.weight"), vec![1.5; 16]);
    assert!(
        ck.notes[0].contains("stripped the prefix 'module.' from 8"),
        "{:?}",
        ck.notes
    );
    // With the prefix and a real problem, both are said.
    t.retain(|(n, _, _)| *n != "module.a.weight");
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains("give --strip-prefix module. (with it, still: missing 1 of the model's tensors: a.weight)"),
        "{line}"
    );
    // A prefix the names do not carry is said so.
    let line = c.refused(
        &state_dict()[..2],
        &Options {
            strip_prefix: Some("_orig_mod.".into()),
            ..Default::default()
        },
    );
    assert!(
        line.contains("--strip-prefix '_orig_mod.' matched none of its names"),
        "{line}"
    );
}

#[test]
fn prefixes_found_in_either_direction() {
    let model: std::collections::HashSet<&str> = ["conv.weight", "fc.bias"].into();
    let ckpt = ["module._orig_mod.conv.weight", "module._orig_mod.fc.bias"];
    assert_eq!(
        common_prefix(&ckpt, |n| model.contains(n)).as_deref(),
        Some("module._orig_mod.")
    );
    assert_eq!(
        common_prefix(&["head2.weight"], |n| model.contains(n)),
        None
    );
    assert_eq!(common_prefix(&[], |n| model.contains(n)), None);
}

#[test]
fn a_torch_save_file_gets_the_conversion_hint() {
    let c = Case::new();
    for (name, bytes) in [
        ("m.pt", b"PK\x03\x04rest of a zip".to_vec()),
        ("old.pt", b"\x80\x02}q\x00(X".to_vec()),
    ] {
        let p = c.dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = format!("{:#}", Checkpoint::load(&p, &c.model).err().unwrap());
        assert!(
            e.contains("not a safetensors file: a ")
                && e.contains("torch.save")
                && e.contains("safetensors.torch.save_file(model.state_dict(), path)"),
            "{e}"
        );
    }
}

#[test]
fn a_fixed_batch_axis_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&write_model(dir.path(), Some(2))).unwrap();
    let e = format!("{:#}", m.data_input().unwrap_err());
    assert!(
        e.contains("input 'x' has a fixed batch size of 2 (shape [2, 4])")
            && e.contains("dynamic_shapes=({0: torch.export.Dim(\"N\")},)"),
        "{e}"
    );
    let m = Model::load(&write_model(dir.path(), None)).unwrap();
    assert!(m.data_input().is_ok());
}

/// A model of float parameters `params` (name, shape, all ones) whose modules have the classes
/// `classes` (module path, class; `""` is the exported module), as a transformers model exports:
/// each parameter read by a node that ran in its module, whose `class_hierarchy` names the class
/// of every module on the way (`Linear` where `classes` gives none).
fn write_classed_model(dir: &Path, params: &[(&str, &[i64])], classes: &[(&str, &str)]) -> PathBuf {
    let mut g = onnx_protobuf::GraphProto::new();
    g.name = "m".into();
    let mut signature = String::from("\n# inputs\n");
    for (k, (name, dims)) in params.iter().enumerate() {
        let n: usize = dims.iter().product::<i64>() as usize;
        let t = tensor_f32(name, dims, &vec![1.0; n]);
        let d: Vec<Option<i64>> = dims.iter().map(|&d| Some(d)).collect();
        let mut v = value_info(name, DType::F32, &d, "N");
        v.metadata_props
            .push(prop(super::super::export_info::ROLE_KEY, "PARAMETER"));
        g.value_info.push(v);
        g.initializer.push(t);
        signature.push_str(&format!("p_{k}: PARAMETER target='{name}'\n"));
        // The module path and each of its ancestors, the root first.
        let module = name.rsplit_once('.').map_or("", |(m, _)| m);
        let mut scopes = vec![String::new()];
        for (i, _) in module.match_indices('.') {
            scopes.push(module[..i].to_string());
        }
        scopes.push(module.to_string());
        let class_of = |m: &str| {
            let c = classes
                .iter()
                .find(|(p, _)| *p == m)
                .map_or("Linear", |(_, c)| c);
            format!("'transformers.models.x.modeling_x.{c}'")
        };
        let quoted: Vec<String> = scopes.iter().map(|s| format!("'{s}'")).collect();
        let hier: Vec<String> = scopes.iter().map(|s| class_of(s)).collect();
        let mut node = NodeProto::new();
        node.op_type = "Identity".into();
        node.input = vec![name.to_string()];
        node.output = vec![format!("o{k}")];
        node.metadata_props.push(prop(
            "pkg.torch.onnx.name_scopes",
            &format!("[{}, 'identity_{k}']", quoted.join(", ")),
        ));
        node.metadata_props.push(prop(
            "pkg.torch.onnx.class_hierarchy",
            &format!("[{}, 'aten.identity.default']", hier.join(", ")),
        ));
        g.node.push(node);
        g.output
            .push(value_info(&format!("o{k}"), DType::F32, &[], "N"));
    }
    signature.push_str("x: USER_INPUT\n\n# outputs\ny: USER_OUTPUT\n");
    g.metadata_props.push(prop(
        "pkg.torch.export.ExportedProgram.graph_signature",
        &signature,
    ));
    g.input
        .push(value_info("x", DType::F32, &[None, Some(4)], "N"));
    let mut m = ModelProto::new();
    m.ir_version = 10;
    let mut o = OperatorSetIdProto::new();
    o.version = 20;
    m.opset_import.push(o);
    m.graph = protobuf::MessageField::some(g);
    let path = dir.join("hf.onnx");
    std::fs::write(&path, protobuf::Message::write_to_bytes(&m).unwrap()).unwrap();
    path
}

/// A tiny ViT for image classification as transformers 5 names its tensors: the `ViTModel` at
/// `vit`, a classifier beside it, and a module outside the ViT whose names look like ViT's old ones.
const VIT_PARAMS: &[(&str, &[i64])] = &[
    ("vit.embeddings.cls_token", &[1, 1, 4]),
    ("vit.layers.0.attention.q_proj.weight", &[4, 4]),
    ("vit.layers.0.attention.o_proj.weight", &[4, 4]),
    ("vit.layers.0.mlp.fc1.weight", &[6, 4]),
    ("vit.layers.0.mlp.fc2.weight", &[4, 6]),
    ("vit.layers.0.layernorm_before.weight", &[4]),
    ("head.mlp.fc2.weight", &[3, 4]),
];
const VIT_CLASSES: &[(&str, &str)] = &[("", "ViTForImageClassification"), ("vit", "ViTModel")];

/// The names `save_pretrained` writes for [`VIT_PARAMS`], each tensor filled with its index.
fn vit_saved() -> Vec<(&'static str, Vec<usize>, V)> {
    [
        ("vit.embeddings.cls_token", vec![1, 1, 4]),
        (
            "vit.encoder.layer.0.attention.attention.query.weight",
            vec![4, 4],
        ),
        (
            "vit.encoder.layer.0.attention.output.dense.weight",
            vec![4, 4],
        ),
        ("vit.encoder.layer.0.intermediate.dense.weight", vec![6, 4]),
        ("vit.encoder.layer.0.output.dense.weight", vec![4, 6]),
        ("vit.encoder.layer.0.layernorm_before.weight", vec![4]),
        ("head.mlp.fc2.weight", vec![3, 4]),
    ]
    .into_iter()
    .enumerate()
    .map(|(k, (n, s))| {
        let len = s.iter().product();
        (n, s, V::F(vec![k as f32; len]))
    })
    .collect()
}

fn classed_case(params: &[(&str, &[i64])], classes: &[(&str, &str)]) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&write_classed_model(dir.path(), params, classes)).unwrap();
    Case { dir, model }
}

#[test]
fn the_graph_tells_which_transformers_class_sits_where() {
    let c = classed_case(VIT_PARAMS, VIT_CLASSES);
    let classes = &c.model.export.classes;
    assert_eq!(classes[""], "ViTForImageClassification");
    assert_eq!(classes["vit"], "ViTModel");
    assert_eq!(classes["vit.layers.0.mlp.fc2"], "Linear");
}

#[test]
fn save_pretrained_names_are_renamed_as_transformers_loads_them() {
    let c = classed_case(VIT_PARAMS, VIT_CLASSES);
    let ck = c.load(&vit_saved(), &Options::default()).unwrap();
    // `attention.output.dense` is `attention.o_proj` (its rule comes before `output.dense`'s).
    for (k, n) in [
        (1, "vit.layers.0.attention.q_proj.weight"),
        (2, "vit.layers.0.attention.o_proj.weight"),
        (3, "vit.layers.0.mlp.fc1.weight"),
        (4, "vit.layers.0.mlp.fc2.weight"),
        (5, "vit.layers.0.layernorm_before.weight"),
        (6, "head.mlp.fc2.weight"),
    ] {
        assert!(f32s(&ck, n).iter().all(|&v| v == k as f32), "{n}");
    }
    assert_eq!(ck.notes.len(), 1, "{:?}", ck.notes);
    let note = &ck.notes[0];
    for want in [
        "renamed 5 tensor name(s) as transformers' from_pretrained does (ViTModel at 'vit.': ",
        "'encoder.layer.' -> 'layers.' 5x, 'attention.query' -> 'q_proj' 1x",
        "'attention.output.dense' -> 'attention.o_proj' 1x",
        "'output.dense' -> 'mlp.fc2' 1x",
        "vit.encoder.layer.0.attention.attention.query.weight -> vit.layers.0.attention.q_proj.weight and 4 more",
    ] {
        assert!(note.contains(want), "{want} not in\n{note}");
    }

    // GPT-NeoX keeps `lm_head` as `embed_out`, at the start of the name only.
    let c = classed_case(
        &[
            ("gpt_neox.embed_in.weight", &[5, 4]),
            ("lm_head.weight", &[5, 4]),
        ],
        &[("", "GPTNeoXForCausalLM"), ("gpt_neox", "GPTNeoXModel")],
    );
    let t = vec![
        ("gpt_neox.embed_in.weight", vec![5, 4], V::F(vec![1.0; 20])),
        ("embed_out.weight", vec![5, 4], V::F(vec![2.0; 20])),
    ];
    let ck = c.load(&t, &Options::default()).unwrap();
    assert_eq!(f32s(&ck, "lm_head.weight"), vec![2.0; 20]);
    assert_eq!(
        ck.notes,
        [
            "renamed 1 tensor name(s) as transformers' from_pretrained does (GPTNeoXForCausalLM: \
          '^embed_out.' -> 'lm_head.' 1x): embed_out.weight -> lm_head.weight"
        ]
    );
    // Under a DDP prefix: named with the flag, and with it the renaming follows.
    let wrapped: Vec<String> = t.iter().map(|(n, _, _)| format!("module.{n}")).collect();
    let t: Vec<_> = t
        .iter()
        .zip(&wrapped)
        .map(|((_, s, v), n)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains("give --strip-prefix module. (then it fits)"),
        "{line}"
    );
    let strip = Options {
        strip_prefix: Some("module.".into()),
        ..Default::default()
    };
    let ck = c.load(&t, &strip).unwrap();
    assert_eq!(f32s(&ck, "lm_head.weight"), vec![2.0; 20]);
    assert!(
        ck.notes[1].contains("embed_out.weight -> lm_head.weight"),
        "{:?}",
        ck.notes
    );

    // The legacy names of TensorFlow-era checkpoints, whatever the class.
    let c = classed_case(
        &[("enc.LayerNorm.weight", &[4]), ("enc.LayerNorm.bias", &[4])],
        &[],
    );
    let t = vec![
        ("enc.LayerNorm.gamma", vec![4], V::F(vec![3.0; 4])),
        ("enc.LayerNorm.beta", vec![4], V::F(vec![4.0; 4])),
    ];
    let ck = c.load(&t, &Options::default()).unwrap();
    assert_eq!(f32s(&ck, "enc.LayerNorm.weight"), vec![3.0; 4]);
    assert_eq!(f32s(&ck, "enc.LayerNorm.bias"), vec![4.0; 4]);
    assert!(
        ck.notes[0].contains("(legacy: 'LayerNorm.gamma' -> 'LayerNorm.weight' 1x, 'LayerNorm.beta' -> 'LayerNorm.bias' 1x)"),
        "{:?}",
        ck.notes
    );
}

#[test]
fn renamings_apply_only_within_their_class() {
    // `head` is no ViTModel: its old-looking name stays as it is, and is refused.
    let c = classed_case(VIT_PARAMS, VIT_CLASSES);
    let mut t = vit_saved();
    t[6].0 = "head.output.dense.weight";
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains("missing 1 of the model's tensors: head.mlp.fc2.weight; 1 tensors the model does not have: head.output.dense.weight"),
        "{line}"
    );
    // A graph that does not say its classes gets no class's renamings.
    let c = classed_case(VIT_PARAMS, &[]);
    let line = c.refused(&vit_saved(), &Options::default());
    assert!(
        line.contains("missing 5 of the model's tensors") && !line.contains("renamed"),
        "{line}"
    );
}

#[test]
fn a_renamed_checkpoint_that_does_not_fit_is_refused_with_every_problem() {
    let c = classed_case(VIT_PARAMS, VIT_CLASSES);
    let mut t = vit_saved();
    // fc2 of the wrong shape; fc1 missing; the query under its old and its new name; and the
    // query under a second old name that transformers would rename onto the same one.
    t[4].1 = vec![6, 4];
    t.retain(|(n, _, _)| !n.contains("intermediate"));
    t.push((
        "vit.layers.0.attention.q_proj.weight",
        vec![4, 4],
        V::F(vec![0.0; 16]),
    ));
    t.push((
        "vit.encoder.layer.0.attention.attention.key.weight",
        vec![4, 4],
        V::F(vec![0.0; 16]),
    ));
    let line = c.refused(&t, &Options::default());
    for want in [
        "renamed 3 tensor name(s) as transformers' from_pretrained does",
        "missing 1 of the model's tensors: vit.layers.0.mlp.fc1.weight",
        "2 tensors the model does not have: vit.encoder.layer.0.attention.attention.key.weight, \
         vit.encoder.layer.0.attention.attention.query.weight",
        "'vit.encoder.layer.0.attention.attention.query.weight' is \
         'vit.layers.0.attention.q_proj.weight' as transformers renames it, and the checkpoint \
         has 'vit.layers.0.attention.q_proj.weight' too",
        "'vit.layers.0.mlp.fc2.weight' ('vit.encoder.layer.0.output.dense.weight' in the file) \
         has shape [6, 4] in the checkpoint, [4, 6] in the model",
    ] {
        assert!(line.contains(want), "{want} not in\n{line}");
    }

    // Two old names onto one new name: neither is taken.
    let mut t = vit_saved();
    t.push((
        "vit.layers.0.attention.attention.query.weight",
        vec![4, 4],
        V::F(vec![0.0; 16]),
    ));
    let line = c.refused(&t, &Options::default());
    assert!(
        line.contains(
            "'vit.encoder.layer.0.attention.attention.query.weight', \
             'vit.layers.0.attention.attention.query.weight' are all \
             'vit.layers.0.attention.q_proj.weight' as transformers renames them"
        ) && line
            .contains("missing 1 of the model's tensors: vit.layers.0.attention.q_proj.weight"),
        "{line}"
    );
}
