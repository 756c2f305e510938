//! The phase (sub-pixel) form of a strided convolution's dX ([`Phases`], [`phase_dx`]): one
//! stride-1 Conv of dY with W's sub-kernels and `probe.cpu:Interleave`.
use crate::model::graph::{attr_int, attr_ints, attr_tensor, tensor_i64, Builder};
use crate::ops::rule::kernels::INTERLEAVE;
use crate::ops::window::Window;

/// The phase (sub-pixel) form of a strided convolution's dX, for probe's CPU kernels: one
/// stride-1 Conv of dY and an interleave, where ConvTranspose ran slowly.
///
/// Why: ONNX Runtime's ConvTranspose runs, image by image, a small GEMM `W^T dY` (split over
/// the threads) and a col2im scatter (on one thread); on the shipped ResNet's 32 -> 16
/// channel 3x3 stride-2 dX onto 28x28 that took 14 ms a batch of 250 at 2 threads (~30
/// GFLOP/s; 8 ms on 1 thread), where a stride-1 Conv splits the batch over the threads.
///
/// The maths, per spatial axis (dilation 1, stride s, kernel k, begin pad p):
/// `Y[o] = sum_i X[o s + i - p] W[i]`, so `dX[h] = sum_{o, i : o s + i - p = h} dY[o] W[i]`.
/// With h = s t + r (the phase r = h mod s) and o = t + m, the tap is i = r + p - s m:
///
/// ```text
/// dX[s t + r] = sum_m dY[t + m] W[r + p - s m]      (over m with 0 <= r + p - s m < k)
/// ```
///
/// per phase a stride-1 correlation of dY with every s-th tap of W, reversed. All phases
/// share one window m = m_lo .. m_hi with m_lo = min(0, ceil((p - k + 1) / s)) (capped at 0:
/// the Conv's begin pad -m_lo cannot be negative, and a begin pad p >= k only adds zero taps)
/// and m_hi = floor((s - 1 + p) / s), A = m_hi - m_lo + 1 taps (a phase's taps outside W are
/// 0), so they are one Conv of dY with pads (-m_lo, end) and the sub-kernels
/// `K_r[e] = W[r + p - s (m_lo + e)]` stacked along its output channels, W's two channel axes
/// swapped (W is [M, C, k], the Conv's weight [B C, M, A]): `Z[t] = sum_e dYpad[t + e] K[e]
/// = sum_m dY[t + m] K[m - m_lo]`. The end pad gives T = ceil(H / s) outputs, so that s T >= H;
/// rows past the forward's last window (ConvTranspose's output_padding) read only padding and
/// come out 0, as they must. In n-d the phases are the tuples of the axes' phases, prod(s) of
/// them; with k < s some have no tap at all (a 1x1 stride-2 kernel reaches only phase
/// (0, 0)) and are not computed. `probe.cpu:Interleave` (`runtime/cpu_ops`) then writes
/// `dX[c, s t + r] = Z[block(r) C + c, t]` (0 for a phase without taps), cropped to H, in
/// one pass. The sub-kernels come from W per batch (W is fed per checkpoint): one Gather over
/// W's flattened taps with a zero tap appended ([`Phases::taps`]), a Transpose, Reshapes.
///
/// The price is the shared window: prod(A) taps per phase where the phases have prod(k) in
/// all, 16 for 9 with k = 3, s = 2 (none with a 1x1). Measured, batch 250, 2 threads, alone
/// (`examples/conv_kernels.rs`, and a scratch variant of it for the forms that lost; ms,
/// ConvTranspose vs this form, the range over runs on this shared 2-core machine): 32 -> 16
/// channels, 3x3 stride 2 onto 28x28, 9.5-14 vs 5.6-8.7 (its Conv 4.6-7.5, the interleave
/// 0.7-1.1); 1x1 stride 2 onto 28x28 2.6-2.8 vs 0.9-1.3, onto 14x14 2.0-2.4 vs 0.7-1.1. In the
/// ResNet's gradient graph (ONNX Runtime's profile, median per batch, three runs): 14.0-16.6
/// vs 8.8-11.0, 3.9-4.3 vs 1.8-2.2 and 2.7-3.3 vs 1.2-1.4. On 1 thread ConvTranspose is the
/// faster for the 3x3 (8 vs ~11 ms); the rule does not know the thread count, and `probe grad`
/// runs on every core unless told otherwise. What lost:
/// DepthToSpace (DCR) in place of the interleave, 21 and 16 ms for those two (ONNX Runtime's
/// 6-d transpose, and the 1x1's zero phases computed); one Conv per phase on its own taps
/// (no redundancy, but 16-channel outputs) 7.6-8.5 against the stacked 4.6-7.5; the stacked
/// Conv by libtorch (symmetric pads only: a 15x15 output for 14x14) 6.0-6.5, or a few samples
/// at a time with the interleave in the same op 6.8; and for 64 -> 32 channels, 3x3 onto
/// 14x14, this form's 9.3 against libtorch's backward-data 5.1 ([`super::torch_dx_pays`] keeps it).
#[derive(Debug, Clone, PartialEq)]
pub struct Phases {
    /// The strides s per spatial axis.
    pub strides: Vec<i64>,
    /// The shared window A per spatial axis.
    pub window: Vec<i64>,
    /// The Conv's pads, begins then ends.
    pub pads: Vec<i64>,
    /// X's spatial sizes H.
    pub sizes: Vec<i64>,
    /// The Conv's output sizes T per axis.
    pub grid: Vec<i64>,
    /// Per phase (row-major over the axes' phases): its channel block in the Conv's output,
    /// or -1 when no tap reaches it.
    pub phases: Vec<i64>,
    /// Per block, the window's taps (row-major over the window) as indices into W's flattened
    /// kernel, `prod(k)` for a zero tap.
    pub taps: Vec<Vec<i64>>,
}

