//! The one gradient check every rule is tested with (`check`): a graph of the single op, a scalar
//! loss `L = sum_k <R_k, Y_k>` over its float outputs with fixed random `R_k`, the gradient graph
//! built by [`crate::autodiff::grad::differentiate`] and run by ONNX Runtime, against central
//! finite differences of the same forward graph, all in f64 (f32 where ONNX Runtime has no f64
//! kernel for the op, with the tolerance that precision allows). A case marked
//! [`Case::probe_cpu`] is also differentiated with probe's CPU kernels
//! ([`Kernels::ProbeCpu`], run on 2 threads so the kernels split the batch), which must use at
//! least one of them, agree with the standard-op gradient to 1e-5 and pass the same
//! finite-difference check.
use crate::autodiff::grad::{apply_forward_outputs, differentiate_with, Kernels};
use crate::autodiff::shapes::Shapes;
use crate::model::graph::{tensor_i64, value_info};
use crate::tensor::{DType, HostTensor, Values};
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

#[derive(Clone)]
pub enum In {
    /// A float input, differentiated, random values in [-1, 1] (or [lo, hi]).
    Float(Vec<usize>, f64, f64),
    /// A float input given exactly, differentiated.
    Values(Vec<usize>, Vec<f64>),
    /// An integer constant (indices, shapes, axes): an initializer, not differentiated.
    Ints(Vec<usize>, Vec<i64>),
    /// A boolean constant (conditions, flags): an initializer, not differentiated.
    Bools(Vec<usize>, Vec<bool>),
    /// A float input that is not differentiated.
    Fixed(Vec<usize>),
    /// A float32 constant (Resize's scales): an initializer, not differentiated.
    F32Const(Vec<usize>, Vec<f32>),
    /// A float input given exactly, not differentiated (a Clip's bounds).
    Given(Vec<usize>, Vec<f64>),
    /// An absent optional input.
    Absent,
}

#[derive(Clone)]
pub struct Case {
    pub op: String,
    pub inputs: Vec<In>,
    pub attrs: Vec<AttributeProto>,
    pub outputs: usize,
    pub f64: bool,
    pub opset: i64,
    pub seed: u64,
    /// Outputs left out of the loss (indices), e.g. statistics outputs.
    pub skip_outputs: Vec<usize>,
    /// Also check the gradient graph built with probe's CPU kernels against the standard one.
    pub probe_cpu: bool,
    /// Ops the probe.cpu gradient graph must contain (`domain:op`, or `op` for standard ONNX),
    /// so that a case meant for one of the rule's fast forms fails when that form stops firing.
    pub expect_ops: Vec<String>,
    /// The node's `metadata_props` (what PyTorch's exporter records on a node).
    pub metadata: Vec<(String, String)>,
}

