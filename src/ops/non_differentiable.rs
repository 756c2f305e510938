//! Ops whose outputs carry no gradient: comparisons and logic (boolean outputs), shape queries,
//! index outputs, shape-built tensors and constants. Declared here, one static each, so that "no
//! gradient" is stated rather than implied; none has a rule body. The sweep only visits a node
//! whose output is a float and depends on a float that needs a gradient, which none of these
//! has, except Range with float start/delta: that one would silently get no gradient (models
//! build index ranges from integers or constants).
//! - Equal, Greater, Less, Not, And: https://onnx.ai/onnx/operators/onnx__Equal.html etc.
//! - Shape (opset 19), Size (opset 19), NonZero (opset 13), ArgMax (opset 13).
//! - Range (opset 11), ConstantOfShape (opset 20), Constant (opset 19).
use super::{Kind, Rule};

const fn nd(op: &'static str) -> Rule {
    Rule {
        op,
        kind: Kind::NonDifferentiable,
        vjp: None,
    }
}

pub static AND: Rule = nd("And");
pub static ARG_MAX: Rule = nd("ArgMax");
pub static CONSTANT: Rule = nd("Constant");
pub static CONSTANT_OF_SHAPE: Rule = nd("ConstantOfShape");
pub static EQUAL: Rule = nd("Equal");
pub static GREATER: Rule = nd("Greater");
pub static LESS: Rule = nd("Less");
pub static NON_ZERO: Rule = nd("NonZero");
pub static NOT: Rule = nd("Not");
pub static RANGE: Rule = nd("Range");
pub static SHAPE: Rule = nd("Shape");
pub static SIZE: Rule = nd("Size");

#[cfg(test)]
mod tests {
    use crate::ops::{rule, Kind};
    #[test]
    fn declared_non_differentiable() {
        for op in [
            "And",
            "ArgMax",
            "Constant",
            "ConstantOfShape",
            "Equal",
            "Greater",
            "Less",
            "NonZero",
            "Not",
            "Range",
            "Shape",
            "Size",
        ] {
            let r = rule(op).unwrap_or_else(|| panic!("{op} is not registered"));
            assert_eq!(r.kind, Kind::NonDifferentiable, "{op}");
            assert!(r.vjp.is_none(), "{op}");
        }
    }
}
