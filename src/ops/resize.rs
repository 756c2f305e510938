//! Resize (opset 13-19; opset 18's `axes` attribute read): modes `nearest` and `linear`
//! (multilinear), coordinate transformations `half_pixel`, `pytorch_half_pixel`,
//! `align_corners` and `asymmetric`, every `nearest_mode`, scales or sizes with
//! `keep_aspect_ratio_policy` stretch. https://onnx.ai/onnx/operators/onnx__Resize.html
//! F.interpolate(mode="nearest") exports to nearest/asymmetric/floor, mode="bilinear" to
//! linear/half_pixel (align_corners=False) or linear/align_corners; "nearest-exact" and 1-D
//! "linear" export to GatherND arithmetic instead. Refused with the reason: cubic,
//! antialias, tf_crop_and_resize (roi), half_pixel_symmetric, other aspect-ratio policies.
//!
//! Both modes are separable: along each resized axis a, Y = X x_a A_a with A_a the [out, in]
//! interpolation matrix (nearest: one 1 per row at the chosen input; linear: the two weights
//! of the neighbouring inputs, which add up at the border). So dX = dY x_a A_a^T over the same
//! axes: a MatMul with the constant A_a per axis (the last axis on the right, the others on the
//! left of a view that puts them second to last). The weights are computed at build time with
//! ONNX Runtime's float arithmetic (`get_original_coordinate`, then the clamp to [0, in - 1]),
//! so they are the ones its forward used; libtorch's upsample_*_backward agree (tests).
//! Scales and sizes are constants of the model (the scales an initializer or Constant, the
//! output extents observed): they get no gradient.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{floats, input, ints, one, opt_input, TorchCtx, Value};
use crate::model::graph::{attr_tensor, tensor_f32};
use crate::tensor::{DType, Values};
use anyhow::{bail, Result};
use onnx_protobuf::{NodeProto, TensorProto};

pub static RULE: Rule = Rule::new("Resize", Kind::Linear).vjp(vjp).torch(torch);

/// How the node maps output coordinates to inputs.
#[derive(Debug, Clone)]
struct Mode {
    linear: bool,
    transform: String,
    nearest: String,
}

impl Mode {
    fn of<A: Attrs + ?Sized>(c: &A) -> Result<Mode> {
        let n = c.node();
        let what = format!("Resize node '{}'", n.name);
        let mode = c.attr_s("mode").unwrap_or_else(|| "nearest".into());
        let transform = c
            .attr_s("coordinate_transformation_mode")
            .unwrap_or_else(|| "half_pixel".into());
        let nearest = c
            .attr_s("nearest_mode")
            .unwrap_or_else(|| "round_prefer_floor".into());
        if mode != "nearest" && mode != "linear" {
            bail!("{what}: mode '{mode}' has no gradient rule (nearest and linear have)");
        }
        if c.attr_i("antialias", 0) != 0 {
            bail!("{what}: antialias is not supported");
        }
        if ![
            "half_pixel",
            "pytorch_half_pixel",
            "align_corners",
            "asymmetric",
        ]
        .contains(&transform.as_str())
        {
            bail!("{what}: coordinate_transformation_mode '{transform}' is not supported");
        }
        if !["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"].contains(&nearest.as_str())
        {
            bail!("{what}: nearest_mode '{nearest}' is not supported");
        }
        let policy = c
            .attr_s("keep_aspect_ratio_policy")
            .unwrap_or_else(|| "stretch".into());
        if policy != "stretch" {
            bail!("{what}: keep_aspect_ratio_policy '{policy}' is not supported");
        }
        Ok(Mode {
            linear: mode == "linear",
            transform,
            nearest,
        })
    }

    /// The [out, in] interpolation matrix of one axis, row-major, in ONNX Runtime's float
    /// arithmetic (`scale` as ONNX Runtime holds it: the given scale, or out/in from sizes).
    fn matrix(&self, n_in: usize, n_out: usize, scale: f32) -> Vec<f64> {
        let mut a = vec![0.0f64; n_out * n_in];
        let last = (n_in - 1) as f32;
        for o in 0..n_out {
            let x = o as f32;
            let orig = match self.transform.as_str() {
                "half_pixel" => (x + 0.5) / scale - 0.5,
                "pytorch_half_pixel" if n_out > 1 => (x + 0.5) / scale - 0.5,
                "pytorch_half_pixel" => 0.0,
                "align_corners" if n_out == 1 => 0.0,
                "align_corners" => x * last / (n_out - 1) as f32,
                _ => x / scale,
            };
            let row = &mut a[o * n_in..(o + 1) * n_in];
            if self.linear {
                let xin = orig.min(last).max(0.0);
                let x1 = (xin as usize).min(n_in - 1);
                let x2 = (x1 + 1).min(n_in - 1);
                let (mut d1, mut d2) = ((xin - x1 as f32).abs(), (xin - x2 as f32).abs());
                if x1 == x2 {
                    (d1, d2) = (0.5, 0.5);
                }
                row[x1] += d2 as f64;
                row[x2] += d1 as f64;
            } else {
                let r = match self.nearest.as_str() {
                    "floor" => orig.floor(),
                    "ceil" => orig.ceil(),
                    "round_prefer_ceil" => (orig + 0.5).floor(),
                    // round_prefer_floor: halves go down.
                    _ if orig == orig.floor() + 0.5 => orig.floor(),
                    _ => orig.round(),
                };
                let i = (r.max(0.0) as usize).min(n_in - 1);
                row[i] = 1.0;
            }
        }
        a
    }
}