impl Case {
    pub fn new(op: &str) -> Case {
        Case {
            op: op.into(),
            inputs: vec![],
            attrs: vec![],
            outputs: 1,
            f64: true,
            opset: 20,
            seed: 1,
            skip_outputs: vec![],
            probe_cpu: false,
            expect_ops: vec![],
            metadata: vec![],
        }
    }
    pub fn input(mut self, shape: &[usize]) -> Case {
        self.inputs.push(In::Float(shape.to_vec(), -1.0, 1.0));
        self
    }
    pub fn input_in(mut self, shape: &[usize], lo: f64, hi: f64) -> Case {
        self.inputs.push(In::Float(shape.to_vec(), lo, hi));
        self
    }
    pub fn values(mut self, shape: &[usize], v: &[f64]) -> Case {
        self.inputs.push(In::Values(shape.to_vec(), v.to_vec()));
        self
    }
    pub fn fixed(mut self, shape: &[usize]) -> Case {
        self.inputs.push(In::Fixed(shape.to_vec()));
        self
    }
    pub fn given(mut self, shape: &[usize], v: &[f64]) -> Case {
        self.inputs.push(In::Given(shape.to_vec(), v.to_vec()));
        self
    }
    pub fn ints(mut self, shape: &[usize], v: &[i64]) -> Case {
        self.inputs.push(In::Ints(shape.to_vec(), v.to_vec()));
        self
    }
    pub fn bools(mut self, shape: &[usize], v: &[bool]) -> Case {
        self.inputs.push(In::Bools(shape.to_vec(), v.to_vec()));
        self
    }
    pub fn f32_const(mut self, shape: &[usize], v: &[f32]) -> Case {
        self.inputs.push(In::F32Const(shape.to_vec(), v.to_vec()));
        self
    }
    pub fn absent(mut self) -> Case {
        self.inputs.push(In::Absent);
        self
    }
    pub fn attr(mut self, a: AttributeProto) -> Case {
        self.attrs.push(a);
        self
    }
    pub fn outputs(mut self, n: usize) -> Case {
        self.outputs = n;
        self
    }
    pub fn skip_output(mut self, k: usize) -> Case {
        self.skip_outputs.push(k);
        self
    }
    /// Also check the graph with probe's `probe.cpu` kernels (f32 only, as they are).
    pub fn probe_cpu(mut self) -> Case {
        self.probe_cpu = true;
        self
    }
    /// The probe.cpu gradient graph must contain `op` (`domain:op` for a custom domain).
    pub fn expect_op(mut self, op: &str) -> Case {
        self.expect_ops.push(op.into());
        self
    }
    /// The op has no f64 kernel in ONNX Runtime's CPU provider: check in f32.
    pub fn f32(mut self) -> Case {
        self.f64 = false;
        self
    }
    /// A `metadata_props` entry on the node.
    pub fn metadata(mut self, key: &str, value: &str) -> Case {
        self.metadata.push((key.into(), value.into()));
        self
    }
    pub fn opset(mut self, v: i64) -> Case {
        self.opset = v;
        self
    }
    pub fn seed(mut self, s: u64) -> Case {
        self.seed = s;
        self
    }
}

/// A small deterministic generator (SplitMix64), so tests need no extra crate.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// `graph` as a model of `opset` (and the `probe.cpu` domain where the graph uses it).
pub fn model_of(graph: GraphProto, opset: i64) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = 10;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    let custom = crate::ops::rule::PROBE_CPU_DOMAIN;
    if graph.node.iter().any(|n| n.domain == custom) {
        let mut o = OperatorSetIdProto::new();
        o.domain = custom.into();
        o.version = 1;
        m.opset_import.push(o);
    }
    m.graph = protobuf::MessageField::some(graph);
    m
}

pub(crate) fn host(dt: DType, shape: &[usize], v: &[f64]) -> HostTensor {
    HostTensor {
        shape: shape.to_vec(),
        dtype: dt,
        values: Values::F32(v.iter().map(|&x| x as f32).collect()),
    }
}

/// Runs `proto` on `feed` (f64 values kept exact) and returns the named outputs as f64.
pub(crate) fn run(
    proto: &ModelProto,
    feed: &[(String, DType, Vec<usize>, Vec<f64>)],
    outputs: &[String],
) -> Vec<Vec<f64>> {
    run_threads(proto, feed, outputs, 1)
}

pub(crate) fn run_threads(
    proto: &ModelProto,
    feed: &[(String, DType, Vec<usize>, Vec<f64>)],
    outputs: &[String],
    threads: usize,
) -> Vec<Vec<f64>> {
    // Tensors are built before the session: load probe's ONNX Runtime first (see to_value).
    crate::runtime::environment().unwrap();
    let values: Vec<(String, ort::value::DynValue)> = feed
        .iter()
        .map(|(n, dt, shape, v)| {
            let shp: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let val = if *dt == DType::F64 {
                ort::value::Tensor::from_array((shp, v.clone()))
                    .unwrap()
                    .into_dyn()
            } else {
                ort::value::Tensor::from_array((
                    shp,
                    v.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
                ))
                .unwrap()
                .into_dyn()
            };
            (n.clone(), val)
        })
        .collect();
    ort_run(proto, threads, values, outputs, |_, v| {
        match v.try_extract_array::<f64>() {
            Ok(a) => a.iter().copied().collect(),
            Err(_) => v
                .try_extract_array::<f32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect(),
        }
    })
}

