//! Values known when the gradient graph is built: Constant nodes, initializers that are not
//! differentiated, and int64 shape arithmetic on those, for rules and rewrites whose
//! attributes arrive as inputs (axes, split sizes, sequence positions).
use super::shapes::Shapes;
use onnx_protobuf::{GraphProto, TensorProto};
use std::collections::{HashMap, HashSet};

/// The int64 values of constant `name` (one of [`constants`]), if it is one.
pub fn const_ints(consts: &HashMap<String, TensorProto>, name: &str) -> Option<Vec<i64>> {
    let t = consts.get(name)?;
    let h = crate::model::decode_tensor(t).ok()?;
    h.as_i64().map(|v| v.to_vec())
}

/// Constant tensors of the graph by value name: Constant nodes, initializers that are not
/// differentiated, and int64 values computed from constants alone (the exporter's shape
/// arithmetic, e.g. `Reshape(Constant, Constant)` as a ReduceMean's axes), whose values the shape
/// observation recorded.
pub fn constants(
    graph: &GraphProto,
    exclude: &HashSet<&str>,
    shapes: &Shapes,
) -> HashMap<String, TensorProto> {
    let mut m = direct_constants(graph, exclude);
    for n in &graph.node {
        if n.op_type == "Constant" || n.output.iter().all(|o| m.contains_key(o)) {
            continue;
        }
        if !n.input.iter().all(|i| i.is_empty() || m.contains_key(i)) {
            continue;
        }
        for o in &n.output {
            if let (Some(v), Some(dims)) = (shapes.ints.get(o), shapes.static_dims(o)) {
                let d: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
                m.insert(o.clone(), crate::model::graph::tensor_i64("", &d, v));
            }
        }
    }
    m
}

fn direct_constants(graph: &GraphProto, exclude: &HashSet<&str>) -> HashMap<String, TensorProto> {
    let mut m = HashMap::new();
    for t in &graph.initializer {
        if !exclude.contains(t.name.as_str()) {
            m.insert(t.name.clone(), t.clone());
        }
    }
    for n in &graph.node {
        if n.op_type != "Constant" {
            continue;
        }
        let Some(a) = n.attribute.first() else {
            continue;
        };
        let t = match a.name.as_str() {
            "value" => a.t.as_ref().cloned(),
            "value_ints" => Some(crate::model::graph::tensor_i64(
                "",
                &[a.ints.len() as i64],
                &a.ints,
            )),
            "value_int" => Some(crate::model::graph::tensor_i64("", &[], &[a.i])),
            "value_float" => Some(crate::model::graph::tensor_f32("", &[], &[a.f])),
            "value_floats" => Some(crate::model::graph::tensor_f32(
                "",
                &[a.floats.len() as i64],
                &a.floats,
            )),
            _ => None,
        };
        if let Some(t) = t {
            m.insert(n.output[0].clone(), t);
        }
    }
    m
}
