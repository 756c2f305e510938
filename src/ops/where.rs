//! Where (opset 16): `Y = C ? A : B` with multidirectional broadcasting of all three.
//! https://onnx.ai/onnx/operators/onnx__Where.html
//!
//! C is boolean, not differentiable. dA = unbroadcast(Where(C, dY, 0)),
//! dB = unbroadcast(Where(C, 0, dY)).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Where", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let cond = input(&v, 0)?.f_to_kind(tch::Kind::Bool)?;
    one(input(&v, 1)?.f_where_self(&cond, input(&v, 2)?)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (cond, y) = (c.input(0).to_string(), c.output(0).to_string());
    if !c.dtype(&y)?.is_float() {
        return Ok(());
    }
    for i in [1, 2] {
        if !c.needs(i) {
            continue;
        }
        let zero = c.scalar(0.0, &y)?;
        let t = if i == 1 {
            c.op("Where", &[&cond, &g, &zero], vec![])
        } else {
            c.op("Where", &[&cond, &zero, &g], vec![])
        };
        // Where(C, dY, 0) has Y's shape: C broadcasts into Y, never beyond it.
        c.set_unbroadcast(i, &t, &y)?;
    }
    Ok(())
}

op_tests!(
    where_same_shapes = [Case::new("Where")
        .bools(&[2, 3], &[true, false, true, false, false, true])
        .input(&[2, 3])
        .input(&[2, 3])],
    where_broadcasting = [
        // Condition broadcast over the leading axis, A over the last, B a scalar-like [1].
        Case::new("Where")
            .bools(&[3, 1], &[true, false, true])
            .input(&[2, 1, 4])
            .input(&[1]),
        // A and B smaller than the condition.
        Case::new("Where")
            .bools(&[2, 3], &[false, true, true, false, true, false])
            .input(&[3])
            .input(&[2, 1]),
        Case::new("Where")
            .bools(&[], &[true])
            .input(&[2, 3])
            .fixed(&[3]),
    ],
);

/// The branch not chosen gets exactly 0, whatever it holds (NaN, infinities: a masked attention
/// score), and the chosen one dY, against libtorch's where backward.
#[cfg(test)]
mod kinks {
    use crate::ops::kink_testing::{autograd, check_kinks};
    use crate::ops::testing::Case;
    #[test]
    fn unchosen_branch_gets_zero() {
        let cond = [true, false, true, false, true, false];
        let a = [f64::NAN, 1.0, 0.0, f64::INFINITY, -0.0, 2.0];
        let b = [3.0, f64::NEG_INFINITY, f64::NAN, 0.0, 1.0, -0.0];
        let case = Case::new("Where")
            .bools(&[2, 3], &cond)
            .values(&[2, 3], &a)
            .values(&[2, 3], &b);
        let c = tch::Tensor::from_slice(&cond).reshape([2, 3]);
        check_kinks(
            case,
            &autograd(move |x| x[0].f_where_self(&c, &x[1]).unwrap()),
        );
    }
}