/// The resized axes: (axis, extent in, extent out, matrix [out, in]); axes whose matrix is the
/// identity are left out.
type Plan = Vec<(usize, usize, usize, Vec<f64>)>;

/// The plan from X's and Y's extents and the scales (None: given as sizes, scale out/in),
/// over the node's `axes` (all when absent).
fn plan(
    node: &NodeProto,
    mode: &Mode,
    xin: &[usize],
    yout: &[usize],
    scales: Option<&[f32]>,
) -> Result<Plan> {
    let r = xin.len();
    let axes: Vec<usize> = match node.attr_ints("axes") {
        Some(a) => a
            .iter()
            .map(|&a| if a < 0 { a + r as i64 } else { a } as usize)
            .collect(),
        None => (0..r).collect(),
    };
    if let Some(s) = scales {
        if s.len() != axes.len() {
            bail!(
                "Resize node '{}': {} scales for {} axes",
                node.name,
                s.len(),
                axes.len()
            );
        }
    }
    let mut p = Plan::new();
    for (k, &a) in axes.iter().enumerate() {
        let (n_in, n_out) = (xin[a], yout[a]);
        let scale = match scales {
            Some(s) => s[k],
            None => n_out as f32 / n_in as f32,
        };
        let m = mode.matrix(n_in, n_out, scale);
        let identity = n_in == n_out
            && (0..n_out).all(|o| (0..n_in).all(|i| m[o * n_in + i] == (o == i) as u8 as f64));
        if !identity {
            p.push((a, n_in, n_out, m));
        }
    }
    Ok(p)
}

/// The scales input when it holds values (an empty tensor stands for "none", opset 11 style).
fn nonempty(v: Vec<f32>) -> Option<Vec<f32>> {
    (!v.is_empty()).then_some(v)
}

/// Y = X x_a A_a over the plan's axes, with A_a in X's kind: `y @ A^T` for the last axis,
/// `A @ y` for the others moved second to last.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let mode = Mode::of(c)?;
    let xs: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
    let scales = match opt_input(&v, 2) {
        Some(s) => nonempty(floats(s)?.iter().map(|&f| f as f32).collect()),
        None => None,
    };
    let r = xs.len();
    let axes: Vec<usize> = match c.attr_ints("axes") {
        Some(a) => a
            .iter()
            .map(|&a| if a < 0 { a + r as i64 } else { a } as usize)
            .collect(),
        None => (0..r).collect(),
    };
    let mut out = xs.clone();
    match (&scales, opt_input(&v, 3)) {
        (Some(s), _) => {
            for (k, &a) in axes.iter().enumerate() {
                out[a] = (xs[a] as f32 * s[k]) as usize;
            }
        }
        (None, Some(sz)) => {
            for (k, n) in ints(sz)?.into_iter().enumerate() {
                out[axes[k]] = n as usize;
            }
        }
        (None, None) => bail!("Resize node '{}': neither scales nor sizes", c.node.name),
    }
    let mut y = x.shallow_clone();
    for (a, n_in, n_out, m) in plan(c.node, &mode, &xs, &out, scales.as_deref())? {
        let mat = tch::Tensor::f_from_slice(&m)?
            .f_reshape([n_out as i64, n_in as i64])?
            .f_to_kind(x.kind())?
            .f_to_device(x.device())?;
        y = if a == r - 1 {
            y.f_matmul(&mat.f_transpose(0, 1)?)?
        } else {
            let t = y.f_transpose(a as i64, r as i64 - 2)?;
            mat.f_matmul(&t)?.f_transpose(a as i64, r as i64 - 2)?
        };
    }
    one(y)
}

