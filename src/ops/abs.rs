//! Abs (opset 13): `Y = |X|`. https://onnx.ai/onnx/operators/onnx__Abs.html
//!
//! dX = dY * sgn(X), PyTorch's abs backward: the subgradient 0 at X = 0 (and -0.0), and 0 at
//! NaN too (PyTorch's sgn(NaN) is 0, ONNX's Sign(NaN) is NaN: masked with IsNaN).
use super::rule::{Kind, Rule};
use super::unary;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Abs", Kind::Elementwise)
    .vjp(|c| {
        unary::chain(c, |c, x, _| {
            let sign = c.op("Sign", &[x], vec![]);
            let nan = c.op("IsNaN", &[x], vec![]);
            let zero = c.scalar(0.0, x)?;
            Ok(c.op("Where", &[&nan, &zero, &sign], vec![]))
        })
    })
    .torch(|_, v| unary::torch(v, Tensor::f_abs));

op_tests!(
    abs = [
        Case::new("Abs").values(&[2, 3], &[-0.7, 0.3, -0.1, 0.9, 0.05, -1.2]),
        Case::new("Abs").input(&[3, 4]).seed(7),
    ],
);

/// At 0, -0.0 and NaN (PyTorch's sgn: 0 at all three), against libtorch's abs backward.
#[cfg(test)]
mod kinks {
    use crate::ops::kink_testing::{autograd, check_kinks};
    use crate::ops::testing::Case;
    #[test]
    fn zero_and_nan() {
        let x = [0.0, -0.0, f64::NAN, 1e-300, -1e-300, -0.5];
        let case = Case::new("Abs").values(&[2, 3], &x);
        check_kinks(case, &autograd(|x| x[0].f_abs().unwrap()));
    }
}
