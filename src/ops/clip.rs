//! Clip (opsets 11 to 13): `Y = min(max(X, lo), hi)`, `lo` and `hi` optional scalar inputs.
//! (Opset 6's `min`/`max` attributes cannot occur in the opset 20 graphs probe differentiates.)
//! https://onnx.ai/onnx/operators/onnx__Clip.html
//!
//! dX = dY * [lo <= X <= hi] (the boundaries pass the gradient, as PyTorch's clamp does);
//! dlo = sum(dY * [X < lo] * [lo <= hi]); dhi = sum(dY * [max(X, lo) > hi]) (when lo > hi the
//! output is hi everywhere).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, opt_input, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Clip", Kind::Elementwise).vjp(vjp).torch(torch);

/// libtorch's clamp: `min(max(x, lo), hi)`, hi everywhere when lo > hi, and the same
/// subgradient at the bounds as PyTorch's.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let (lo, hi) = (opt_input(&v, 1), opt_input(&v, 2));
    if lo.is_none() && hi.is_none() {
        return one(x.shallow_clone());
    }
    one(x.f_clamp_tensor(lo, hi)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let bound = |c: &Ctx, i: usize| c.has_input(i).then(|| c.input(i).to_string());
    let (lo, hi) = (bound(c, 1), bound(c, 2));
    let zero = c.scalar(0.0, &y)?;
    let and = |c: &mut Ctx, a: Option<String>, b: String| match a {
        Some(a) => c.op("And", &[&a, &b], vec![]),
        None => b,
    };
    if c.needs(0) {
        let mut mask = None;
        if let Some(lo) = &lo {
            mask = Some(c.op("GreaterOrEqual", &[&x, lo], vec![]));
        }
        if let Some(hi) = &hi {
            let m = c.op("LessOrEqual", &[&x, hi], vec![]);
            mask = Some(and(c, mask, m));
        }
        let gx = match mask {
            Some(m) => c.op("Where", &[&m, &g, &zero], vec![]),
            None => g.clone(),
        };
        c.set(0, gx);
    }
    if let (true, Some(lo_v)) = (c.needs(1), &lo) {
        let mut m = c.op("Less", &[&x, lo_v], vec![]);
        if let Some(hi) = &hi {
            let ordered = c.op("LessOrEqual", &[lo_v, hi], vec![]);
            m = and(c, Some(m), ordered);
        }
        let t = c.op("Where", &[&m, &g, &zero], vec![]);
        c.set_unbroadcast(1, &t, &y)?;
    }
    if let (true, Some(hi_v)) = (c.needs(2), &hi) {
        let raised = match &lo {
            Some(lo) => c.op("Max", &[&x, lo], vec![]),
            None => x.clone(),
        };
        let m = c.op("Greater", &[&raised, hi_v], vec![]);
        let t = c.op("Where", &[&m, &g, &zero], vec![]);
        c.set_unbroadcast(2, &t, &y)?;
    }
    Ok(())
}

op_tests!(
    clip_inputs = [
        Case::new("Clip")
            .input(&[3, 4])
            .values(&[], &[-0.4])
            .values(&[], &[0.3]),
        // Only a lower bound; only an upper bound.
        Case::new("Clip").input(&[3, 4]).values(&[], &[-0.2]),
        Case::new("Clip")
            .input(&[3, 4])
            .absent()
            .values(&[], &[0.1]),
        // lo > hi: the output is hi everywhere, below lo included.
        Case::new("Clip")
            .values(&[2, 3], &[-0.9, -0.5, -0.1, 0.2, 0.6, 0.9])
            .values(&[], &[0.5])
            .values(&[], &[-0.3]),
        // No bounds at all: the identity.
        Case::new("Clip").input(&[2, 3]),
    ],
);