impl Phases {
    /// The phase form for `win` over X's spatial sizes `h`; `None` where it does not apply:
    /// a dilation, a negative pad, stride 1 on every axis, or more than 3 spatial axes (the
    /// interleave's limit).
    pub fn of(win: &Window, h: &[i64]) -> Option<Phases> {
        let k = win.rank();
        if win.dilations.iter().any(|&d| d != 1)
            || win.pads.iter().any(|&p| p < 0)
            || win.strides.iter().all(|&s| s == 1)
            || !(1..=3).contains(&k)
            || h.len() != k
        {
            return None;
        }
        let (mut window, mut pads, mut grid) = (vec![], vec![0; 2 * k], vec![]);
        // Per axis, per phase r, per window position e: the tap r + p - s (m_lo + e) if in W.
        let mut axis_taps: Vec<Vec<Vec<Option<i64>>>> = vec![];
        for a in 0..k {
            let (s, kk, p) = (win.strides[a], win.kernel[a], win.pads[a]);
            let m_lo = (-(kk - 1 - p).div_euclid(s)).min(0);
            let m_hi = (s - 1 + p).div_euclid(s);
            let aw = m_hi - m_lo + 1;
            let (ho, t) = (win.out(a, h[a]), (h[a] + s - 1) / s);
            // Z's length is ho + pads - aw + 1; T = ceil(H / s) of it needed, more is cropped.
            let (pb, pe) = (-m_lo, (t - ho + m_lo + aw - 1).max(0));
            pads[a] = pb;
            pads[k + a] = pe;
            grid.push(ho + pb + pe - aw + 1);
            window.push(aw);
            axis_taps.push(
                (0..s)
                    .map(|r| {
                        (0..aw)
                            .map(|e| Some(r + p - s * (m_lo + e)).filter(|i| (0..kk).contains(i)))
                            .collect()
                    })
                    .collect(),
            );
        }
        let zero: i64 = win.kernel.iter().product();
        let (mut phases, mut taps) = (vec![], vec![]);
        for r in odometer(&win.strides) {
            let block: Vec<Option<i64>> = odometer(&window)
                .map(|e| {
                    (0..k).try_fold(0, |flat, a| {
                        axis_taps[a][r[a] as usize][e[a] as usize].map(|i| flat * win.kernel[a] + i)
                    })
                })
                .collect();
            if block.iter().any(|t| t.is_some()) {
                phases.push(taps.len() as i64);
                taps.push(block.into_iter().map(|t| t.unwrap_or(zero)).collect());
            } else {
                phases.push(-1);
            }
        }
        Some(Phases {
            strides: win.strides.clone(),
            window,
            pads,
            sizes: h.to_vec(),
            grid,
            phases,
            taps,
        })
    }
}

/// Every index tuple below `ext`, row-major.
fn odometer(ext: &[i64]) -> impl Iterator<Item = Vec<i64>> + '_ {
    let total: i64 = ext.iter().product();
    (0..total).map(move |mut flat| {
        let mut idx = vec![0; ext.len()];
        for a in (0..ext.len()).rev() {
            idx[a] = flat % ext[a];
            flat /= ext[a];
        }
        idx
    })
}

/// dX of `Y = Conv(X, W)` from `dy` and the weight `w` [M, C, k...] in the phase form
/// ([`Phases`]): the sub-kernels gathered from W, one stride-1 Conv, `probe.cpu:Interleave`.
pub fn phase_dx(b: &mut Builder, dy: &str, w: &str, m: i64, c: i64, ph: &Phases) -> String {
    let blocks = ph.taps.len() as i64;
    let per: i64 = ph.window.iter().product();
    // W [M, C, K] with a zero tap appended, the taps gathered: [M, C, B, A] -> [B, C, M, A]
    // -> the Conv's weight [B C, M, A...], channel b C + c for phase block b.
    let shape = b.ints(&[m, c, -1]);
    let wr = b.op("Reshape", &[w, &shape], vec![]);
    let pads = b.ints(&[0, 0, 0, 0, 0, 1]);
    let wz = b.op("Pad", &[&wr, &pads], vec![]);
    let table = tensor_i64("", &[blocks, per], &ph.taps.concat());
    let table = b.op("Constant", &[], vec![attr_tensor("value", table)]);
    let g = b.op("Gather", &[&wz, &table], vec![attr_int("axis", 2)]);
    let gt = b.op("Transpose", &[&g], vec![attr_ints("perm", &[2, 1, 0, 3])]);
    let mut shape = vec![blocks * c, m];
    shape.extend(&ph.window);
    let shape = b.ints(&shape);
    let ws = b.op("Reshape", &[&gt, &shape], vec![]);
    let z = b.op("Conv", &[dy, &ws], vec![attr_ints("pads", &ph.pads)]);
    let attrs = vec![
        attr_ints("blocks", &ph.strides),
        attr_ints("phases", &ph.phases),
        attr_ints("sizes", &ph.sizes),
    ];
    let domain = crate::ops::rule::PROBE_CPU_DOMAIN;
    b.op_n_in(domain, INTERLEAVE, &[&z], attrs, 1)
        .pop()
        .unwrap()
}
