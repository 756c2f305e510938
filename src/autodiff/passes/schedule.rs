//! The node order ONNX Runtime's executor takes its schedule from.
//!
//! ONNX Runtime runs a graph in the order of a reverse depth-first search from its leaves (the
//! nodes whose outputs no node reads: here the gradient outputs' producers, the loss), each leaf
//! visited after the ones listed after it (a stack: the last listed first), each node emitted
//! once all its inputs are. The reverse sweep emits a layer's weight gradient (a leaf) right
//! after the dY it reads, head first, so the leaf listed last is the first layer's: its search
//! pulls in the whole chain of input gradients from the loss down to it, and every other
//! layer's dW, dB came after that chain. Each layer's dY and the activations its dW reads were
//! then all alive at once at the end of the backward: on torchvision's convnext_tiny at batch 32
//! the GELU gradients of six blocks and their inputs, 4.3 GB at the peak against 3.3 GB of
//! activations PyTorch keeps.
//!
//! Here each leaf goes to the end of the list with its tail (the nodes that feed only it: a
//! weight gradient's MatMul and the Identity naming it as a graph output), the tails in the
//! reverse of the order their other inputs become ready in the sweep. ONNX Runtime then visits
//! the head's dW first: its search stops at the head's dY, the next tail's continues the chain
//! one layer down, and each dW runs as soon as its dY exists, as PyTorch's autograd runs a
//! layer's backward. A tail's nodes are read by nothing outside it, so the list stays
//! topologically sorted. Only the order changes: every node computes what it computed.
use onnx_protobuf::{GraphProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// Moves each leaf of `graph` to the end of its node list, with the nodes that feed only it (its
/// tail: a weight gradient's MatMul and the Identity naming it), the tails in the reverse of
/// the order their other inputs become ready in; the other nodes keep their order. ONNX Runtime
/// then visits the tail whose inputs are ready first first (see the module doc). A value read
/// inside a subgraph (If, Loop) counts as read.
pub fn leaves_last(graph: &mut GraphProto) {
    let n = graph.node.len();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o.as_str(), i);
        }
    }
    // Each node's consumers (nodes reading one of its outputs, in a subgraph too).
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.node.iter().enumerate() {
        let mut read = HashSet::new();
        reads(node, &mut read);
        let mut from: Vec<usize> = read
            .iter()
            .filter_map(|v| producer.get(v).copied())
            .collect();
        from.sort_unstable();
        from.dedup();
        for p in from.into_iter().filter(|&p| p != i) {
            consumers[p].push(i);
        }
    }
    // Tails, backwards over the topological order (consumers first): a leaf starts one, a
    // node all of whose consumers are in one tail joins it.
    let mut tail: Vec<Option<usize>> = vec![None; n];
    for i in (0..n).rev() {
        tail[i] = match consumers[i].as_slice() {
            [] => Some(i),
            [first, rest @ ..] => {
                let t = tail[*first];
                t.filter(|t| rest.iter().all(|c| tail[*c] == Some(*t)))
            }
        };
    }
    // A tail is ready once the last of the nodes outside it that it reads has run.
    // (Indexed by the tail's leaf.)
    let mut ready = vec![0usize; n];
    for (p, cs) in consumers.iter().enumerate() {
        for t in cs.iter().filter_map(|&c| tail[c]) {
            if tail[p] != Some(t) {
                ready[t] = ready[t].max(p);
            }
        }
    }
    let nodes = std::mem::take(&mut graph.node);
    let mut inner = Vec::with_capacity(n);
    let mut tails: Vec<(usize, usize, NodeProto)> = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        match tail[i] {
            Some(t) => tails.push((ready[t], t, node)),
            None => inner.push(node),
        }
    }
    // Latest-ready tails first; a tail's nodes in their order (the sort is stable).
    tails.sort_by_key(|(r, t, _)| std::cmp::Reverse((*r, *t)));
    inner.extend(tails.into_iter().map(|(_, _, node)| node));
    graph.node = inner;
}

/// The names `n` reads, its subgraphs' reads included.
fn reads<'a>(n: &'a NodeProto, out: &mut HashSet<&'a str>) {
    out.extend(n.input.iter().filter(|i| !i.is_empty()).map(String::as_str));
    for a in &n.attribute {
        for g in a.g.iter().chain(a.graphs.iter()) {
            for m in &g.node {
                reads(m, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::leaves_last;
    use crate::ops::testing::node;
    use onnx_protobuf::GraphProto;

    fn names(g: &GraphProto) -> Vec<&str> {
        g.node.iter().map(|n| n.output[0].as_str()).collect()
    }

    /// Every input produced before it is read (graph inputs aside).
    fn sorted(g: &GraphProto) -> bool {
        let mut seen: std::collections::HashSet<&str> = ["x"].into();
        g.node.iter().all(|n| {
            let ok = n.input.iter().all(|i| seen.contains(i.as_str()));
            seen.extend(n.output.iter().map(String::as_str));
            ok
        })
    }

    /// A sweep's order: a chain a -> b -> c with leaves off a (la) and b (lb); c itself is a
    /// leaf. Leaves go last, the latest ready first: c and lb (ready after b), then la.
    #[test]
    fn leaves_go_last_latest_ready_first() {
        let mut g = GraphProto::new();
        g.node.push(node("Relu", &["x"], "a"));
        g.node.push(node("Neg", &["a"], "la"));
        g.node.push(node("Relu", &["a"], "b"));
        g.node.push(node("Neg", &["b"], "lb"));
        g.node.push(node("Relu", &["b"], "c"));
        leaves_last(&mut g);
        assert_eq!(names(&g), ["a", "b", "c", "lb", "la"]);
        assert!(sorted(&g));
    }

    /// A weight gradient's MatMul and the Identity naming it move together, in their order;
    /// the tails by when what they read outside themselves is ready.
    #[test]
    fn tails_move_whole() {
        let mut g = GraphProto::new();
        g.node.push(node("Relu", &["x"], "a"));
        g.node.push(node("MatMul", &["a", "x"], "m1"));
        g.node.push(node("Identity", &["m1"], "g1"));
        g.node.push(node("Relu", &["a"], "b"));
        g.node.push(node("MatMul", &["b", "x"], "m2"));
        g.node.push(node("Identity", &["m2"], "g2"));
        g.node.push(node("Relu", &["b"], "c"));
        leaves_last(&mut g);
        assert_eq!(names(&g), ["a", "b", "c", "m2", "g2", "m1", "g1"]);
        assert!(sorted(&g));
    }

    /// A value read only inside an If's branch is read: its producer stays before the If.
    #[test]
    fn subgraph_reads_count() {
        let mut branch = GraphProto::new();
        branch.node.push(node("Neg", &["a"], "r"));
        let mut iff = node("If", &["cond"], "y");
        let mut at = onnx_protobuf::AttributeProto::new();
        at.name = "then_branch".into();
        at.g = protobuf::MessageField::some(branch);
        iff.attribute.push(at);
        let mut g = GraphProto::new();
        g.node.push(node("Relu", &["x"], "a"));
        g.node.push(iff);
        leaves_last(&mut g);
        assert_eq!(names(&g), ["a", "y"]);
    }
}
