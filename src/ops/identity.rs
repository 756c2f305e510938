//! Identity (opset 19), tensors only: `Y = X`. https://onnx.ai/onnx/operators/onnx__Identity.html
//!
//! dX = dY.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Identity", Kind::Linear).vjp(vjp).torch(torch);

/// A tensor or a sequence, passed on.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    Ok(vec![v.into_iter().next().unwrap_or(Value::None)])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    c.set(0, g);
    Ok(())
}

op_tests!(identity = [Case::new("Identity").input(&[2, 3])]);
