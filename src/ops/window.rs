//! The sliding window of Conv, ConvTranspose, AveragePool and MaxPool over the spatial axes:
//! `kernel_shape`, `strides`, `dilations`, `pads` and `auto_pad` read once, with the spec's
//! defaults, by the gradient rules and the libtorch forwards alike (both see the node through
//! [`Attrs`]).
use super::attrs::Attrs;
use super::rule::Ctx;
use crate::model::graph::{attr_int, attr_ints};
use anyhow::{anyhow, bail, Result};
use onnx_protobuf::AttributeProto;

/// X's spatial sizes (axes 2..), as [`Window::of`] takes them.
pub fn sizes(x: &tch::Tensor) -> Vec<Option<usize>> {
    x.size()[2..].iter().map(|&d| Some(d as usize)).collect()
}

/// The window geometry of a convolution or pooling node over its spatial axes.
#[derive(Debug, Clone)]
pub struct Window {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    /// Begin pads, then end pads, as ONNX writes them.
    pub pads: Vec<i64>,
}

impl Window {
    /// Reads strides, dilations, pads and auto_pad; `spatial` are X's spatial dims (needed
    /// static for SAME_*).
    pub fn of<A: Attrs + ?Sized>(
        c: &A,
        kernel: Vec<i64>,
        spatial: &[Option<usize>],
    ) -> Result<Window> {
        let k = kernel.len();
        let strides = c.attr_ints("strides").unwrap_or(vec![1; k]);
        let dilations = c.attr_ints("dilations").unwrap_or(vec![1; k]);
        let auto_pad = c.attr_s("auto_pad").unwrap_or("NOTSET".into());
        let pads = match auto_pad.as_str() {
            "NOTSET" | "" => c.attr_ints("pads").unwrap_or(vec![0; 2 * k]),
            "VALID" => vec![0; 2 * k],
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = vec![0; 2 * k];
                for i in 0..k {
                    let h = spatial[i]
                        .ok_or_else(|| anyhow!("auto_pad {auto_pad} needs static spatial dims"))?
                        as i64;
                    let out = (h + strides[i] - 1) / strides[i];
                    let need =
                        ((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - h).max(0);
                    let small = need / 2;
                    let (b, e) = if auto_pad == "SAME_UPPER" {
                        (small, need - small)
                    } else {
                        (need - small, small)
                    };
                    p[i] = b;
                    p[k + i] = e;
                }
                p
            }
            other => bail!("auto_pad {other} is not an ONNX value"),
        };
        if strides.len() != k || dilations.len() != k || pads.len() != 2 * k {
            bail!(
                "kernel of rank {k} with strides {strides:?}, dilations {dilations:?}, pads {pads:?}"
            );
        }
        Ok(Window {
            kernel,
            strides,
            dilations,
            pads,
        })
    }
    pub fn rank(&self) -> usize {
        self.kernel.len()
    }
    /// The extent a dilated kernel covers on axis `i`.
    pub fn span(&self, i: usize) -> i64 {
        (self.kernel[i] - 1) * self.dilations[i] + 1
    }
    /// The padded input size on axis `i` minus the kernel span: the room the window moves in.
    pub fn room(&self, i: usize, h: i64) -> i64 {
        h + self.pads[i] + self.pads[self.rank() + i] - self.span(i)
    }
    /// Output size on axis `i` (floor mode).
    pub fn out(&self, i: usize, h: i64) -> i64 {
        self.room(i, h) / self.strides[i] + 1
    }
    /// Output size on axis `i` for an input of size `h`; in ceil mode the last window must
    /// start inside the input or its begin padding (ONNX's rule, and PyTorch's).
    pub fn out_mode(&self, i: usize, h: i64, ceil: bool) -> i64 {
        let (room, s) = (self.room(i, h), self.strides[i]);
        if !ceil || room < 0 {
            return room.div_euclid(s) + 1;
        }
        let o = (room + s - 1) / s + 1;
        if (o - 1) * s >= h + self.pads[i] {
            o - 1
        } else {
            o
        }
    }
    /// How a libtorch window op (convolution, pooling) is called for this window on `x`:
    /// directly, with libtorch's own symmetric padding and ceil mode, when the pads are
    /// symmetric and `direct(axis, pad)` says libtorch takes them; otherwise on `x` padded
    /// with `fill` to exactly the extent the ONNX output covers (padding 0, floor mode).
    pub fn torch(
        &self,
        x: &tch::Tensor,
        ceil: bool,
        fill: f64,
        direct: impl Fn(usize, i64) -> bool,
    ) -> Result<TorchWindow> {
        let k = self.rank();
        let h = x.size()[2..].to_vec();
        if h.len() != k {
            bail!("a window of rank {k} over an input of shape {:?}", x.size());
        }
        let p = &self.pads;
        if (0..k).all(|i| p[i] == p[k + i] && direct(i, p[i])) {
            return Ok(TorchWindow {
                x: x.shallow_clone(),
                padding: p[..k].to_vec(),
                ceil,
                direct: true,
                begin: vec![0; k],
                extent: h,
            });
        }
        let mut list = Vec::with_capacity(2 * k);
        let mut extent = Vec::with_capacity(k);
        for i in (0..k).rev() {
            let need = (self.out_mode(i, h[i], ceil) - 1) * self.strides[i] + self.span(i);
            list.extend([p[i], need - h[i] - p[i]]);
            extent.push(need);
        }
        extent.reverse();
        Ok(TorchWindow {
            x: x.f_pad(list.as_slice(), "constant", fill)?,
            padding: vec![0; k],
            ceil: false,
            direct: false,
            begin: p[..k].to_vec(),
            extent,
        })
    }
    /// `strides`, `dilations` and `pads` (the window's own, or those of a convolution over it
    /// that pads differently) as the attributes of a standard Conv or ConvTranspose node.
    pub fn onnx_attrs(&self, pads: &[i64]) -> Vec<AttributeProto> {
        vec![
            attr_ints("strides", &self.strides),
            attr_ints("dilations", &self.dilations),
            attr_ints("pads", pads),
        ]
    }
    /// The attributes of probe's libtorch convolution kernels (`probe.cpu:Conv`, `ConvGrad`,
    /// `ConvGradX`) over this window, in `group` groups.
    pub fn probe_cpu_attrs(&self, group: i64) -> Vec<AttributeProto> {
        vec![
            attr_ints("strides", &self.strides),
            attr_ints("pads", &self.pads),
            attr_ints("dilations", &self.dilations),
            attr_int("group", group),
        ]
    }
    /// libtorch's forward convolution of `x` by `w` with this window's strides and dilations
    /// and libtorch's symmetric `padding`.
    pub fn convolution(
        &self,
        x: &tch::Tensor,
        w: &tch::Tensor,
        bias: Option<&tch::Tensor>,
        padding: &[i64],
        groups: i64,
    ) -> Result<tch::Tensor> {
        let zeros = vec![0; self.rank()];
        Ok(x.f_convolution(
            w,
            bias,
            self.strides.as_slice(),
            padding,
            self.dilations.as_slice(),
            false,
            zeros.as_slice(),
            groups,
        )?)
    }
    /// The output_padding for a ConvTranspose of the output to give back exactly size `h`.
    pub fn output_padding(&self, h: &[i64]) -> Vec<i64> {
        (0..self.rank())
            .map(|i| self.room(i, h[i]) % self.strides[i])
            .collect()
    }
}

