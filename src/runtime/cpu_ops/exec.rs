//! How a `probe.cpu` kernel reaches its tensors and splits its work, safely: ONNX Runtime's
//! buffers as slices, the partition of a batch into parts, and the one helper that cuts an
//! output into disjoint mutable pieces and runs one part per piece on ONNX Runtime's pool.
//!
//! Every `unsafe` block of the kernels' Rust side is in this file, justified here once:
//! - ONNX Runtime owns a compute call's input and output buffers for the whole call, so a
//!   slice over one may live as long as the borrow of the [`ComputeContext`] ([`input`],
//!   [`Outputs::take`]). Outputs are distinct buffers from the inputs (no op declares in-place or
//!   aliased outputs) and from each other; [`Outputs`] hands each one out at most once, so no
//!   two `&mut` slices alias.
//! - Parts run concurrently, each on its own piece: [`split`] and [`deal`] cut a slice with
//!   `split_at_mut` / `chunks_exact_mut` (no unsafe), and [`run_parts`] moves piece `i` into part
//!   `i` through a lock taken once per part. The "parts write disjoint ranges" argument is the
//!   borrow checker's.
//!
//! The C++ side (libtorch) is reached through [`super::ffi`]'s checked wrappers.
use ort::operator::ComputeContext;
use ort::value::PrimitiveTensorElementType;
use ort::value::{ValueRef, ValueRefMut};
use std::cell::Cell;
use std::sync::Mutex;

/// Rows `[begin, end)` of part `i` of `parts` over `n` rows (the first `n % parts` parts take
/// one more).
pub fn part(n: i64, parts: usize, i: usize) -> (i64, i64) {
    let (p, i) = (parts as i64, i as i64);
    let (q, r) = (n / p, n % p);
    let begin = i * q + i.min(r);
    (begin, begin + q + i64::from(i < r))
}

/// Every part's rows ([`part`]) over `n` rows, as `usize`.
pub fn bounds(n: usize, parts: usize) -> Vec<(usize, usize)> {
    (0..parts)
        .map(|i| {
            let (lo, hi) = part(n as i64, parts, i);
            (lo as usize, hi as usize)
        })
        .collect()
}

/// One part for a tensor of `n` elements too small to be worth a trip to the pool, else
/// `parts` (the elementwise kernels' rule).
pub fn elementwise_parts(n: usize, parts: usize) -> usize {
    if n < 1 << 16 {
        1
    } else {
        parts
    }
}

/// `out`, `bounds.len()` pieces: piece `i` holds rows `bounds[i]` of `row` elements. The
/// bounds are consecutive from row 0 (as [`bounds`] makes them).
pub fn split<'a, T>(out: &'a mut [T], row: usize, bounds: &[(usize, usize)]) -> Vec<&'a mut [T]> {
    let mut rest = out;
    let mut at = 0;
    let mut pieces = Vec::with_capacity(bounds.len());
    for &(lo, hi) in bounds {
        assert_eq!(lo, at, "parts' rows must be consecutive");
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut((hi - lo) * row);
        pieces.push(piece);
        rest = tail;
        at = hi;
    }
    pieces
}

/// [`split`] of an output the node may leave unnamed (then every piece is `None`).
pub fn split_opt<'a, T>(
    out: Option<&'a mut [T]>,
    row: usize,
    bounds: &[(usize, usize)],
) -> Vec<Option<&'a mut [T]>> {
    match out {
        Some(out) => split(out, row, bounds).into_iter().map(Some).collect(),
        None => bounds.iter().map(|_| None).collect(),
    }
}

/// `out` cut into `pieces` equal pieces, piece `j` dealt to part `owner[j % owner.len()]`; each
/// part's pieces in order of `j`. For a part that owns strided planes, e.g. whole channels of
/// an [N, C, ...] tensor (planes `s C + c`).
pub fn deal<'a, T>(
    out: &'a mut [T],
    pieces: usize,
    owner: &[usize],
    parts: usize,
) -> Vec<Vec<&'a mut [T]>> {
    let mut dealt: Vec<Vec<&mut [T]>> = (0..parts).map(|_| Vec::new()).collect();
    let len = if pieces == 0 { 0 } else { out.len() / pieces };
    let mut rest = out;
    for j in 0..pieces {
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(len);
        dealt[owner[j % owner.len()]].push(piece);
        rest = tail;
    }
    dealt
}

/// The pieces of a sum split over `parts` parts (a sum over samples, each part's samples
/// apart): part 0 writes `out`, part `i > 0` block `i - 1` of `spare` (`parts - 1` blocks of
/// `out`'s length), which [`add_parts`] adds into `out` after. All `None` for an unnamed
/// output (then `spare` is empty).
pub fn sum_parts<'a>(
    out: Option<&'a mut [f32]>,
    spare: &'a mut [f32],
    parts: usize,
) -> Vec<Option<&'a mut [f32]>> {
    let Some(out) = out else {
        return (0..parts).map(|_| None).collect();
    };
    let len = out.len();
    let blocks: Vec<(usize, usize)> = (0..parts - 1).map(|i| (i, i + 1)).collect();
    std::iter::once(out)
        .chain(split(spare, len, &blocks))
        .map(Some)
        .collect()
}

