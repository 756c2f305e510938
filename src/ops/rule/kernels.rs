//! Which ops a gradient rule may emit, and the names probe's own CPU kernels go by: the custom
//! domain `probe.cpu` that probe's ONNX Runtime sessions register (`crate::runtime`, which
//! names its kernels with these same strings).
use onnx_protobuf::{AttributeProto, NodeProto};

/// The custom op domain of probe's CPU kernels.
pub const PROBE_CPU_DOMAIN: &str = "probe.cpu";

/// The fused attention kernel: the op type the attention fusion writes and the op's rule
/// differentiates (its gradient kernel is this name + `Grad`).
pub const SCALED_DOT_PRODUCT_ATTENTION: &str = "ScaledDotProductAttention";

/// Which ops the gradient rules may emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Standard ONNX only: any runtime and `onnx.checker` take the graph (`probe autodiff`,
    /// `probe grad --standard-ops`).
    #[default]
    Standard,
    /// Rules may also emit the `probe.cpu` custom ops ([`PROBE_CPU_DOMAIN`]), which only
    /// probe's ONNX Runtime CPU sessions can run: the fast path of `probe grad`.
    ProbeCpu,
}

/// `n` as the `probe.cpu` op of the same type, name, inputs and outputs, with `attribute`: the
/// graph rewrites' forward replacements ([`super::Rule::probe_cpu_forward`]).
pub fn as_probe_cpu(n: &NodeProto, attribute: Vec<AttributeProto>) -> NodeProto {
    let mut m = n.clone();
    m.domain = PROBE_CPU_DOMAIN.into();
    m.attribute = attribute;
    m
}
