//! Neg (opset 13): `Y = -X`. https://onnx.ai/onnx/operators/onnx__Neg.html
//!
//! dX = -dY.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Neg", Kind::Linear).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_neg()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let gx = c.op("Neg", &[&g], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn neg() {
        neg_cases(check);
    }
    fn neg_cases(check: fn(Case)) {
        check(Case::new("Neg").input(&[2, 3]));
    }
    #[test]
    fn torch_forward() {
        neg_cases(check_torch);
    }
}
