//! Gelu (opset 20): `Y = X * Phi(X)`, attribute `approximate` = "none" (default) | "tanh".
//! https://onnx.ai/onnx/operators/onnx__Gelu.html
//!
//! Exact: dY/dX = Phi(x) + x phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)),
//! phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
//! Tanh: Y = 0.5 x (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3), so
//! dY/dX = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
//! With probe's CPU kernels (f32) one `probe.cpu:GeluGrad` node (libtorch's gelu_backward).
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_string;
use crate::ops::rule::kernels::GELU_GRAD;
use crate::tensor::DType;
use anyhow::{bail, Result};
use std::f64::consts::{FRAC_1_SQRT_2, PI};

pub static RULE: Rule = Rule::new("Gelu", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let approximate = c.attr_s("approximate").unwrap_or_else(|| "none".into());
    if approximate != "none" && approximate != "tanh" {
        bail!("Gelu: unknown approximate = \"{approximate}\"");
    }
    one(input(&v, 0)?.f_gelu(&approximate)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let approximate = c.attr_s("approximate").unwrap_or_else(|| "none".into());
    if approximate != "none" && approximate != "tanh" {
        bail!("Gelu: unknown approximate = \"{approximate}\"");
    }
    if c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // One pass (libtorch's gelu_backward) instead of eleven; runtime/cpu_ops.
        let attrs = vec![attr_string("approximate", &approximate)];
        let gx = c
            .probe_cpu_op(GELU_GRAD, &[&g, &x], attrs, 1)
            .pop()
            .unwrap();
        c.set(0, gx);
        return Ok(());
    }
    let d = if approximate == "tanh" {
        tanh(c, &x)?
    } else {
        exact(c, &x)?
    };
    let gx = c.op("Mul", &[&g, &d], vec![]);
    c.set(0, gx);
    Ok(())
}

/// Phi(x) + x phi(x).
fn exact(c: &mut Ctx, x: &str) -> Result<String> {
    let r2 = c.scalar(FRAC_1_SQRT_2, x)?;
    let xs = c.op("Mul", &[x, &r2], vec![]);
    let erf = c.op("Erf", &[&xs], vec![]);
    let one = c.scalar(1.0, x)?;
    let half = c.scalar(0.5, x)?;
    let s = c.op("Add", &[&one, &erf], vec![]);
    let cdf = c.op("Mul", &[&half, &s], vec![]);
    let x2 = c.op("Mul", &[x, x], vec![]);
    let mhalf = c.scalar(-0.5, x)?;
    let e = c.op("Mul", &[&mhalf, &x2], vec![]);
    let e = c.op("Exp", &[&e], vec![]);
    let k = c.scalar(1.0 / (2.0 * PI).sqrt(), x)?;
    let pdf = c.op("Mul", &[&k, &e], vec![]);
    let xpdf = c.op("Mul", &[x, &pdf], vec![]);
    Ok(c.op("Add", &[&cdf, &xpdf], vec![]))
}

/// 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3a x^2), a = 0.044715.
fn tanh(c: &mut Ctx, x: &str) -> Result<String> {
    const A: f64 = 0.044715;
    let k = (2.0 / PI).sqrt();
    let x2 = c.op("Mul", &[x, x], vec![]);
    let x3 = c.op("Mul", &[&x2, x], vec![]);
    let a = c.scalar(A, x)?;
    let ax3 = c.op("Mul", &[&a, &x3], vec![]);
    let inner = c.op("Add", &[x, &ax3], vec![]);
    let kk = c.scalar(k, x)?;
    let u = c.op("Mul", &[&kk, &inner], vec![]);
    let t = c.op("Tanh", &[&u], vec![]);
    let one = c.scalar(1.0, x)?;
    let half = c.scalar(0.5, x)?;
    let opt = c.op("Add", &[&one, &t], vec![]);
    let first = c.op("Mul", &[&half, &opt], vec![]);
    let t2 = c.op("Mul", &[&t, &t], vec![]);
    let sech2 = c.op("Sub", &[&one, &t2], vec![]);
    let a3 = c.scalar(3.0 * A, x)?;
    let a3x2 = c.op("Mul", &[&a3, &x2], vec![]);
    let du = c.op("Add", &[&one, &a3x2], vec![]);
    let du = c.op("Mul", &[&kk, &du], vec![]);
    let hx = c.op("Mul", &[&half, x], vec![]);
    let second = c.op("Mul", &[&hx, &sech2], vec![]);
    let second = c.op("Mul", &[&second, &du], vec![]);
    Ok(c.op("Add", &[&first, &second], vec![]))
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_string;
    use crate::ops::erf::tests::{assert_close, grid, rule_derivative_f32, torch_derivative};
    use crate::ops::testing::{check, Case};
    fn exact_cases(check: fn(Case)) {
        check(Case::new("Gelu").input_in(&[2, 3, 4], -3.0, 3.0).f32());
    }
    fn tanh_cases(check: fn(Case)) {
        check(
            Case::new("Gelu")
                .input_in(&[3, 4], -3.0, 3.0)
                .attr(attr_string("approximate", "tanh")),
        );
    }
    #[test]
    fn probe_cpu_kernel() {
        check(
            Case::new("Gelu")
                .input_in(&[2, 3, 4], -3.0, 3.0)
                .f32()
                .probe_cpu(),
        );
        check(
            Case::new("Gelu")
                .input_in(&[3, 4], -3.0, 3.0)
                .attr(attr_string("approximate", "tanh"))
                .f32()
                .probe_cpu(),
        );
    }
    #[test]
    fn torch_forward() {
        exact_cases(crate::ops::torch_testing::check_torch);
        tanh_cases(crate::ops::torch_testing::check_torch);
        // On a grid, where the two forms differ by up to 8.7e-4.
        let xs = grid(-4.0, 4.0, 81);
        let xs: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        crate::ops::torch_testing::check_torch(Case::new("Gelu").values(&[81], &xs));
        crate::ops::torch_testing::check_torch(
            Case::new("Gelu")
                .values(&[81], &xs)
                .attr(attr_string("approximate", "tanh")),
        );
    }
    #[test]
    fn gelu_exact() {
        // The exact form needs Erf, which ONNX Runtime runs only in f32: f32 finite differences,
        // then libtorch's derivative at a tolerance that separates the two forms (they differ by
        // up to 8.7e-4).
        exact_cases(check);
        let xs = grid(-4.0, 4.0, 81);
        let reference = torch_derivative(&xs, |x| x.gelu("none"));
        let ours = rule_derivative_f32("Gelu", vec![], &xs);
        assert_close("Gelu", &ours, &reference, 1e-5);
        let ours = rule_derivative_f32("Gelu", vec![attr_string("approximate", "none")], &xs);
        assert_close("Gelu none", &ours, &reference, 1e-5);
    }
    #[test]
    fn gelu_tanh() {
        tanh_cases(check);
        let xs = grid(-4.0, 4.0, 81);
        let reference = torch_derivative(&xs, |x| x.gelu("tanh"));
        let ours = rule_derivative_f32("Gelu", vec![attr_string("approximate", "tanh")], &xs);
        assert_close("Gelu tanh", &ours, &reference, 1e-5);
    }
}
