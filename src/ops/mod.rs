//! ONNX operators: one file per op, each holding the op's attributes, its libtorch forward, its
//! gradient rule and its tests. Adding an op is that file plus one line in [`RULES`]; nothing
//! else matches on op types.
//!
//! An entry ([`Rule`], in [`rule`] with what a gradient rule works with) declares the op's
//! kind, its gradient rule, its libtorch forward, and what `probe grad`'s fast path does with
//! it: the node's `probe.cpu` replacement and the graph rewrites (folds, fusions) its file
//! holds, which `crate::autodiff::passes` runs in order.

/// An op file's tests as one call, `op_tests!(name = [cases], ...)`: the file's
/// `#[cfg(test)] mod tests`, with `testing::prelude` in scope, holding
/// `testing::gradient_and_torch_tests` of those lists. Defined ahead of the op modules so that
/// each can call it; an op with tests of its own writes its `mod tests` out and calls the inner
/// macro there. The lists expand inside that module, so they name the file's own items by their
/// crate path (`crate::ops::reduce_sum::reduce_cases`), as the layout check reads them.
macro_rules! op_tests {
    ($($lists:tt)*) => {
        #[cfg(test)]
        mod tests {
            // Unused where the lists come from a helper (ReduceSum's).
            #[allow(unused_imports)]
            use $crate::ops::testing::prelude::*;
            $crate::ops::testing::gradient_and_torch_tests!($($lists)*);
        }
    };
}

pub mod abs;
pub mod add;
pub mod attention;
pub mod attrs;
pub mod average_pool;
pub mod batch_normalization;
pub mod cast;
pub mod clip;
pub mod concat;
pub mod conv;
pub mod conv_transpose;
pub mod conventions;
pub mod cum_sum;
pub mod depth_to_space;
pub mod div;
pub mod dropout;
pub mod einsum;
pub mod elu;
pub mod erf;
pub mod exp;
pub mod expand;
pub mod fold_scale;
pub mod gather;
pub mod gather_elements;
pub mod gather_nd;
pub mod gelu;
pub mod gemm;
pub mod global_average_pool;
pub mod group_normalization;
pub mod gru;
pub mod hard_sigmoid;
pub mod hard_swish;
pub mod identity;
pub mod instance_normalization;
pub mod layer_normalization;
pub mod leaky_relu;
pub mod log;
pub mod lstm;
pub mod mat_mul;
pub mod max_min;
pub mod max_pool;
pub mod mish;
pub mod modulo;
pub mod mul;
pub mod neg;
pub mod non_differentiable;
pub mod pad;
pub mod pow;
pub mod prelu;
pub mod reciprocal;
pub mod recurrent;
pub mod reduce_l2;
pub mod reduce_log_sum_exp;
pub mod reduce_max;
pub mod reduce_mean;
pub mod reduce_prod;
pub mod reduce_sum;
pub mod relu;
pub mod reshape;
pub mod resize;
pub mod rms_normalization;
pub mod rounding;
pub mod rule;
pub mod scaled_dot_product_attention;
pub mod scatter_elements;
pub mod sequence_at;
pub mod sigmoid;
pub mod silu;
pub mod slice;
pub mod softmax;
pub mod softplus;
pub mod softsign;
pub mod space_to_depth;
pub mod split;
pub mod split_to_sequence;
pub mod sqrt;
pub mod sum;
pub mod tanh;
pub mod tile;
pub mod top_k;
pub mod torch;
pub mod transpose;
pub mod trig;
pub mod trilu;
pub mod unary;
pub mod r#where;
pub mod window;

pub use rule::{Kind, Rule, Vjp};
pub use torch::{TorchCtx, TorchFwd, Value};

/// Every op probe knows, one line each.
pub static RULES: &[&Rule] = &[
    &abs::RULE,
    &add::ADD,
    &add::SUB,
    &attention::RULE,
    &average_pool::RULE,
    &batch_normalization::RULE,
    &cast::CAST,
    &cast::CAST_LIKE,
    &clip::RULE,
    &concat::RULE,
    &conv::RULE,
    &conv_transpose::RULE,
    &depth_to_space::RULE,
    &div::RULE,
    &dropout::RULE,
    &einsum::RULE,
    &cum_sum::RULE,
    &elu::CELU,
    &elu::ELU,
    &elu::SELU,
    &erf::RULE,
    &exp::RULE,
    &expand::RULE,
    &fold_scale::RULE,
    &gather::RULE,
    &gather_elements::RULE,
    &gather_nd::RULE,
    &gelu::RULE,
    &gemm::RULE,
    &global_average_pool::RULE,
    &gru::RULE,
    &group_normalization::RULE,
    &hard_sigmoid::RULE,
    &hard_swish::RULE,
    &identity::RULE,
    &instance_normalization::RULE,
    &layer_normalization::RULE,
    &leaky_relu::RULE,
    &log::RULE,
    &lstm::RULE,
    &mat_mul::RULE,
    &max_min::MAX,
    &max_min::MIN,
    &max_pool::RULE,
    &mish::RULE,
    &modulo::RULE,
    &mul::RULE,
    &neg::RULE,
    &non_differentiable::AND,
    &non_differentiable::ARG_MAX,
    &non_differentiable::CONSTANT,
    &non_differentiable::CONSTANT_OF_SHAPE,
    &non_differentiable::EQUAL,
    &non_differentiable::GREATER,
    &non_differentiable::GREATER_OR_EQUAL,
    &non_differentiable::IS_INF,
    &non_differentiable::IS_NAN,
    &non_differentiable::LESS,
    &non_differentiable::LESS_OR_EQUAL,
    &non_differentiable::NON_ZERO,
    &non_differentiable::NOT,
    &non_differentiable::OR,
    &non_differentiable::RANGE,
    &non_differentiable::SHAPE,
    &non_differentiable::SIZE,
    &non_differentiable::XOR,
    &pad::RULE,
    &pow::RULE,
    &prelu::RULE,
    &reciprocal::RULE,
    &reduce_l2::RULE,
    &reduce_log_sum_exp::RULE,
    &reduce_max::MAX,
    &reduce_mean::RULE,
    &reduce_max::MIN,
    &reduce_prod::RULE,
    &reduce_sum::RULE,
    &relu::RULE,
    &reshape::FLATTEN,
    &reshape::RESHAPE,
    &reshape::SQUEEZE,
    &reshape::UNSQUEEZE,
    &resize::RULE,
    &rms_normalization::RULE,
    &rounding::CEIL,
    &rounding::FLOOR,
    &rounding::ROUND,
    &rounding::SIGN,
    &scaled_dot_product_attention::RULE,
    &scatter_elements::RULE,
    &sequence_at::RULE,
    &sigmoid::RULE,
    &silu::RULE,
    &slice::RULE,
    &softmax::LOG_SOFTMAX,
    &softmax::SOFTMAX,
    &softplus::RULE,
    &softsign::RULE,
    &space_to_depth::RULE,
    &split::RULE,
    &split_to_sequence::RULE,
    &sqrt::RULE,
    &sum::RULE,
    &tanh::RULE,
    &tile::RULE,
    &top_k::RULE,
    &transpose::RULE,
    &trig::COS,
    &trig::SIN,
    &trilu::RULE,
    &r#where::RULE,
];

pub fn rule(op_type: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.op == op_type)
}

#[cfg(test)]
pub mod kink_testing;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
pub mod torch_testing;
