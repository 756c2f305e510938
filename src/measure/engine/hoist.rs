//! Work that depends on the weights alone, done once per checkpoint instead of once per batch.
//!
//! The gradient graph takes the checkpoint's state as inputs (one session serves every
//! checkpoint), so ONNX Runtime cannot fold what depends on the state only: a BatchNormalization
//! folded into its convolution (`W s` in f64 and back), the transposed weights of a product's
//! backward, the flipped kernels of a convolution's dX. On torchvision's resnet18 at 3x64x64
//! that was about a quarter of every batch. [`split`] cuts the graph in two: a *weights* graph
//! of every node whose inputs are the state (or constants), whose outputs feed the rest, and a
//! *batch* graph that takes those outputs as inputs. The nodes, kernels and values are the same;
//! only when they run changes, so the results are identical.
use onnx_protobuf::{type_proto, GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto};
use std::collections::HashSet;

/// The two graphs, and what connects them.
pub struct Split {
    /// State inputs to the weights graph; its outputs are `hoisted`.
    pub weights: ModelProto,
    pub weights_state: Vec<String>,
    /// The values computed once per checkpoint, in the weights graph's output order.
    pub hoisted: Vec<String>,
    /// The batch graph: the data, the targets, `batch_state`, then `hoisted`, as inputs (their
    /// types are set by [`Split::batch_with_types`] once the weights graph's session knows them).
    batch: ModelProto,
    /// The state inputs the batch graph still reads itself.
    pub batch_state: Vec<String>,
}

impl Split {
    /// The batch graph with the hoisted values declared as inputs of the given ONNX element
    /// types (shapes left open).
    pub fn batch_with_types(mut self, elem_types: &[i32]) -> (ModelProto, Vec<String>) {
        let g = self.batch.graph.as_mut().expect("graph");
        for (name, &t) in self.hoisted.iter().zip(elem_types) {
            let mut tt = type_proto::Tensor::new();
            tt.elem_type = t;
            tt.shape = protobuf::MessageField::none();
            let mut tp = TypeProto::new();
            tp.value = Some(type_proto::Value::TensorType(tt));
            let mut v = ValueInfoProto::new();
            v.name = name.clone();
            v.type_ = protobuf::MessageField::some(tp);
            g.input.push(v);
        }
        (self.batch, self.batch_state)
    }
}

fn has_subgraph(n: &NodeProto) -> bool {
    n.attribute
        .iter()
        .any(|a| a.g.is_some() || !a.graphs.is_empty())
}

/// Cuts `proto`'s graph (inputs: data, targets, then `state`) into a weights graph and a batch
/// graph, or `None` where no node depends on the state alone.
pub fn split(proto: &ModelProto, state: &[String]) -> Option<Split> {
    let g = proto.graph.as_ref()?;
    let state_set: HashSet<&str> = state.iter().map(String::as_str).collect();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    // Values known without the data: from the state (`weighty`) or from constants alone.
    let mut weighty: HashSet<&str> = state_set.clone();
    let mut constant: HashSet<&str> = inits.clone();
    // Per node: 0 the batch graph, 1 the weights graph, 2 constants-only (both, where used).
    let mut side = Vec::with_capacity(g.node.len());
    for n in &g.node {
        let inputs = n.input.iter().filter(|x| !x.is_empty());
        let known = !has_subgraph(n)
            && inputs
                .clone()
                .all(|x| weighty.contains(x.as_str()) || constant.contains(x.as_str()))
            && !n.output.iter().any(|o| outputs.contains(o.as_str()));
        let from_state = inputs.clone().any(|x| weighty.contains(x.as_str()));
        let s: u8 = match (known, from_state) {
            (true, true) => 1,
            (true, false) => 2,
            _ => 0,
        };
        for o in &n.output {
            match s {
                1 => weighty.insert(o.as_str()),
                2 => constant.insert(o.as_str()),
                _ => false,
            };
        }
        side.push(s);
    }
    // Which values each side reads.
    let reads = |want: &dyn Fn(u8) -> bool| -> HashSet<&str> {
        g.node
            .iter()
            .zip(&side)
            .filter(|(_, &s)| want(s))
            .flat_map(|(n, _)| n.input.iter().map(String::as_str))
            .collect()
    };
    let batch_reads = reads(&|s| s == 0);
    let weights_reads = reads(&|s| s == 1);
    let hoisted: Vec<String> = g
        .node
        .iter()
        .zip(&side)
        .filter(|(_, &s)| s == 1)
        .flat_map(|(n, _)| n.output.iter())
        .filter(|o| batch_reads.contains(o.as_str()))
        .cloned()
        .collect();
    if hoisted.is_empty() {
        return None;
    }
    // Constant-only nodes go wherever they are read (transitively: a constant read by a kept
    // constant is kept too; walking backwards over the topological order sees readers first).
    fn keep_constants<'g>(g: &'g GraphProto, side: &[u8], mut need: HashSet<&'g str>) -> Vec<bool> {
        let mut keep = vec![false; g.node.len()];
        for (i, n) in g.node.iter().enumerate().rev() {
            if side[i] == 2 && n.output.iter().any(|o| need.contains(o.as_str())) {
                keep[i] = true;
                need.extend(n.input.iter().map(String::as_str));
            }
        }
        keep
    }
    let weights_consts = keep_constants(g, &side, weights_reads.clone());
    let batch_consts = keep_constants(g, &side, batch_reads.clone());

    let graph_of = |nodes: Vec<NodeProto>, name: &str| -> GraphProto {
        let mut out = GraphProto::new();
        out.name = format!("{}/{name}", g.name);
        let read: HashSet<&str> = nodes
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        out.initializer = g
            .initializer
            .iter()
            .filter(|t| read.contains(t.name.as_str()))
            .cloned()
            .collect();
        out.node = nodes;
        out
    };
    let pick = |f: &dyn Fn(usize) -> bool| -> Vec<NodeProto> {
        g.node
            .iter()
            .enumerate()
            .filter(|(i, _)| f(*i))
            .map(|(_, n)| n.clone())
            .collect()
    };

    let mut wg = graph_of(pick(&|i| side[i] == 1 || weights_consts[i]), "weights");
    let weights_state: Vec<String> = state
        .iter()
        .filter(|s| weights_reads.contains(s.as_str()))
        .cloned()
        .collect();
    wg.input = g
        .input
        .iter()
        .filter(|v| weights_state.contains(&v.name))
        .cloned()
        .collect();
    wg.output = hoisted
        .iter()
        .map(|h| {
            let mut v = ValueInfoProto::new();
            v.name = h.clone();
            v
        })
        .collect();

    let mut bg = graph_of(pick(&|i| side[i] == 0 || batch_consts[i]), "batch");
    let batch_state: Vec<String> = state
        .iter()
        .filter(|s| batch_reads.contains(s.as_str()))
        .cloned()
        .collect();
    bg.input = g
        .input
        .iter()
        .filter(|v| !state_set.contains(v.name.as_str()) || batch_state.contains(&v.name))
        .cloned()
        .collect();
    bg.output = g.output.clone();
    let hoisted_set: HashSet<&str> = hoisted.iter().map(String::as_str).collect();
    bg.value_info = g
        .value_info
        .iter()
        .filter(|v| !hoisted_set.contains(v.name.as_str()))
        .cloned()
        .collect();

    let model = |graph: GraphProto| -> ModelProto {
        let mut m = proto.clone_without_graph();
        m.graph = protobuf::MessageField::some(graph);
        m
    };
    Some(Split {
        weights: model(wg),
        weights_state,
        hoisted,
        batch: model(bg),
        batch_state,
    })
}

