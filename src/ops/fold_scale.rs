//! `probe.cpu:FoldScale(W, s) -> W' = f32(f64(W) s)`, s f64 per output channel (W's first
//! axis): the weight of a Conv with the BatchNormalization after it folded in
//! (`batch_normalization::fold_into_conv`, on `probe grad`'s fast path only). Its rule emits
//! `probe.cpu:FoldScaleGrad(dW', W, s) -> (dW = f32(s dW'), ds = sum f64(W) dW')`, the chain
//! rule through the product with its casts, in one pass (`runtime/cpu_ops/fold.rs`).
use super::rule::kernels::{FOLD_SCALE, FOLD_SCALE_GRAD};
use super::rule::{Ctx, Kernels, Kind, Rule};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new(FOLD_SCALE, Kind::Structured).vjp(vjp);

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.kernels != Kernels::ProbeCpu {
        bail!("probe.cpu:FoldScale outside probe's CPU kernels");
    }
    let needs = [c.needs(0), c.needs(1)];
    let (w, s) = (c.input(0).to_string(), c.input(1).to_string());
    let outs = c.probe_cpu_outputs(FOLD_SCALE_GRAD, &[&g, &w, &s], vec![], &needs);
    for (i, o) in outs.into_iter().enumerate() {
        if let Some(o) = o {
            c.set(i, o);
        }
    }
    Ok(())
}
