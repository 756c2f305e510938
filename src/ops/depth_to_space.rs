//! DepthToSpace (opset 13): X [N, C, H, W] to Y [N, C/b^2, H b, W b] with b = `blocksize`;
//! `mode` DCR (default) reads channel (i b + j) C/b^2 + c for Y[n, c, h b + i, w b + j], CRD
//! (what nn.PixelShuffle exports) channel c b^2 + i b + j.
//! https://onnx.ai/onnx/operators/onnx__DepthToSpace.html
//!
//! A permutation of the elements, so dX is dY permuted back: for DCR exactly
//! SpaceToDepth(dY, b) (its inverse); for CRD SpaceToDepth(dY) holds channel k C' + c where X
//! holds c b^2 + k (k = i b + j, C' = C/b^2): viewed as [N, b^2, C', H, W] and transposed to
//! [N, C', b^2, H, W] it is dX.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("DepthToSpace", Kind::Linear)
    .vjp(vjp)
    .torch(torch);

/// Whether the node's mode is CRD (else DCR, the default); other strings are refused.
fn crd<A: Attrs + ?Sized>(c: &A) -> Result<bool> {
    match c.attr_s("mode").as_deref() {
        None | Some("DCR") => Ok(false),
        Some("CRD") => Ok(true),
        Some(m) => bail!(
            "DepthToSpace node '{}': mode '{m}' is neither DCR nor CRD",
            c.node().name
        ),
    }
}

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let b = c.attr_i("blocksize", 0);
    let s = x.size();
    if s.len() != 4 || b <= 0 || s[1] % (b * b) != 0 {
        bail!("DepthToSpace: input of shape {s:?} does not fit blocksize {b}");
    }
    let (n, ch, h, w) = (s[0], s[1] / (b * b), s[2], s[3]);
    if crd(c)? {
        return one(x.f_pixel_shuffle(b)?);
    }
    let t = x
        .f_reshape([n, b, b, ch, h, w])?
        .f_permute([0, 3, 4, 1, 5, 2])?
        .f_reshape([n, ch, h * b, w * b])?;
    one(t)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let x = c.input(0).to_string();
    let b = c.attr_i("blocksize", 0);
    let s = c.op("SpaceToDepth", &[&g], vec![attr_int("blocksize", b)]);
    if !crd(c)? {
        c.set(0, s);
        return Ok(());
    }
    let Some(ch) = c.dims(&x)?.get(1).copied().flatten() else {
        bail!(
            "DepthToSpace node '{}': the channel count of '{x}' must be static",
            c.node.name
        );
    };
    let bb = b * b;
    let shape = c.shape_of(&x);
    let (z, one, two, four) = (c.ints(&[0]), c.ints(&[1]), c.ints(&[2]), c.ints(&[4]));
    let n = c.op("Slice", &[&shape, &z, &one], vec![]);
    let hw = c.op("Slice", &[&shape, &two, &four], vec![]);
    let mid = c.ints(&[bb, ch as i64 / bb]);
    let view = c.op("Concat", &[&n, &mid, &hw], vec![attr_int("axis", 0)]);
    let s5 = c.op("Reshape", &[&s, &view], vec![]);
    let t = c.transpose(&s5, &[0, 2, 1, 3, 4]);
    let gx = c.reshape_as(&t, &x);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    depth_to_space = [
        Case::new("DepthToSpace")
            .input(&[2, 8, 2, 3])
            .attr(attr_int("blocksize", 2)),
        Case::new("DepthToSpace")
            .input(&[2, 8, 2, 3])
            .attr(attr_int("blocksize", 2))
            .attr(attr_string("mode", "CRD")),
        Case::new("DepthToSpace")
            .input(&[1, 18, 2, 1])
            .attr(attr_int("blocksize", 3))
            .attr(attr_string("mode", "CRD")),
    ],
);
