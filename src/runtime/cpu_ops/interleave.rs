//! `Interleave(Z) -> Y`, attributes `blocks` (s per spatial axis), `phases` and `sizes` (per
//! spatial axis), all required: the other strided convolution dX, the phase form's assembly
//! (`ops/conv/phases.rs`), [`Phased`] as an op; parts split Y's N*C planes.
use super::exec::{bounds, split};
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::INTERLEAVE;

/// The node's attributes.
pub struct InterleaveAttrs {
    blocks: Vec<i64>,
    phases: Vec<i64>,
    sizes: Vec<i64>,
}

/// The interleave of the phase form of a strided convolution's dX (`ops/conv/phases.rs`): Z
/// [N, B*C, T...] holds B channel blocks of C, one per phase that has kernel taps; Y is
/// [N, C, sizes...] with `Y[n, c, h] = Z[n, phases[h mod s]*C + c, h div s]` per spatial axis,
/// `phases` listing every phase (h mod s per axis, row-major) with its block in Z, or -1 for
/// a phase no tap reaches, which gives 0. That is DepthToSpace (DCR, blocks s; ONNX Runtime's
/// took 21 ms where this takes 1), the crop of a Slice and the zero blocks of a Concat in one
/// pass over Y. 1 to 3 spatial axes, lifted to 3 (leading axes of extent 1).
pub struct Phased {
    /// Blocks s, Y's and Z's spatial sizes, over 3 axes.
    s: [usize; 3],
    h: [usize; 3],
    t: [usize; 3],
    phases: Vec<i64>,
    /// Y's channels C and Z's B*C.
    c: usize,
    zc: usize,
    /// Per position on the first two axes, its phase and Z's row (computed once per node: no
    /// division in the loops); per phase q of the last axis, how many positions it fills
    /// (w = q, q + s, ...).
    rows: [Vec<(usize, usize)>; 2],
    cols: Vec<usize>,
}