/// Runs `proto` in an ONNX Runtime session of `threads` threads on `values`; each of
/// `outputs` read by `read(name, value)`.
pub(crate) fn ort_run<R>(
    proto: &ModelProto,
    threads: usize,
    values: Vec<(String, ort::value::DynValue)>,
    outputs: &[String],
    read: impl Fn(&str, &ort::value::DynValue) -> R,
) -> Vec<R> {
    let bytes = protobuf::Message::write_to_bytes(proto).unwrap();
    let mut s = crate::runtime::session(&bytes, threads, "test").unwrap();
    let inputs: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> = values
        .iter()
        .map(|(n, v)| (n.as_str().into(), v.into()))
        .collect();
    let out = s.run(inputs).unwrap();
    outputs.iter().map(|o| read(o, &out[o.as_str()])).collect()
}

/// A node `out = op(ins)` named after its output, for graphs built by hand in tests.
pub fn node(op: &str, ins: &[&str], out: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = out.into();
    n.input = ins.iter().map(|s| s.to_string()).collect();
    n.output = vec![out.into()];
    n
}

/// A float input of a test graph: name, shape, values, and whether it is differentiated.
#[derive(Clone)]
pub(crate) struct FloatInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
    pub wrt: bool,
}

/// Values for `shape` drawn uniformly from [lo, hi].
fn draw(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Vec<f64> {
    (0..shape.iter().product())
        .map(|_| rng.uniform(lo, hi))
        .collect()
}

fn declare_input(g: &mut GraphProto, name: &str, dt: DType, shape: &[usize]) {
    let dims: Vec<Option<i64>> = shape.iter().map(|&d| Some(d as i64)).collect();
    g.input.push(value_info(name, dt, &dims, "N"));
}

/// Makes `names` the graph's outputs (types left to the runtime).
pub(crate) fn set_outputs(g: &mut GraphProto, names: &[String]) {
    g.output = (names.iter())
        .map(|n| {
            let mut v = onnx_protobuf::ValueInfoProto::new();
            v.name = n.clone();
            v
        })
        .collect();
}

/// The case's one node (named "op", outputs `out0`, `out1`, ...) as a graph: integer and
/// boolean inputs as initializers, float ones as graph inputs of type `dt` with their values,
/// drawn from `rng` in input order where the case does not give them. The one graph both
/// [`check`] and the libtorch forward check run, so that they see the same values.
pub(crate) fn one_op_graph(case: &Case, dt: DType, rng: &mut Rng) -> (GraphProto, Vec<FloatInput>) {
    let mut g = GraphProto::new();
    let mut node = NodeProto::new();
    node.op_type = case.op.clone();
    node.name = "op".into();
    node.attribute = case.attrs.clone();
    for (key, value) in &case.metadata {
        let mut m = onnx_protobuf::StringStringEntryProto::new();
        m.key = key.clone();
        m.value = value.clone();
        node.metadata_props.push(m);
    }
    let mut floats = Vec::new();
    for (i, inp) in case.inputs.iter().enumerate() {
        let name = format!("in{i}");
        let (shape, values, wrt) = match inp {
            In::Absent => {
                node.input.push(String::new());
                continue;
            }
            In::Ints(shape, v) => {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                g.initializer.push(tensor_i64(&name, &dims, v));
                node.input.push(name);
                continue;
            }
            In::F32Const(shape, v) => {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                g.initializer
                    .push(crate::model::graph::tensor_f32(&name, &dims, v));
                node.input.push(name);
                continue;
            }
            In::Bools(shape, v) => {
                let mut t = TensorProto::new();
                t.name = name.clone();
                t.data_type = DType::Bool.onnx();
                t.dims = shape.iter().map(|&d| d as i64).collect();
                t.raw_data = v.iter().map(|&b| b as u8).collect();
                g.initializer.push(t);
                node.input.push(name);
                continue;
            }
            In::Float(shape, lo, hi) => (shape, draw(rng, shape, *lo, *hi), true),
            In::Values(shape, v) => (shape, v.clone(), true),
            In::Fixed(shape) => (shape, draw(rng, shape, -1.0, 1.0), false),
            In::Given(shape, v) => (shape, v.clone(), false),
        };
        declare_input(&mut g, &name, dt, shape);
        floats.push(FloatInput {
            name: name.clone(),
            shape: shape.clone(),
            values,
            wrt,
        });
        node.input.push(name);
    }
    node.output = (0..case.outputs).map(|k| format!("out{k}")).collect();
    g.node.push(node);
    (g, floats)
}

/// Declares each of `inputs` a graph input of `g` of type `dt`, values drawn from [-1, 1] in
/// order: the inputs of a prebuilt graph ([`check_graph_with`] and its libtorch check).
pub(crate) fn random_inputs(
    g: &mut GraphProto,
    inputs: &[(&str, &[usize])],
    dt: DType,
    rng: &mut Rng,
) -> Vec<FloatInput> {
    (inputs.iter())
        .map(|(name, shape)| {
            let values = draw(rng, shape, -1.0, 1.0);
            declare_input(g, name, dt, shape);
            FloatInput {
                name: name.to_string(),
                shape: shape.to_vec(),
                values,
                wrt: true,
            }
        })
        .collect()
}

pub(crate) type FeedF64 = Vec<(String, DType, Vec<usize>, Vec<f64>)>;

/// The differentiated inputs' names, and the feed of every float input.
fn feed_of(floats: Vec<FloatInput>, dt: DType) -> (Vec<String>, FeedF64) {
    let wrt = (floats.iter().filter(|f| f.wrt))
        .map(|f| f.name.clone())
        .collect();
    let feed = (floats.into_iter())
        .map(|f| (f.name, dt, f.shape, f.values))
        .collect();
    (wrt, feed)
}

/// Builds the case's graph, differentiates it, and compares with central finite differences.
/// Panics with the worst element on mismatch.
pub fn check(case: Case) {
    let dt = if case.f64 { DType::F64 } else { DType::F32 };
    let mut rng = Rng(case.seed);
    let (mut g, floats) = one_op_graph(&case, dt, &mut rng);
    let all: Vec<String> = (0..case.outputs).map(|k| format!("out{k}")).collect();
    set_outputs(&mut g, &all);
    let (wrt, feed) = feed_of(floats, dt);
    let outputs: Vec<String> = (0..case.outputs)
        .filter(|k| !case.skip_outputs.contains(k))
        .map(|k| format!("out{k}"))
        .collect();
    let kernels = if case.probe_cpu {
        assert!(
            !case.f64,
            "{}: probe.cpu kernels are f32 only: mark the case .f32()",
            case.op
        );
        Kernels::ProbeCpu
    } else {
        Kernels::Standard
    };
    verify(
        &case.op,
        g,
        feed,
        &wrt,
        &outputs,
        &mut rng,
        case.f64,
        case.opset,
        kernels,
        &case.expect_ops,
    );
}

/// [`check`] for a prebuilt graph of several nodes (rules that only make sense in a pair, such as
/// SplitToSequence -> SequenceAt with a sequence in the middle): `graph` holds the nodes and any
/// integer initializers; each of `inputs` becomes a differentiated graph input with random
/// values in [-1, 1]; the loss is `sum_k <R_k, Y_k>` over `outputs`. Opset 20. The ops are
/// `kernels`': standard ones in f64; with [`Kernels::ProbeCpu`] the inputs are f32 and the
/// graph is also held to its standard-op gradient, as [`Case::probe_cpu`] is.
pub fn check_graph_with(
    label: &str,
    graph: GraphProto,
    inputs: &[(&str, &[usize])],
    outputs: &[&str],
    seed: u64,
    kernels: Kernels,
) {
    let f64 = kernels == Kernels::Standard;
    let dt = if f64 { DType::F64 } else { DType::F32 };
    let mut rng = Rng(seed);
    let mut g = graph;
    let floats = random_inputs(&mut g, inputs, dt, &mut rng);
    let (wrt, feed) = feed_of(floats, dt);
    let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    set_outputs(&mut g, &outputs);
    verify(
        label,
        g,
        feed,
        &wrt,
        &outputs,
        &mut rng,
        f64,
        20,
        kernels,
        &[],
    );
}

/// A one-op (or prebuilt) graph with the test loss `L = sum_k <R_k, Y_k>` added.
pub(crate) struct LossGraph {
    /// The graph whose one output is `loss`.
    pub g: GraphProto,
    pub shapes: Shapes,
    /// The float outputs in the loss, and their `R_k` (shape, values), in that order.
    pub float_outputs: Vec<String>,
    pub r: Vec<(Vec<usize>, Vec<f64>)>,
}

/// Adds the loss over `outputs` to `g` (the `R_k` drawn from `rng` in output order).
pub(crate) fn with_loss(
    mut g: GraphProto,
    feed: &FeedF64,
    outputs: &[String],
    rng: &mut Rng,
    opset: i64,
) -> LossGraph {
    // Shapes of the op's outputs, from the runtime.
    let host_feed: Vec<(String, HostTensor)> = feed
        .iter()
        .map(|(n, dt, s, v)| (n.clone(), host(*dt, s, v)))
        .collect();
    let shapes0 = Shapes::observe(&model_of(g.clone(), opset), &[host_feed.clone()])
        .expect("forward graph runs");
    // Loss = sum_k <R_k, Y_k>.
    let mut terms = Vec::new();
    let mut float_outputs = Vec::new();
    let mut rs = Vec::new();
    for (k, y) in outputs.iter().enumerate() {
        let y = y.clone();
        let Some(info) = shapes0.get(&y) else {
            continue;
        };
        if !info.dtype.is_float() {
            continue;
        }
        let dims: Vec<usize> = info.dims.iter().map(|d| d.unwrap()).collect();
        let r: Vec<f64> = (0..dims.iter().product())
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let mut t = TensorProto::new();
        t.name = format!("r{k}");
        t.data_type = info.dtype.onnx();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.raw_data = if info.dtype == DType::F64 {
            r.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else {
            r.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()
        };
        g.initializer.push(t);
        let mut m = NodeProto::new();
        m.op_type = "Mul".into();
        m.input = vec![y.clone(), format!("r{k}")];
        m.output = vec![format!("m{k}")];
        let mut s = NodeProto::new();
        s.op_type = "ReduceSum".into();
        s.input = vec![format!("m{k}")];
        s.output = vec![format!("s{k}")];
        s.attribute = vec![crate::model::graph::attr_int("keepdims", 0)];
        g.node.push(m);
        g.node.push(s);
        terms.push(format!("s{k}"));
        float_outputs.push(y);
        rs.push((dims, r));
    }
    let mut sum = NodeProto::new();
    sum.op_type = "Sum".into();
    sum.input = terms;
    sum.output = vec!["loss".into()];
    g.node.push(sum);
    set_outputs(&mut g, &["loss".to_string()]);
    let shapes =
        Shapes::observe(&model_of(g.clone(), opset), &[host_feed]).expect("loss graph runs");
    LossGraph {
        g,
        shapes,
        float_outputs,
        r: rs,
    }
}

/// (gradients, the graph's (domain, op) list, float forward outputs)
type Run = (Vec<Vec<f64>>, Vec<(String, String)>, Vec<Vec<f64>>);

/// The gradient graph of `lg` with respect to `wrt`, with `kernels`' ops, run on `feed`.
fn gradients(
    label: &str,
    lg: &LossGraph,
    wrt: &[String],
    feed: &FeedF64,
    opset: i64,
    kernels: Kernels,
) -> Run {
    let mut gg = lg.g.clone();
    let mut shapes = lg.shapes.clone();
    crate::autodiff::passes::before_differentiation(&mut gg, &mut shapes, wrt, kernels);
    let diff = differentiate_with(&gg, &shapes, "loss", wrt, kernels)
        .unwrap_or_else(|e| panic!("{label}: {e:#}"));
    apply_forward_outputs(&mut gg, &diff.forward_outputs);
    gg.node.extend(diff.nodes.clone());
    for (_, gname) in &diff.grads {
        let mut v = onnx_protobuf::ValueInfoProto::new();
        v.name = gname.clone();
        gg.output.push(v);
    }
    crate::autodiff::passes::after_differentiation(&mut gg, &mut shapes, wrt, kernels);
    // What the fast path changed shows in the node types (probe.cpu ops, rewrites).
    let custom: Vec<(String, String)> = gg
        .node
        .iter()
        .map(|n| (n.domain.clone(), n.op_type.clone()))
        .collect();
    let mut gnames: Vec<String> = diff.grads.iter().map(|(_, g)| g.clone()).collect();
    // The forward outputs too: a fused forward value the gradients cannot reveal (a Relu
    // mask reads the same either way) is held to the standard one as well.
    for o in &lg.float_outputs {
        let mut v = onnx_protobuf::ValueInfoProto::new();
        v.name = o.clone();
        gg.output.push(v);
        gnames.push(o.clone());
    }
    let threads = if kernels == Kernels::ProbeCpu { 2 } else { 1 };
    let mut values = run_threads(&model_of(gg, opset), feed, &gnames, threads);
    let forward = values.split_off(diff.grads.len());
    (values, custom, forward)
}

/// The case's rule gradients with standard ops (f64, or f32 for a case marked so): the
/// float inputs, the loss's `R_k` per float output, and `dL/dX` per differentiated input.
/// What [`crate::ops::torch_testing::check_torch_backward`] holds to PyTorch's backward.
pub(crate) fn rule_gradients(case: &Case) -> (Vec<FloatInput>, LossGraph, Vec<Vec<f64>>) {
    let dt = if case.f64 { DType::F64 } else { DType::F32 };
    let mut rng = Rng(case.seed);
    let (mut g, floats) = one_op_graph(case, dt, &mut rng);
    let all: Vec<String> = (0..case.outputs).map(|k| format!("out{k}")).collect();
    set_outputs(&mut g, &all);
    let kept = floats.clone();
    let (wrt, feed) = feed_of(floats, dt);
    let outputs: Vec<String> = (0..case.outputs)
        .filter(|k| !case.skip_outputs.contains(k))
        .map(|k| format!("out{k}"))
        .collect();
    let lg = with_loss(g, &feed, &outputs, &mut rng, case.opset);
    let (grads, _, _) = gradients(&case.op, &lg, &wrt, &feed, case.opset, Kernels::Standard);
    (kept, lg, grads)
}

/// The shared tail of [`check`] and [`check_graph_with`]: adds the loss over `outputs` to `g`,
/// differentiates it with respect to `wrt`, and compares with central finite differences.
#[allow(clippy::too_many_arguments)]
fn verify(
    label: &str,
    g: GraphProto,
    mut feed: FeedF64,
    wrt: &[String],
    outputs: &[String],
    rng: &mut Rng,
    f64: bool,
    opset: i64,
    kernels: Kernels,
    expect_ops: &[String],
) {
    let lg = with_loss(g, &feed, outputs, rng, opset);
    let fwd = model_of(lg.g.clone(), opset);
    let float_outputs = lg.float_outputs.clone();
    let gradients = |kernels: Kernels| gradients(label, &lg, wrt, &feed, opset, kernels);
    let (standard, standard_nodes, standard_forward) = gradients(Kernels::Standard);
    let analytic = if kernels == Kernels::ProbeCpu {
        let (fast, fast_nodes, fast_forward) = gradients(Kernels::ProbeCpu);
        for (o, (a, b)) in float_outputs
            .iter()
            .zip(fast_forward.iter().zip(&standard_forward))
        {
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1.0);
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{label} output {o}: probe.cpu forward {x} vs standard ops {y} at element {j}"
                );
            }
        }
        assert!(
            fast_nodes != standard_nodes,
            "{label}: the probe.cpu graph is the standard one (no probe.cpu op, no rewrite)"
        );
        let ops: Vec<String> = fast_nodes
            .iter()
            .map(|(d, o)| {
                if d.is_empty() {
                    o.clone()
                } else {
                    format!("{d}:{o}")
                }
            })
            .collect();
        for e in expect_ops {
            assert!(
                ops.contains(e),
                "{label}: the probe.cpu gradient graph has no {e}; its ops: {ops:?}"
            );
        }
        for (wi, w) in wrt.iter().enumerate() {
            let scale = standard[wi]
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()))
                .max(1.0);
            for (j, (a, b)) in fast[wi].iter().zip(&standard[wi]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "{label} input {w}: probe.cpu gradient {a} vs standard ops {b} at element {j}"
                );
            }
        }
        fast
    } else {
        standard
    };

    let h = if f64 { 1e-6 } else { 1e-2 };
    let tol = if f64 { 1e-6 } else { 2e-2 };
    for (wi, w) in wrt.iter().enumerate() {
        let fi = feed.iter().position(|f| &f.0 == w).unwrap();
        let n = feed[fi].3.len();
        assert_eq!(
            analytic[wi].len(),
            n,
            "{label} input {w}: the gradient has {} elements, the input {n}",
            analytic[wi].len()
        );
        let mut worst = (0.0f64, 0usize, 0.0, 0.0);
        let scale = analytic[wi]
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1.0);
        for j in 0..n {
            let x0 = feed[fi].3[j];
            feed[fi].3[j] = x0 + h;
            let fp = run(&fwd, &feed, &["loss".to_string()])[0][0];
            feed[fi].3[j] = x0 - h;
            let fm = run(&fwd, &feed, &["loss".to_string()])[0][0];
            feed[fi].3[j] = x0;
            let numeric = (fp - fm) / (2.0 * h);
            let err = (numeric - analytic[wi][j]).abs() / scale;
            // A NaN (a 0/0 in the rule) is the worst of all and fails the check below.
            if err > worst.0 || (err.is_nan() && !worst.0.is_nan()) {
                worst = (err, j, numeric, analytic[wi][j]);
            }
        }
        assert!(
            worst.0 <= tol,
            "{} input {w}: gradient differs from finite differences at element {}: numeric {} vs rule {} (relative error {:.2e} > {tol:.0e})",
            label,
            worst.1,
            worst.2,
            worst.3,
            worst.0
        );
    }
}

