//! Trilu (opset 14): the upper (`upper` = 1, default) or lower triangle of the last two axes,
//! offset by the optional integer input `k`. https://onnx.ai/onnx/operators/onnx__Trilu.html
//!
//! A mask, so self-adjoint: dX = Trilu(dY, k) with the same attributes.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, ints, one, opt_input, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Trilu", Kind::Linear).vjp(vjp).torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let k = match opt_input(&v, 1) {
        Some(t) => ints(t)?.first().copied().unwrap_or(0),
        None => 0,
    };
    if c.attr_i("upper", 1) != 0 {
        one(x.f_triu(k)?)
    } else {
        one(x.f_tril(k)?)
    }
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let k = c.input(1).to_string();
    let inputs: Vec<&str> = if k.is_empty() { vec![&g] } else { vec![&g, &k] };
    let attrs = c.node.attribute.clone();
    let gx = c.op("Trilu", &inputs, attrs);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    trilu_upper = [
        Case::new("Trilu").input(&[3, 4]),
        Case::new("Trilu").input(&[2, 3, 4]).ints(&[], &[1]),
    ],
    trilu_lower = [
        Case::new("Trilu").input(&[4, 3]).attr(attr_int("upper", 0)),
        Case::new("Trilu")
            .input(&[2, 4, 3])
            .ints(&[], &[-1])
            .attr(attr_int("upper", 0)),
    ],
);
