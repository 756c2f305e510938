//! Which ops a gradient rule may emit, and the names probe's own CPU kernels go by: the custom
//! domain `probe.cpu` that probe's ONNX Runtime sessions register (`crate::runtime`, which
//! names its kernels with these same strings).
use onnx_protobuf::{AttributeProto, NodeProto};

/// The custom op domain of probe's CPU kernels.
pub const PROBE_CPU_DOMAIN: &str = "probe.cpu";

// The kernels' op types, one constant each: the rules in `ops/` write them and the registry in
// `runtime/cpu_ops/` (one file per kernel family) registers them under the same constant, so a
// name cannot drift between the two. The forward replacements keep the ONNX op's own type
// (`Conv`, `MatMul`, ...) in the `probe.cpu` domain.

/// `Conv` forward by libtorch (`runtime/cpu_ops/conv.rs`).
pub const CONV: &str = "Conv";
/// Conv's parameter gradients (dW, dB and, where needed, dX) in one kernel.
pub const CONV_GRAD: &str = "ConvGrad";
/// Conv's input gradient alone.
pub const CONV_GRAD_X: &str = "ConvGradX";
/// A strided Conv's dX assembled from its phases (`ops/conv/phases.rs`).
pub const INTERLEAVE: &str = "Interleave";
/// `MatMul` by libtorch (`runtime/cpu_ops/matmul.rs`).
pub const MAT_MUL: &str = "MatMul";
/// `MatMul` followed by the `Add` of a bias, in one kernel.
pub const MAT_MUL_ADD: &str = "MatMulAdd";
/// `dX = dY (X > 0)` (`runtime/cpu_ops/relu.rs`).
pub const RELU_GRAD: &str = "ReluGrad";
/// `dX = dY [lo < X < hi]` (or `<=`): Clip's input gradient (`runtime/cpu_ops/clip.rs`).
pub const CLIP_GRAD: &str = "ClipGrad";
/// A residual `Add` and its `Relu` in one pass.
pub const ADD_RELU: &str = "AddRelu";
/// `dX = (dY1 + dY2) (X > 0)`: a two-consumer Relu's gradient sum and mask in one pass.
pub const SUM_RELU_GRAD: &str = "SumReluGrad";
/// `BatchNormalization` forward (`runtime/cpu_ops/batch_norm.rs`).
pub const BATCH_NORMALIZATION: &str = "BatchNormalization";
/// BatchNormalization's gradients (dX, dScale, dB).
pub const BATCH_NORMALIZATION_GRAD: &str = "BatchNormalizationGrad";
/// A ReluGrad fused into the BatchNormalizationGrad that consumes it.
pub const RELU_BATCH_NORMALIZATION_GRAD: &str = "ReluBatchNormalizationGrad";
/// `Softmax` forward (`runtime/cpu_ops/softmax.rs`).
pub const SOFTMAX: &str = "Softmax";
/// `LogSoftmax` forward (`runtime/cpu_ops/softmax.rs`).
pub const LOG_SOFTMAX: &str = "LogSoftmax";
/// `dX = Y (dY - sum(dY Y))` along the axis.
pub const SOFTMAX_GRAD: &str = "SoftmaxGrad";
/// `dX = dY - exp(Y) sum(dY)` along the axis.
pub const LOG_SOFTMAX_GRAD: &str = "LogSoftmaxGrad";
/// LogSoftmaxGrad of a GatherElementsGrad (the loss head's pick) in one kernel.
pub const LOG_SOFTMAX_PICK_GRAD: &str = "LogSoftmaxPickGrad";
/// `LayerNormalization` forward (`runtime/cpu_ops/layer_norm.rs`).
pub const LAYER_NORMALIZATION: &str = "LayerNormalization";
/// LayerNormalization's gradients (dX, dScale, dB).
pub const LAYER_NORMALIZATION_GRAD: &str = "LayerNormalizationGrad";
/// `Y = X sigmoid(X)`, a Sigmoid and the Mul by its input fused (`ops/silu.rs`,
/// `runtime/cpu_ops/silu.rs`).
pub const SILU: &str = "Silu";
/// Silu's input gradient.
pub const SILU_GRAD: &str = "SiluGrad";
/// MaxPool's input gradient from its Indices (`runtime/cpu_ops/max_pool.rs`).
pub const MAX_POOL_GRAD: &str = "MaxPoolGrad";
/// `W' = f32(f64(W) s)` per output channel: the BatchNormalization fold's weight
/// (`ops/fold_scale.rs`, `runtime/cpu_ops/fold.rs`).
pub const FOLD_SCALE: &str = "FoldScale";
/// FoldScale's gradients (dW, ds).
pub const FOLD_SCALE_GRAD: &str = "FoldScaleGrad";
/// Gelu's input gradient (`runtime/cpu_ops/gelu.rs`).
pub const GELU_GRAD: &str = "GeluGrad";
/// The fused attention kernel: the op type the attention fusion writes and the op's rule
/// differentiates (`runtime/cpu_ops/attention.rs`).
pub const SCALED_DOT_PRODUCT_ATTENTION: &str = "ScaledDotProductAttention";
/// The fused attention's gradients.
pub const SCALED_DOT_PRODUCT_ATTENTION_GRAD: &str = "ScaledDotProductAttentionGrad";
/// Gather's data gradient, a scatter-add (`runtime/cpu_ops/gather.rs`).
pub const GATHER_GRAD: &str = "GatherGrad";
/// GatherElements' data gradient, a scatter-add.
pub const GATHER_ELEMENTS_GRAD: &str = "GatherElementsGrad";
/// `Transpose` (`runtime/cpu_ops/transpose.rs`).
pub const TRANSPOSE: &str = "Transpose";
/// A sum over leading axes (a broadcast operand's gradient) (`runtime/cpu_ops/reduce.rs`).
pub const REDUCE_SUM_LEADING: &str = "ReduceSumLeading";

/// The rule table's entries for ops only probe's fast path writes (its fusions, in domain
/// `probe.cpu`), not ONNX operators a model brings: left out of the README's operator list.
pub const FUSED_OPS: [&str; 3] = [SCALED_DOT_PRODUCT_ATTENTION, SILU, FOLD_SCALE];

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
