//! Small helpers for writing ONNX graphs: deterministic fresh names, nodes, constants,
//! attributes, and value infos. The loss head and the gradient graph are written with these.
//! Also how errors name a graph's nodes ([`describe`], [`Lacking`]).
use crate::tensor::DType;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, NodeProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Who produces and who reads each value of a graph, and which values are its outputs: what
/// a graph rewrite asks before it changes or removes a node. Indices are into `graph.node` as
/// it was when this was built.
pub struct Uses {
    pub producer: std::collections::HashMap<String, usize>,
    readers: std::collections::HashMap<String, Vec<usize>>,
    pub outputs: std::collections::HashSet<String>,
}

impl Uses {
    pub fn of(graph: &onnx_protobuf::GraphProto) -> Uses {
        let mut u = Uses {
            producer: Default::default(),
            readers: Default::default(),
            outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        };
        for (k, n) in graph.node.iter().enumerate() {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                u.readers.entry(i.clone()).or_default().push(k);
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                u.producer.insert(o.clone(), k);
            }
        }
        u
    }
    /// The nodes reading `v`, once per read.
    pub fn readers(&self, v: &str) -> &[usize] {
        self.readers.get(v).map(|r| r.as_slice()).unwrap_or(&[])
    }
    /// Whether node `k` reads `v` once and nothing else does, `v` being no graph output.
    pub fn sole_reader(&self, v: &str, k: usize) -> bool {
        self.readers(v) == [k] && !self.outputs.contains(v)
    }
    /// The node producing `v` when node `k` is its [sole reader](Self::sole_reader): the
    /// other half of a two-node fusion.
    pub fn sole_producer(&self, v: &str, k: usize) -> Option<usize> {
        let p = *self.producer.get(v)?;
        self.sole_reader(v, k).then_some(p)
    }
}

/// Removes the nodes whose index `drop` names, keeping the others in order (graph rewrites
/// that fuse a node into another).
pub fn remove_nodes(nodes: &mut Vec<NodeProto>, drop: impl Fn(usize) -> bool) {
    let mut k = 0;
    nodes.retain(|_| {
        k += 1;
        !drop(k - 1)
    });
}

/// How a message names node `n`: by its name, else by its first output.
pub fn describe(n: &NodeProto) -> String {
    if n.name.is_empty() {
        format!(
            "output '{}'",
            n.output.first().map(|s| s.as_str()).unwrap_or("")
        )
    } else {
        format!("'{}'", n.name)
    }
}

/// The nodes that lack something (a gradient rule, a forward), grouped by what, so that one
/// error lists them all: `Op at 'a', 'b'; Other at output 'c'`.
#[derive(Default)]
pub struct Lacking(std::collections::BTreeMap<String, Vec<String>>);

impl Lacking {
    /// Node `n` lacks `what`.
    pub fn add(&mut self, what: String, n: &NodeProto) {
        self.0.entry(what).or_default().push(describe(n));
    }

    /// The list, or `None` when no node lacks anything.
    pub fn list(self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let groups: Vec<String> = self
            .0
            .into_iter()
            .map(|(what, nodes)| format!("{what} at {}", nodes.join(", ")))
            .collect();
        Some(groups.join("; "))
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::TENSOR.into();
    a.t = protobuf::MessageField::some(t);
    a
}

pub fn tensor_i64(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DType::I64.onnx();
    t.dims = dims.to_vec();
    t.int64_data = v.to_vec();
    t
}

pub fn tensor_f32(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DType::F32.onnx();
    t.dims = dims.to_vec();
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}

/// A value info with element type and shape; `None` dims are symbolic (named by `sym`).
pub fn value_info(name: &str, dtype: DType, dims: &[Option<i64>], sym: &str) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for (i, d) in dims.iter().enumerate() {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(match d {
            Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
            None => tensor_shape_proto::dimension::Value::DimParam(if i == 0 {
                sym.to_string()
            } else {
                format!("{sym}_{i}")
            }),
        });
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = dtype.onnx();
    tt.shape = protobuf::MessageField::some(shape);
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = protobuf::MessageField::some(tp);
    v
}

/// Appends nodes under a name prefix; generated names are `{prefix}/{hint}_{k}`, the same on every
/// run for the same graph (so two builds emit identical files).
pub struct Builder {
    pub prefix: String,
    pub nodes: Vec<NodeProto>,
    counter: usize,
}

impl Builder {
    pub fn new(prefix: &str) -> Builder {
        Builder {
            prefix: prefix.to_string(),
            nodes: Vec::new(),
            counter: 0,
        }
    }

    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}/{}_{}", self.prefix, hint, self.counter)
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op, inputs, attrs, 1).pop().unwrap()
    }

    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        self.op_n_in("", op, inputs, attrs, outputs)
    }

    /// [`Builder::op_n`] for an op of `domain` ("" is ONNX's own).
    pub fn op_n_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let base = self.fresh(op);
        let outs: Vec<String> = (0..outputs)
            .map(|i| {
                if outputs == 1 {
                    base.clone()
                } else {
                    format!("{base}:{i}")
                }
            })
            .collect();
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.domain = domain.into();
        n.name = base;
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outs.clone();
        n.attribute = attrs;
        self.nodes.push(n);
        outs
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, v: &[i64]) -> String {
        let out = self.fresh("const");
        let mut n = NodeProto::new();
        n.op_type = "Constant".into();
        n.name = out.clone();
        n.output = vec![out.clone()];
        n.attribute = vec![attr_tensor("value", tensor_i64("", &[v.len() as i64], v))];
        self.nodes.push(n);
        out
    }

    /// A float32 scalar constant.
    pub fn scalar(&mut self, v: f32) -> String {
        let out = self.fresh("const");
        let mut n = NodeProto::new();
        n.op_type = "Constant".into();
        n.name = out.clone();
        n.output = vec![out.clone()];
        n.attribute = vec![attr_tensor("value", tensor_f32("", &[], &[v]))];
        self.nodes.push(n);
        out
    }
}
