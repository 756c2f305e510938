//! The graph rewrites of `probe grad`'s fast path ([`Kernels::ProbeCpu`]) as one ordered
//! pipeline around the reverse sweep ([`super::grad`]). What each op takes part in is declared
//! in its table entry ([`crate::ops::Rule`]): its forward node's `probe.cpu` replacement
//! (`probe_cpu_forward`) and the whole-graph rewrite its file holds (`rewrite`, at a
//! [`Stage`]). This file says only when each kind runs, and why there; with
//! [`Kernels::Standard`] none runs and the graph stays standard ONNX.
use crate::ops::rule::{Kernels, Shapes, Stage};
use onnx_protobuf::GraphProto;

mod schedule;

/// Which side of the reverse sweep a pass runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// On the forward graph: the rules differentiate what the pass leaves.
    BeforeGrad,
    /// On the finished gradient graph, forward and gradient nodes together.
    AfterGrad,
}

pub struct Pass {
    pub name: &'static str,
    pub when: When,
    /// Why the pass runs, and why at this point of the order.
    pub why: &'static str,
    pub run: fn(&mut GraphProto, &mut Shapes, &[String]),
}

/// The passes, in the order they run.
pub static PIPELINE: &[Pass] = &[
    Pass {
        name: "forward rewrites",
        when: When::BeforeGrad,
        why: "folds and fusions that change what is differentiated (an inference-mode \
              BatchNormalization into its Conv, the exporter's decomposed attention into one \
              node) must come before the rules see the graph",
        run: |g, s, wrt| rewrites(Stage::Forward, g, s, wrt),
    },
    Pass {
        name: "graph rewrites",
        when: When::AfterGrad,
        why: "node groups as one node (SplitToSequence read only by SequenceAt as a Split, \
              MatMul + bias Add as probe.cpu:MatMulAdd) while the nodes they match are still \
              the standard ones",
        run: |g, s, wrt| rewrites(Stage::Graph, g, s, wrt),
    },
    Pass {
        name: "forward kernels",
        when: When::AfterGrad,
        why: "each standard node a probe.cpu kernel runs faster swapped for it (same name, \
              inputs and outputs); only values with observed types qualify, that is forward \
              values",
        run: |g, s, _| forward_kernels(g, s),
    },
    Pass {
        name: "fusions",
        when: When::AfterGrad,
        why: "a node and its only consumer as one probe.cpu node (a Relu into the \
              BatchNormalization, Conv or Add before it, a ReluGrad into a \
              BatchNormalizationGrad), which needs the forward kernels in place",
        run: |g, s, wrt| fusions(Stage::Fuse, g, s, wrt),
    },
    Pass {
        name: "sums into kernels",
        when: When::AfterGrad,
        why: "a residual stream's gradient Sum into the LayerNormalizationGrad producing one of \
              its terms; after the fusions, which take a Sum that feeds a ReluGrad first",
        run: |g, s, wrt| fusions(Stage::SumInto, g, s, wrt),
    },
    Pass {
        name: "schedule",
        when: When::AfterGrad,
        why: "the leaves (weight gradients, with the nodes that feed only them) listed last, \
              latest ready first, so that ONNX Runtime runs each as soon as its inputs exist \
              (see `schedule.rs`); last, as every rewrite before it changes which nodes are \
              leaves",
        run: |g, _, _| schedule::leaves_last(g),
    },
];

/// The passes before the reverse sweep, for [`Kernels::ProbeCpu`] only; `shapes` gains the
/// values they add.
pub fn before_differentiation(
    graph: &mut GraphProto,
    shapes: &mut Shapes,
    wrt: &[String],
    kernels: Kernels,
) {
    run(When::BeforeGrad, graph, shapes, wrt, kernels);
}

/// The passes on the finished gradient graph, for [`Kernels::ProbeCpu`] only.
pub fn after_differentiation(
    graph: &mut GraphProto,
    shapes: &mut Shapes,
    wrt: &[String],
    kernels: Kernels,
) {
    run(When::AfterGrad, graph, shapes, wrt, kernels);
}

fn run(when: When, graph: &mut GraphProto, shapes: &mut Shapes, wrt: &[String], k: Kernels) {
    if k != Kernels::ProbeCpu {
        return;
    }
    for pass in PIPELINE.iter().filter(|p| p.when == when) {
        (pass.run)(graph, shapes, wrt);
    }
}

/// Every op's rewrites at `stage`, in table order.
fn rewrites(stage: Stage, graph: &mut GraphProto, shapes: &mut Shapes, wrt: &[String]) {
    let all = crate::ops::RULES.iter().filter_map(|r| r.rewrite.as_ref());
    for r in all.filter(|r| r.stage == stage) {
        (r.run)(graph, shapes, wrt);
    }
}

/// [`rewrites`] at a fusion stage, on graphs without subgraphs (If, Loop): the fusions count a
/// value's consumers in the graph itself, and a subgraph's reads would not be counted.
fn fusions(stage: Stage, graph: &mut GraphProto, shapes: &mut Shapes, wrt: &[String]) {
    let nested = |n: &onnx_protobuf::NodeProto| {
        (n.attribute.iter()).any(|a| a.g.is_some() || !a.graphs.is_empty())
    };
    if !graph.node.iter().any(nested) {
        rewrites(stage, graph, shapes, wrt);
    }
}

/// Each node its op's `probe.cpu` replacement, where the op has one and it applies.
fn forward_kernels(graph: &mut GraphProto, shapes: &Shapes) {
    for n in graph.node.iter_mut() {
        let swap = crate::ops::rule(&n.op_type).and_then(|r| r.probe_cpu_forward);
        if let Some(m) = swap.and_then(|f| f(n, shapes)) {
            *n = m;
        }
    }
}

#[cfg(test)]
mod tests;