/// A constant [rows, cols] matrix of `dt` (f32 or f64) holding `m`.
fn matrix_const(c: &mut Ctx, rows: usize, cols: usize, m: &[f64], dt: DType) -> String {
    let dims = [rows as i64, cols as i64];
    let t = if dt == DType::F64 {
        let mut t = TensorProto::new();
        t.data_type = DType::F64.onnx();
        t.dims = dims.to_vec();
        t.raw_data = m.iter().flat_map(|v| v.to_le_bytes()).collect();
        t
    } else {
        let v: Vec<f32> = m.iter().map(|&v| v as f32).collect();
        tensor_f32("", &dims, &v)
    };
    let out = c.b.fresh("resize_matrix");
    let mut n = NodeProto::new();
    n.op_type = "Constant".into();
    n.name = out.clone();
    n.output = vec![out.clone()];
    n.attribute = vec![attr_tensor("value", t)];
    c.b.nodes.push(n);
    out
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let mode = Mode::of(c)?;
    let what = format!("Resize node '{}'", c.node.name);
    if c.has_input(1)
        && c.attr_s("coordinate_transformation_mode").as_deref() == Some("tf_crop_and_resize")
    {
        bail!("{what}: tf_crop_and_resize is not supported");
    }
    let scales = if c.has_input(2) {
        let Some(t) = c.consts.get(c.input(2)) else {
            bail!("{what}: the scales '{}' must be a constant", c.input(2));
        };
        match crate::model::decode_tensor(t)?.values {
            Values::F32(v) => nonempty(v),
            Values::I64(_) => bail!("{what}: the scales are not floats"),
        }
    } else {
        None
    };
    let (xd, yd) = (c.dims(&x)?, c.dims(&y)?);
    // Extents of resized axes must be static; a dynamic one (the batch) must be kept.
    let mut xin = Vec::new();
    let mut yout = Vec::new();
    for (k, (a, b)) in xd.iter().zip(&yd).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                xin.push(*a);
                yout.push(*b);
            }
            (None, None) => {
                // Resizing a dynamic axis would change its extent with the batch: a scale of 1
                // (or its size, unchanged) is what keeps it dynamic.
                xin.push(1);
                yout.push(1);
            }
            _ => bail!("{what}: axis {k} of '{x}' ({a:?}) and '{y}' ({b:?}) must both be static"),
        }
    }
    let dt = c.dtype(&x)?;
    let r = xin.len();
    let mut g = g;
    for (a, n_in, n_out, m) in plan(c.node, &mode, &xin, &yout, scales.as_deref())? {
        let mat = matrix_const(c, n_out, n_in, &m, dt);
        g = if a == r - 1 {
            // dX[..., i] = sum_o dY[..., o] A[o, i]: dY @ A.
            c.op("MatMul", &[&g, &mat], vec![])
        } else {
            // A^T @ dY with the axis second to last.
            let mt = c.transpose(&mat, &[1, 0]);
            let mut perm: Vec<i64> = (0..r as i64).collect();
            perm.swap(a, r - 2);
            let t = if a == r - 2 {
                g.clone()
            } else {
                c.transpose(&g, &perm)
            };
            let p = c.op("MatMul", &[&mt, &t], vec![]);
            if a == r - 2 {
                p
            } else {
                c.transpose(&p, &perm)
            }
        };
    }
    c.set(0, g);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_ints, attr_string};
    use crate::ops::kink_testing::gradient_for;
    use crate::ops::testing::{Case, Rng};
    use onnx_protobuf::AttributeProto;

    fn modes(mode: &str, transform: &str, nearest: &str) -> Vec<AttributeProto> {
        vec![
            attr_string("mode", mode),
            attr_string("coordinate_transformation_mode", transform),
            attr_string("nearest_mode", nearest),
        ]
    }

    /// Resize of [2, 2, 3, 4] to `sizes` (X, no roi, no scales, sizes). ONNX Runtime has no
    /// f64 Resize kernel: checked in f32, and against libtorch's backward below.
    fn sized(sizes: &[i64], attrs: Vec<AttributeProto>) -> Case {
        let mut c = Case::new("Resize")
            .input(&[2, 2, 3, 4])
            .absent()
            .absent()
            .ints(&[sizes.len()], sizes)
            .f32();
        c.attrs = attrs;
        c
    }

    /// Resize of [2, 3, 4, 5] by constant `scales`, as F.interpolate(scale_factor=...) exports.
    fn scaled(scales: &[f32], attrs: Vec<AttributeProto>) -> Case {
        let mut c = Case::new("Resize")
            .input(&[2, 3, 4, 5])
            .absent()
            .f32_const(&[4], scales)
            .f32();
        c.attrs = attrs;
        c
    }

    fn sized_cases() -> Vec<Case> {
        vec![
            // F.interpolate(size=..., mode="nearest").
            sized(&[2, 2, 7, 9], modes("nearest", "asymmetric", "floor")),
            // mode="bilinear", align_corners False and True; a downsampling too.
            sized(&[2, 2, 7, 9], modes("linear", "half_pixel", "floor")),
            sized(&[2, 2, 7, 9], modes("linear", "align_corners", "floor")),
            sized(&[2, 2, 2, 3], modes("linear", "half_pixel", "floor")),
            sized(
                &[2, 2, 1, 6],
                modes("linear", "pytorch_half_pixel", "floor"),
            ),
            // The spec's defaults (half_pixel, round_prefer_floor), and round_prefer_ceil, ceil.
            sized(&[2, 2, 5, 6], vec![]),
            sized(
                &[2, 2, 5, 6],
                modes("nearest", "half_pixel", "round_prefer_ceil"),
            ),
            sized(&[2, 2, 2, 7], modes("nearest", "align_corners", "ceil")),
        ]
    }

    crate::ops::testing::gradient_and_torch_tests!(
        resize_sizes = sized_cases(),
        resize_scales = [
            scaled(
                &[1.0, 1.0, 2.0, 2.0],
                modes("nearest", "asymmetric", "floor")
            ),
            scaled(
                &[1.0, 1.0, 2.0, 2.0],
                modes("linear", "half_pixel", "floor")
            ),
            scaled(
                &[1.0, 1.0, 1.5, 1.5],
                modes("linear", "half_pixel", "floor")
            ),
            scaled(
                &[1.0, 1.0, 3.0, 0.5],
                modes("nearest", "asymmetric", "floor")
            ),
        ],
        resize_axes = [{
            let mut c = Case::new("Resize")
                .input(&[2, 3, 4])
                .absent()
                .absent()
                .ints(&[2], &[6, 3])
                .f32();
            c.attrs = modes("linear", "half_pixel", "floor");
            c.attrs.push(attr_ints("axes", &[-2, 2]));
            c.opset(18)
        }],
    );

    /// The gradient graph against libtorch's own upsample_{nearest,bilinear}2d_backward on the
    /// same dY, for what F.interpolate exports (sizes, and scale factor 2), in f32.
    #[test]
    fn matches_libtorch_upsample_backward() {
        let n_in = [2i64, 3, 4, 5];
        let (s2, no) = (Some(2.0), None::<f64>);
        let check =
            |case: Case, n_out: [i64; 4], reference: &dyn Fn(&tch::Tensor) -> tch::Tensor| {
                let numel = n_out.iter().product::<i64>() as usize;
                let mut rng = Rng(7);
                let w: Vec<f64> = (0..numel).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let dy = tch::Tensor::from_slice(&w)
                    .reshape(n_out)
                    .to_kind(tch::Kind::Float);
                let theirs = reference(&dy).reshape([-1]).to_kind(tch::Kind::Double);
                let theirs = Vec::<f64>::try_from(&theirs).unwrap();
                let ours = gradient_for(&case, &w, |_| {});
                let worst = (ours.iter().zip(&theirs))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f64, f64::max);
                assert!(
                    worst < 1e-5,
                    "{:?} to {n_out:?}: {worst:.2e} from libtorch's backward",
                    case.attrs
                );
            };
        let sized = |sizes: [i64; 4], attrs| {
            let mut c = Case::new("Resize")
                .input(&[2, 3, 4, 5])
                .absent()
                .absent()
                .ints(&[4], &sizes)
                .f32();
            c.attrs = attrs;
            c
        };
        let out = [2, 3, 7, 9];
        let hw = [7i64, 9];
        check(
            sized(out, modes("nearest", "asymmetric", "floor")),
            out,
            &|dy| tch::Tensor::upsample_nearest2d_backward(dy, hw, n_in, no, no),
        );
        check(
            sized(out, modes("linear", "half_pixel", "floor")),
            out,
            &|dy| tch::Tensor::upsample_bilinear2d_backward(dy, hw, n_in, false, no, no),
        );
        check(
            sized(out, modes("linear", "align_corners", "floor")),
            out,
            &|dy| tch::Tensor::upsample_bilinear2d_backward(dy, hw, n_in, true, no, no),
        );
        let out = [2, 3, 8, 10];
        let hw = [8i64, 10];
        check(
            scaled(
                &[1.0, 1.0, 2.0, 2.0],
                modes("nearest", "asymmetric", "floor"),
            ),
            out,
            &|dy| tch::Tensor::upsample_nearest2d_backward(dy, hw, n_in, s2, s2),
        );
        check(
            scaled(
                &[1.0, 1.0, 2.0, 2.0],
                modes("linear", "half_pixel", "floor"),
            ),
            out,
            &|dy| tch::Tensor::upsample_bilinear2d_backward(dy, hw, n_in, false, s2, s2),
        );
    }
}