impl Phased {
    /// The geometry for Z of shape `zs` and the attributes `blocks`, `phases`, `sizes`,
    /// checked.
    fn new(zs: &[i64], attrs: &InterleaveAttrs) -> Result<Phased, String> {
        let (blocks, phases, sizes) = (&attrs.blocks, attrs.phases.clone(), &attrs.sizes);
        let r = blocks.len();
        let used: Vec<i64> = phases.iter().copied().filter(|&p| p >= 0).collect();
        let nb = used.len() as i64;
        let mut seen = vec![false; used.len()];
        let distinct = used
            .iter()
            .all(|&p| p < nb && !std::mem::replace(&mut seen[p as usize], true));
        if !(1..=3).contains(&r)
            || zs.len() != r + 2
            || sizes.len() != r
            || blocks.iter().any(|&s| s < 1)
            || phases.len() as i64 != blocks.iter().product::<i64>()
            || sizes.iter().any(|&h| h < 0)
            || nb == 0
            || !distinct
            || zs[1] % nb != 0
            || (0..r).any(|a| sizes[a] > 0 && (sizes[a] - 1) / blocks[a] >= zs[2 + a])
        {
            return Err(format!(
                "Z {zs:?} with blocks {blocks:?}, phases {phases:?}, sizes {sizes:?}: expected \
                 1-3 spatial axes, the phases' blocks 0..B each once, Z's channels a multiple \
                 of B and Z's T covering the sizes (T > (H - 1) / s)"
            ));
        }
        let lift = |v: &[i64]| -> [usize; 3] {
            let mut o = [1; 3];
            for (a, &x) in v.iter().enumerate() {
                o[3 - r + a] = x as usize;
            }
            o
        };
        let (s, h, t) = (lift(blocks), lift(sizes), lift(&zs[2..]));
        let axis =
            |a: usize| -> Vec<(usize, usize)> { (0..h[a]).map(|x| (x % s[a], x / s[a])).collect() };
        Ok(Phased {
            s,
            h,
            t,
            phases,
            c: (zs[1] / nb) as usize,
            zc: zs[1] as usize,
            rows: [axis(0), axis(1)],
            cols: (0..s[2])
                .map(|q| h[2].saturating_sub(q).div_ceil(s[2]))
                .collect(),
        })
    }
    /// Y's shape for `n` samples and `r` spatial axes.
    fn y_shape(&self, n: i64, r: usize) -> Vec<i64> {
        let mut ys = vec![n, self.c as i64];
        ys.extend(self.h[3 - r..].iter().map(|&x| x as i64));
        ys
    }
    fn plane(&self) -> usize {
        self.h.iter().product()
    }
    fn zsample(&self) -> usize {
        self.zc * self.t.iter().product::<usize>()
    }
    /// Y's plane of channel `ch` from Z's sample `z` (its B*C channels).
    fn fill(&self, z: &[f32], ch: usize, dst: &mut [f32]) {
        let (s, t, h) = (&self.s, &self.t, &self.h);
        let zplane = t[0] * t[1] * t[2];
        let mut rows = dst.chunks_exact_mut(h[2]);
        for &(ph0, t0) in &self.rows[0] {
            for &(ph1, t1) in &self.rows[1] {
                let dst = rows.next().unwrap();
                let (ph, zrow) = ((ph0 * s[1] + ph1) * s[2], (t0 * t[1] + t1) * t[2]);
                // Z's row of phase q of the last axis, or None for a phase without taps.
                let src = |q: usize| -> Option<&[f32]> {
                    let blk = self.phases[ph + q];
                    (blk >= 0).then(|| {
                        let at = (blk as usize * self.c + ch) * zplane + zrow;
                        &z[at..at + self.cols[q]]
                    })
                };
                if s[2] == 2 && h[2] % 2 == 0 {
                    // Stride 2 on an even row: pairs (phase 0, phase 1), which vectorize.
                    let pairs = dst.chunks_exact_mut(2);
                    match (src(0), src(1)) {
                        (Some(a), Some(b)) => {
                            for ((d, &x), &y) in pairs.zip(a).zip(b) {
                                d[0] = x;
                                d[1] = y;
                            }
                        }
                        (Some(a), None) => {
                            for (d, &x) in pairs.zip(a) {
                                d[0] = x;
                                d[1] = 0.0;
                            }
                        }
                        (None, Some(b)) => {
                            for (d, &y) in pairs.zip(b) {
                                d[0] = 0.0;
                                d[1] = y;
                            }
                        }
                        (None, None) => dst.fill(0.0),
                    }
                    continue;
                }
                for q in 0..s[2].min(h[2]) {
                    let d = dst[q..].iter_mut().step_by(s[2]);
                    match src(q) {
                        Some(z) => d.zip(z).for_each(|(d, &v)| *d = v),
                        None => d.for_each(|d| *d = 0.0),
                    }
                }
            }
        }
    }
}

impl FromAttrs for InterleaveAttrs {
    fn read(a: &Attrs) -> ort::Result<InterleaveAttrs> {
        let [blocks, phases, sizes] = [a.req("blocks")?, a.req("phases")?, a.req("sizes")?];
        Ok(InterleaveAttrs {
            blocks,
            phases,
            sizes,
        })
    }
}

/// `probe.cpu:Interleave`.
pub static INTERLEAVE_OP: CpuOp<InterleaveAttrs> =
    CpuOp::new(INTERLEAVE, interleave).io(&[F32], &[F32]);

