//! SequenceAt (opset 11+): `Y = S[position]`, a tensor read out of a sequence.
//! https://onnx.ai/onnx/operators/onnx__SequenceAt.html
//!
//! Sequences carry gradients by position (see [`crate::autodiff::grad`]): dS[position] += dY,
//! summed by the sweep when a position is read several times, and turned into a tensor gradient
//! by the op that made the sequence (SplitToSequence). The position must be a constant and
//! non-negative: a negative one counts from the back of a sequence whose length this rule cannot
//! see. Tested together with SplitToSequence in [`super::split_to_sequence`].
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, ints, one, TorchCtx, Value};
use anyhow::{anyhow, bail, Result};

pub static RULE: Rule = Rule::new("SequenceAt", Kind::Linear).vjp(vjp).torch(torch);

/// A negative position counts from the back.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let Some(Value::Seq(s)) = v.first() else {
        bail!("input 0 is not a sequence");
    };
    let p = ints(input(&v, 1)?)?.first().copied().unwrap_or(0);
    let n = s.len() as i64;
    let i = if p < 0 { p + n } else { p };
    if i < 0 || i >= n {
        bail!("position {p} is out of range for a sequence of {n}");
    }
    one(s[i as usize].shallow_clone())
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let pos = c
        .const_ints(1)
        .and_then(|v| v.first().copied())
        .ok_or_else(|| {
            anyhow!(
                "the position '{}' is not a constant: the gradient cannot be routed to a sequence part",
                c.input(1)
            )
        })?;
    if pos < 0 {
        bail!(
            "negative position {pos}: the sequence's length is unknown here, use a non-negative position"
        );
    }
    c.set_seq(pos as usize, g);
    Ok(())
}