/// `out += ` each block of `spare` in turn (a no-op for one part: `spare` is empty).
pub fn add_parts(out: &mut [f32], spare: &[f32]) {
    if spare.is_empty() {
        return;
    }
    for chunk in spare.chunks(out.len()) {
        for (o, v) in out.iter_mut().zip(chunk) {
            *o += v;
        }
    }
}

/// Part `i` of `pieces.len()` parts as `f(i, pieces[i])`, on ONNX Runtime's intra-op pool (in
/// this thread for one part); the first error wins. Each piece is moved into its part alone.
pub fn run_parts<P: Send>(
    ctx: &ComputeContext,
    pieces: Vec<P>,
    f: impl Fn(usize, P) -> Result<(), String> + Sync + Send,
) -> Result<(), String> {
    let parts = pieces.len();
    let slots: Vec<Mutex<Option<P>>> = pieces.into_iter().map(|p| Mutex::new(Some(p))).collect();
    let errors = Mutex::new(Vec::new());
    let run = |i: usize| {
        let piece = slots[i].lock().unwrap_or_else(|p| p.into_inner()).take();
        let r = match piece {
            Some(p) => f(i, p),
            None => Err(format!("part {i} run twice")),
        };
        if let Err(e) = r {
            errors.lock().unwrap().push(e);
        }
    };
    if parts == 1 {
        run(0);
    } else if parts > 1 {
        ctx.par_for(parts, parts, run).map_err(|e| e.to_string())?;
    }
    match errors.into_inner().unwrap().into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// An input's shape and data, the data borrowed for the compute call.
pub fn input<'c, T: PrimitiveTensorElementType>(
    value: ValueRef<'c>,
) -> ort::Result<(Vec<i64>, &'c [T])> {
    let (shape, data) = value.try_extract_tensor::<T>()?;
    let (p, len) = (data.as_ptr(), data.len());
    if len == 0 {
        return Ok((shape.to_vec(), &[]));
    }
    // SAFETY: the module doc's first point: ONNX Runtime holds the buffer for the whole call;
    // `value` is only a handle to it.
    Ok((shape.to_vec(), unsafe {
        std::slice::from_raw_parts(p, len)
    }))
}

/// The outputs of one compute call, each handed out at most once.
pub struct Outputs<'c> {
    ctx: &'c ComputeContext,
    taken: Cell<u64>,
}

impl<'c> Outputs<'c> {
    pub fn new(ctx: &'c ComputeContext) -> Outputs<'c> {
        Outputs {
            ctx,
            taken: Cell::new(0),
        }
    }

    /// Output `i` of `shape` as a slice, `None` when the node leaves it unnamed; an error when
    /// output `i` was already taken.
    pub fn take<T: PrimitiveTensorElementType + 'c>(
        &self,
        i: usize,
        shape: Vec<i64>,
    ) -> ort::Result<Option<&'c mut [T]>> {
        if i >= 64 || self.taken.get() & (1u64 << i) != 0 {
            return Err(ort::Error::new(format!("output {i} taken twice")));
        }
        self.taken.set(self.taken.get() | 1u64 << i);
        let v: Option<ValueRefMut<'c>> = self.ctx.output(i, shape)?;
        let Some(mut v) = v else {
            return Ok(None);
        };
        let data = v.try_extract_tensor_mut::<T>()?.1;
        let (p, len) = (data.as_mut_ptr(), data.len());
        if len == 0 {
            return Ok(Some(&mut []));
        }
        // SAFETY: the module doc's first point: ONNX Runtime holds the buffer for the whole
        // call, and `taken` makes this the only slice over it.
        Ok(Some(unsafe { std::slice::from_raw_parts_mut(p, len) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_rows_in_order() {
        assert_eq!(bounds(10, 3), [(0, 4), (4, 7), (7, 10)]);
        assert_eq!(bounds(2, 3), [(0, 1), (1, 2), (2, 2)]);
        assert_eq!(part(0, 1, 0), (0, 0));
    }

    #[test]
    fn split_gives_each_part_its_rows() {
        let mut v: Vec<i32> = (0..10).collect();
        let b = bounds(5, 2);
        let pieces = split(&mut v, 2, &b);
        assert_eq!(pieces[0], [0, 1, 2, 3, 4, 5]);
        assert_eq!(pieces[1], [6, 7, 8, 9]);
        assert!(split_opt::<i32>(None, 2, &b).iter().all(Option::is_none));
    }

    #[test]
    fn deal_gives_each_part_its_channels() {
        // [N 2, C 3, plane 1]; channels {0, 1} to part 0, {2} to part 1.
        let mut v: Vec<i32> = (0..6).collect();
        let dealt = deal(&mut v, 6, &[0, 0, 1], 2);
        let got: Vec<Vec<i32>> = dealt
            .iter()
            .map(|p| p.iter().flat_map(|s| s.iter().copied()).collect())
            .collect();
        assert_eq!(got, [vec![0, 1, 3, 4], vec![2, 5]]);
        let mut e: Vec<i32> = vec![];
        assert_eq!(deal(&mut e, 4, &[0, 1], 2)[1].len(), 2);
    }
}