/// A libtorch window op's call for an ONNX window (see [`Window::torch`]).
pub struct TorchWindow {
    /// X, or X padded explicitly with the fill value.
    pub x: tch::Tensor,
    /// libtorch's symmetric padding per spatial axis.
    pub padding: Vec<i64>,
    /// libtorch's ceil_mode.
    pub ceil: bool,
    /// Whether libtorch runs on X as is.
    pub direct: bool,
    /// Begin pads applied to `x` and its spatial extent, per spatial axis.
    pub begin: Vec<i64>,
    pub extent: Vec<i64>,
}

/// The kernel shape of a convolution weight `w` of dims `wd` ([M, C, k...]), which must be
/// static.
pub fn static_kernel(wd: &[Option<usize>], w: &str) -> Result<Vec<i64>> {
    wd[2..]
        .iter()
        .map(|d| d.map(|d| d as i64))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("the kernel shape of '{w}' must be static"))
}

/// Static spatial dims of `x` (axes 2..), or an error naming what is dynamic.
pub fn spatial_dims(c: &Ctx, x: &str) -> Result<Vec<i64>> {
    c.dims(x)?[2..]
        .iter()
        .map(|d| {
            d.map(|d| d as i64)
                .ok_or_else(|| anyhow!("the spatial dims of '{x}' must be static"))
        })
        .collect()
}
