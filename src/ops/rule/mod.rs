//! What an op's table entry declares and what its gradient rule works with: [`Rule`] and
//! [`Kind`]; the rule's view of a node, [`Ctx`]; which ops it may emit, [`Kernels`]; the
//! graph's [`Shapes`] and build-time [`constants`]. A leaf under `ops`: it depends on nothing
//! in `autodiff` or `runtime`, so the op files and the differentiation above them both read it.
//!
//! Every rule declares its kind, so "no gradient" is never implied by omission:
//! - `Linear`: the gradient is the adjoint linear map (Reshape, Transpose, Concat, ...);
//! - `Elementwise`: a pointwise derivative, possibly with broadcasting (Tanh, Mul, ...);
//! - `ZeroGradient`: differentiable almost everywhere with derivative 0 (ArgMax-like);
//! - `NonDifferentiable`: integer, boolean or shape outputs (Shape, Equal, Range, ...);
//! - `NotImplemented(why)`: known, and a model that needs it is refused with the reason.
pub mod consts;
pub mod ctx;
pub mod kernels;
pub mod shapes;

pub use consts::{const_ints, constants};
pub use ctx::Ctx;
pub use kernels::{as_probe_cpu, Kernels, PROBE_CPU_DOMAIN};
pub use shapes::{Info, Shapes, SEQUENCE_OPS};

use super::torch::TorchFwd;
use anyhow::Result;
use onnx_protobuf::{GraphProto, NodeProto};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Linear,
    Elementwise,
    /// A rule with more structure than the two above (Conv, BatchNormalization, Softmax, ...).
    Structured,
    ZeroGradient,
    NonDifferentiable,
    NotImplemented(&'static str),
}

pub type Vjp = fn(&mut Ctx) -> Result<()>;

/// The forward node as a `probe.cpu` kernel (same name, inputs and outputs) where one runs it
/// faster; `None` leaves the node as it is.
pub type ProbeCpuForward = fn(&NodeProto, &Shapes) -> Option<NodeProto>;

/// Where a [`Rewrite`] runs in `probe grad`'s fast path ([`Kernels::ProbeCpu`]); the pipeline
/// (`crate::autodiff::passes`) runs the stages in this order, and within a stage the rewrites
/// in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The forward graph, before differentiation, so the rules differentiate the rewritten
    /// nodes; the shapes gain the values a rewrite adds.
    Forward,
    /// The whole gradient graph (forward and gradient nodes), before each node is offered to
    /// its op's [`Rule::probe_cpu_forward`].
    Graph,
    /// After the forward kernels are in place: a node merged with its only consumer.
    Fuse,
    /// After [`Stage::Fuse`]: a gradient `Sum` merged into the kernel that produces one of its
    /// terms (a `Sum` that a fusion already took is gone by then).
    SumInto,
}

/// A whole-graph rewrite: the graph, its shapes, the differentiated values.
pub type RewriteFn = fn(&mut GraphProto, &mut Shapes, &[String]);

/// A whole-graph rewrite an op takes part in, and where it runs.
pub struct Rewrite {
    pub stage: Stage,
    pub run: RewriteFn,
}

pub struct Rule {
    pub op: &'static str,
    pub kind: Kind,
    /// Emits the gradients of the inputs that need them; `None` for kinds without one.
    pub vjp: Option<Vjp>,
    /// The op's forward on libtorch tensors (see [`super::torch`]), for the interpreter of
    /// `crate::train`.
    pub torch: Option<TorchFwd>,
    /// The forward node's `probe.cpu` replacement, on the finished gradient graph.
    pub probe_cpu_forward: Option<ProbeCpuForward>,
    /// The graph rewrite of `probe grad`'s fast path that this op's file holds.
    pub rewrite: Option<Rewrite>,
}

/// An entry reads as one chain: `Rule::new("Relu", Kind::Elementwise).vjp(vjp).torch(torch)`;
/// what it leaves out it does not have (no gradient, no libtorch forward, no `probe.cpu` forms).
impl Rule {
    pub const fn new(op: &'static str, kind: Kind) -> Rule {
        Rule {
            op,
            kind,
            vjp: None,
            torch: None,
            probe_cpu_forward: None,
            rewrite: None,
        }
    }
    pub const fn vjp(self, vjp: Vjp) -> Rule {
        Rule {
            vjp: Some(vjp),
            ..self
        }
    }
    pub const fn torch(self, torch: TorchFwd) -> Rule {
        Rule {
            torch: Some(torch),
            ..self
        }
    }
    pub const fn rewrite(self, stage: Stage, run: RewriteFn) -> Rule {
        Rule {
            rewrite: Some(Rewrite { stage, run }),
            ..self
        }
    }
    pub const fn probe_cpu_forward(self, f: ProbeCpuForward) -> Rule {
        Rule {
            probe_cpu_forward: Some(f),
            ..self
        }
    }
}