trait CloneWithoutGraph {
    fn clone_without_graph(&self) -> ModelProto;
}

impl CloneWithoutGraph for ModelProto {
    fn clone_without_graph(&self) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = self.ir_version;
        m.opset_import = self.opset_import.clone();
        m.producer_name = self.producer_name.clone();
        m.producer_version = self.producer_version.clone();
        m.domain = self.domain.clone();
        m.model_version = self.model_version;
        m.functions = self.functions.clone();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::value_info;
    use crate::ops::testing::{model_of, node};
    use crate::tensor::DType;

    /// y = x (W^T * 2) + b: the scaled transpose is the weights' alone and is hoisted, with the
    /// constant it reads; the product reads the data and stays, as does the bias, which only
    /// the batch graph reads (it stays a state input there).
    #[test]
    fn the_weights_part_is_cut_out_and_fed_back() {
        let mut g = GraphProto::new();
        g.name = "t".into();
        for (n, d) in [
            ("x", &[None, Some(3)][..]),
            ("W", &[Some(2), Some(3)]),
            ("b", &[Some(2)]),
        ] {
            g.input.push(value_info(n, DType::F32, d, n));
        }
        g.node.push(node("Transpose", &["W"], "Wt"));
        g.node.push(node("Constant", &[], "two"));
        g.node.push(node("Mul", &["Wt", "two"], "Ws"));
        g.node.push(node("MatMul", &["x", "Ws"], "xw"));
        g.node.push(node("Add", &["xw", "b"], "y"));
        g.output
            .push(value_info("y", DType::F32, &[None, Some(2)], "n"));
        let m = model_of(g, 17);
        let state = vec!["W".to_string(), "b".to_string()];
        let sp = split(&m, &state).expect("something to hoist");
        assert_eq!(sp.hoisted, ["Ws"]);
        assert_eq!(sp.weights_state, ["W"]);
        let ops = |m: &ModelProto| -> Vec<String> {
            m.graph.node.iter().map(|n| n.op_type.clone()).collect()
        };
        assert_eq!(ops(&sp.weights), ["Transpose", "Constant", "Mul"]);
        let (batch, batch_state) = sp.batch_with_types(&[1]);
        assert_eq!(batch_state, ["b"]);
        assert_eq!(ops(&batch), ["MatMul", "Add"]);
        let inputs: Vec<&str> = batch.graph.input.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(inputs, ["x", "b", "Ws"]);
        // Nothing to hoist: no split.
        let mut g = GraphProto::new();
        g.input.push(value_info("x", DType::F32, &[None], "n"));
        g.input.push(value_info("W", DType::F32, &[None], "n"));
        g.node.push(node("Mul", &["x", "W"], "y"));
        g.output.push(value_info("y", DType::F32, &[None], "n"));
        assert!(split(&model_of(g, 17), &["W".to_string()]).is_none());
    }
}
