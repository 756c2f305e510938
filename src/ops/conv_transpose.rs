//! ConvTranspose (opset 11; also 1): the adjoint of Conv with respect to its input.
//! https://onnx.ai/onnx/operators/onnx__ConvTranspose.html
//!
//! Our Conv rule emits it for dX of strided convolutions, so this rule is what lets a gradient
//! graph of a CNN be differentiated again (Hessian-vector products). Write C_W for the Conv
//! (weight W, same strides, pads, dilations, group) that maps Y's space to X's space; then
//! Y = C_W^T X + B, and with the explicit pads and `output_padding` < stride that ONNX gives:
//! - dX = C_W dY: a Conv of dY with W and the same attributes (its output size is exactly X's:
//!   floor(((H_x - 1)s + output_padding)/s) + 1 = H_x);
//! - dW: <dY, C_W^T X> = <C_W dY, X>, so dW is Conv's weight gradient with input dY and output
//!   gradient X: the same im2col form as Conv's rule ([`super::conv::dw_im2col`]), per group;
//! - dB = sum of dY over every axis but 1.
//!
//! Shapes given by `output_shape` or `auto_pad` are not supported (the exporter and our rules
//! write explicit pads).
use super::attrs::Attrs;
use super::conv::dw_im2col;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, opt_input, TorchCtx, Value};
use super::window::{spatial_dims, static_kernel, Window};
use crate::model::graph::attr_int;
use anyhow::{anyhow, bail, Result};

pub static RULE: Rule = Rule::new("ConvTranspose", Kind::Structured)
    .vjp(vjp)
    .torch(torch);

fn explicit_only<A: Attrs + ?Sized>(c: &A) -> Result<()> {
    if c.attr_ints("output_shape").is_some() {
        bail!("ConvTranspose with output_shape is not supported (give pads and output_padding)");
    }
    match c.attr_s("auto_pad").unwrap_or("NOTSET".into()).as_str() {
        "NOTSET" | "" => Ok(()),
        a => bail!("ConvTranspose with auto_pad {a} is not supported (give explicit pads)"),
    }
}

/// libtorch's transposed convolution; symmetric pads only.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    explicit_only(c)?;
    let (x, w) = (input(&v, 0)?, input(&v, 1)?);
    let kernel = w.size()[2..].to_vec();
    let k = kernel.len();
    let win = Window::of(c, kernel, &super::window::sizes(x))?;
    if (0..k).any(|i| win.pads[i] != win.pads[k + i]) {
        bail!("ConvTranspose with asymmetric pads {:?}", win.pads);
    }
    let op = c.attr_ints("output_padding").unwrap_or(vec![0; k]);
    one(x.f_convolution(
        w,
        opt_input(&v, 2),
        win.strides.as_slice(),
        &win.pads[..k],
        win.dilations.as_slice(),
        true,
        op.as_slice(),
        c.attr_i("group", 1),
    )?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    explicit_only(c)?;
    let (x, w) = (c.input(0).to_string(), c.input(1).to_string());
    let wd = c.dims(&w)?;
    let kernel = static_kernel(&wd, &w)?;
    let k = kernel.len();
    // The window of C_W, whose input is Y's space.
    let yd = c.dims(c.output(0))?;
    let win = Window::of(c, kernel, &yd[2..])?;
    let group = c.attr_i("group", 1);
    if c.needs(0) {
        let mut attrs = win.onnx_attrs(&win.pads);
        attrs.push(attr_int("group", group));
        let gx = c.op("Conv", &[&g, &w], attrs);
        c.set(0, gx);
    }
    if c.needs(1) {
        let h = spatial_dims(c, c.output(0))?;
        let gw = if group == 1 {
            dw_im2col(c, &g, &x, &win, &h, &wd)?
        } else {
            let gr = group as usize;
            let (cx, cy) = (
                wd[0].ok_or_else(|| anyhow!("the weight's first axis must be static"))?,
                wd[1].ok_or_else(|| anyhow!("the weight's second axis must be static"))? * gr,
            );
            let sx = c.ints(&vec![(cx / gr) as i64; gr]);
            let sy = c.ints(&vec![(cy / gr) as i64; gr]);
            let xs = c.op_n("Split", &[&x, &sx], vec![attr_int("axis", 1)], gr);
            let gs = c.op_n("Split", &[&g, &sy], vec![attr_int("axis", 1)], gr);
            let mut wg = wd.clone();
            wg[0] = Some(cx / gr);
            let mut parts = Vec::new();
            for (xg, gg) in xs.iter().zip(&gs) {
                parts.push(dw_im2col(c, gg, xg, &win, &h, &wg)?);
            }
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            c.op("Concat", &refs, vec![attr_int("axis", 0)])
        };
        c.set(1, gw);
    }
    if c.has_input(2) && c.needs(2) {
        let axes: Vec<i64> = std::iter::once(0).chain(2..2 + k as i64).collect();
        let gb = c.reduce_sum(&g, &axes, false);
        c.set(2, gb);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_ints};
    use crate::ops::testing::Case;
    // ONNX Runtime's CPU ConvTranspose is float only.
    fn ct(x: &[usize], w: &[usize]) -> Case {
        Case::new("ConvTranspose").input(x).input(w).f32()
    }
    crate::ops::testing::gradient_and_torch_tests!(
        conv_transpose = [
            ct(&[2, 3, 4, 3], &[3, 2, 3, 2]).input(&[2]),
            // As the Conv rule emits it for a stride-2 3x3 conv with pad 1 on a 6x6 input.
            ct(&[1, 3, 3, 3], &[3, 2, 3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1]))
                .attr(attr_ints("output_padding", &[1, 1])),
            ct(&[2, 2, 3, 4], &[2, 1, 2, 3])
                .attr(attr_ints("strides", &[2, 3]))
                .attr(attr_ints("dilations", &[2, 1]))
                .attr(attr_ints("pads", &[1, 0, 1, 0])),
            ct(&[1, 4, 3, 3], &[4, 3, 2, 2])
                .input(&[6])
                .attr(attr_int("group", 2))
                .attr(attr_ints("strides", &[2, 2])),
            ct(&[2, 2, 5], &[2, 3, 3])
                .attr(attr_ints("strides", &[2]))
                .attr(attr_ints("pads", &[1, 1])),
        ],
    );
}