fn interleave(a: &InterleaveAttrs, c: &Call) -> ort::Result<()> {
    let (zs, zv) = c.input(0)?;
    let g = Phased::new(&zs, a).map_err(|e| c.fail(e))?;
    let y = c.required(0, g.y_shape(zs[0], zs.len() - 2), "Y")?;
    let (plane, planes, zsample) = (g.plane(), zs[0] as usize * g.c, g.zsample());
    if planes * plane == 0 {
        return Ok(());
    }
    let b = bounds(planes, c.parts_for(planes, planes * plane));
    let pieces = split(y, plane, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (out, (lo, hi))| {
        for (p, dst) in (lo..hi).zip(out.chunks_exact_mut(plane)) {
            g.fill(&zv[p / g.c * zsample..][..zsample], p % g.c, dst);
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, strides, Node};
    use super::INTERLEAVE;
    use crate::model::graph::attr_ints;

    /// A case: N and C, blocks s, phases, sizes H and Z's T per spatial axis.
    struct Case<'a> {
        n: usize,
        c: usize,
        s: &'a [usize],
        phases: &'a [i64],
        h: &'a [usize],
        t: &'a [usize],
    }

    impl Case<'_> {
        /// `Y[n, c, h] = Z[n, phases[h mod s] C + c, h div s]` (0 for phase -1), from the
        /// definition, and the node.
        fn check(&self) {
            let blocks = self.phases.iter().filter(|&&p| p >= 0).count();
            let mut zs = vec![self.n, blocks * self.c];
            zs.extend(self.t);
            let mut ys = vec![self.n, self.c];
            ys.extend(self.h);
            let z = rand(zs.iter().product(), 1);
            let (zst, yst, sst) = (strides(&zs), strides(&ys), strides(self.s));
            let r = self.s.len();
            let want: Vec<f64> = (0..ys.iter().product())
                .map(|i| {
                    let h: Vec<usize> = (0..r).map(|a| i / yst[2 + a] % self.h[a]).collect();
                    let phase: usize = (0..r).map(|a| h[a] % self.s[a] * sst[a]).sum();
                    let Ok(blk) = usize::try_from(self.phases[phase]) else {
                        return 0.0;
                    };
                    let (n, c) = (i / yst[0], i / yst[1] % self.c);
                    let at = n * zst[0] + (blk * self.c + c) * zst[1];
                    z[at + (0..r).map(|a| h[a] / self.s[a] * zst[2 + a]).sum::<usize>()] as f64
                })
                .collect();
            let ints = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
            let node = Node::new(INTERLEAVE).attr(attr_ints("blocks", &ints(self.s)));
            let node = node.attr(attr_ints("phases", self.phases));
            let node = node.attr(attr_ints("sizes", &ints(self.h)));
            node.input(&zs, &z).output(&ys, &want, 0.0).check();
        }
    }

    #[test]
    fn stride_2_rows_in_pairs() {
        // 35 planes (not a multiple of 3) of 1,200: 42,000 elements, over the 32,768 at which
        // the kernel splits. Even rows at stride 2 go in pairs: both phases with taps, one,
        // the other, none; Z's T longer than Y needs (cropped).
        for phases in [[0, 1, 2, 3], [0, -1, -1, 1], [-1, -1, 0, 1]] {
            let (s, h, t) = (&[2, 2], &[40, 30], &[21, 16]);
            Case {
                n: 7,
                c: 5,
                s,
                phases: &phases,
                h,
                t,
            }
            .check();
        }
    }

    #[test]
    fn other_strides_and_ranks() {
        // Odd rows at stride 2, then 1 and 3 spatial axes.
        let (s, h, t) = (&[2, 2], &[40, 31], &[20, 16]);
        Case {
            n: 7,
            c: 5,
            s,
            phases: &[1, -1, 0, 2],
            h,
            t,
        }
        .check();
        let (s, h, t) = (&[3], &[100], &[34]);
        Case {
            n: 7,
            c: 5,
            s,
            phases: &[1, -1, 0],
            h,
            t,
        }
        .check();
        let (s, h, t) = (&[1, 2, 3], &[3, 8, 10], &[3, 4, 4]);
        Case {
            n: 2,
            c: 3,
            s,
            phases: &[0, -1, 1, 2, -1, 3],
            h,
            t,
        }
        .check();
        let (s, h, t) = (&[2], &[5], &[3]);
        Case {
            n: 0,
            c: 3,
            s,
            phases: &[0, 1],
            h,
            t,
        }
        .check();
    }

    #[test]
    fn phases_checked() {
        let n = Node::new(INTERLEAVE).attr(attr_ints("blocks", &[2]));
        let n = n
            .attr(attr_ints("phases", &[0, 0]))
            .attr(attr_ints("sizes", &[4]));
        let n = n
            .input(&[1, 2, 2], &[0.0; 4])
            .output(&[1, 1, 4], &[0.0; 4], 0.0);
        n.fails("the phases' blocks 0..B each once");
    }
}
