//! SpaceToDepth (opset 13): X [N, C, H, W] to Y [N, C b^2, H/b, W/b] with b = `blocksize`,
//! Y[n, (i b + j) C + c, h, w] = X[n, c, h b + i, w b + j].
//! https://onnx.ai/onnx/operators/onnx__SpaceToDepth.html
//! (nn.PixelUnshuffle exports to Reshape/Transpose instead.)
//!
//! A permutation whose inverse is DepthToSpace in DCR mode: dX = DepthToSpace(dY, b, DCR).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::{attr_int, attr_string};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("SpaceToDepth", Kind::Linear)
    .vjp(vjp)
    .torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let b = c.attr_i("blocksize", 0);
    let s = x.size();
    if s.len() != 4 || b <= 0 || s[2] % b != 0 || s[3] % b != 0 {
        bail!("SpaceToDepth: input of shape {s:?} does not fit blocksize {b}");
    }
    let (n, ch, h, w) = (s[0], s[1], s[2] / b, s[3] / b);
    let t = x
        .f_reshape([n, ch, h, b, w, b])?
        .f_permute([0, 3, 5, 1, 2, 4])?
        .f_reshape([n, ch * b * b, h, w])?;
    one(t)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let b = c.attr_i("blocksize", 0);
    let attrs = vec![attr_int("blocksize", b), attr_string("mode", "DCR")];
    let gx = c.op("DepthToSpace", &[&g], attrs);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    space_to_depth = [
        Case::new("SpaceToDepth")
            .input(&[2, 3, 4, 6])
            .attr(attr_int("blocksize", 2)),
        Case::new("SpaceToDepth")
            .input(&[1, 2, 3, 3])
            .attr(attr_int("blocksize", 3)),
    ],
);