/// What a case list needs in scope: the builder, the attribute constructors and element types
/// (the whole of an [`op_tests`](crate::ops) module's imports).
pub mod prelude {
    pub use super::Case;
    pub use crate::model::graph::{attr_float, attr_int, attr_ints, attr_string};
    pub use crate::tensor::DType;
}

/// The tests of an op's case lists. Each `name = cases` (an array of [`Case`]s, or anything else
/// that iterates over them) is a test `name` running the gradient check ([`check`]) on every
/// case; one more test, `torch_forward`, runs every list in order through the libtorch forward
/// check ([`crate::ops::torch_testing::check_torch`]). A leading `torch_only = cases` goes to
/// `torch_forward` alone (first): paths of the libtorch forward the gradient cases leave out.
macro_rules! gradient_and_torch_tests {
    (torch_only = $extra:expr $(, $name:ident = $cases:expr)* $(,)?) => {
        $crate::ops::testing::gradient_and_torch_tests!(@tests [$extra] $($name = $cases),*);
    };
    ($($name:ident = $cases:expr),+ $(,)?) => {
        $crate::ops::testing::gradient_and_torch_tests!(@tests [] $($name = $cases),+);
    };
    (@tests [$($extra:expr)?] $($name:ident = $cases:expr),*) => {
        $(
            #[test]
            fn $name() {
                for case in $cases {
                    $crate::ops::testing::check(case);
                }
            }
        )*
        #[test]
        fn torch_forward() {
            $(
                for case in $extra {
                    $crate::ops::torch_testing::check_torch(case);
                }
            )?
            $(
                for case in $cases {
                    $crate::ops::torch_testing::check_torch(case);
                }
            )*
        }
    };
}
pub(crate) use gradient_and_torch_tests;
