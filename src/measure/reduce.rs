//! The sums a results row takes over a model's tensors (norms of the gradient, of the weights,
//! of their motion), each in eight f64 lanes added at the end, and tensors spread over the
//! cores.
//!
//! One f64 sum in order is a chain of dependent additions, one every ~4 cycles: eleven of them
//! over a 100M-parameter model's gradient and weights took 1.5 s a checkpoint. Eight independent
//! lanes vectorize; the order of the additions is still fixed (lane j takes entries j, j+8, ...,
//! then the lanes are added in order, then the tail), so a row is the same on every run and in
//! every data shard's merge.
use std::sync::atomic::{AtomicUsize, Ordering};

const L: usize = 8;

/// Entries from which [`accumulate`] uses its threads.
pub const THREADED: usize = 2 << 20;

/// Adds the lanes in order.
fn fold(acc: [f64; L]) -> f64 {
    acc.iter().sum()
}

/// Norms of one tensor of f64 values: sum x^2, sum |x|, and max |x| (NaN when any entry is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norms {
    pub sq: f64,
    pub abs: f64,
    pub max_abs: f64,
}

pub fn norms(v: &[f64]) -> Norms {
    let (mut sq, mut ab, mut mx) = ([0f64; L], [0f64; L], [0f64; L]);
    let c = v.chunks_exact(L);
    let tail = c.remainder();
    for x in c {
        for j in 0..L {
            let a = x[j].abs();
            sq[j] += x[j] * x[j];
            ab[j] += a;
            // NaN-blind here (a comparison with NaN is false); the sum of |x| carries any NaN.
            mx[j] = if a > mx[j] { a } else { mx[j] };
        }
    }
    let (mut s, mut a, mut m) = (fold(sq), fold(ab), mx.iter().fold(0f64, |m, &x| m.max(x)));
    for &x in tail {
        s += x * x;
        a += x.abs();
        m = m.max(x.abs());
    }
    Norms {
        sq: s,
        abs: a,
        max_abs: if a.is_nan() { f64::NAN } else { m },
    }
}

/// sum x^2 over f32 entries, each widened to f64 first.
pub fn sq_f32(v: &[f32]) -> f64 {
    let mut acc = [0f64; L];
    let c = v.chunks_exact(L);
    let tail: f64 = c.remainder().iter().map(|&x| x as f64 * x as f64).sum();
    for x in c {
        for j in 0..L {
            acc[j] += x[j] as f64 * x[j] as f64;
        }
    }
    fold(acc) + tail
}

/// How far `a` is from `b`, entry by entry (widened to f64): sum (a-b)^2 and sum |a-b|.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Apart {
    pub sq: f64,
    pub abs: f64,
}

pub fn apart(a: &[f32], b: &[f32]) -> Apart {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut sq, mut ab) = ([0f64; L], [0f64; L]);
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (mut ts, mut ta) = (0f64, 0f64);
    for (&x, &y) in ac.remainder().iter().zip(bc.remainder()) {
        let d = x as f64 - y as f64;
        ts += d * d;
        ta += d.abs();
    }
    for (x, y) in ac.zip(bc) {
        for j in 0..L {
            let d = x[j] as f64 - y[j] as f64;
            sq[j] += d * d;
            ab[j] += d.abs();
        }
    }
    Apart {
        sq: fold(sq) + ts,
        abs: fold(ab) + ta,
    }
}

/// sum (g + lambda w)^2 for a gradient g (f64) and weights w (f32, widened).
pub fn sq_plus(g: &[f64], w: &[f32], lambda: f64) -> f64 {
    let n = g.len().min(w.len());
    let (g, w) = (&g[..n], &w[..n]);
    let mut acc = [0f64; L];
    let (gc, wc) = (g.chunks_exact(L), w.chunks_exact(L));
    let tail: f64 = gc
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(&x, &y)| (x + lambda * y as f64).powi(2))
        .sum();
    for (x, y) in gc.zip(wc) {
        for j in 0..L {
            let t = x[j] + lambda * y[j] as f64;
            acc[j] += t * t;
        }
    }
    fold(acc) + tail
}

/// `n` zeros, written: the pages are faulted in by the writes. A zeroed allocation's pages are
/// untouched, so `acc += g` on them first maps the shared zero page (a fault on the read), then
/// copies it (a second fault on the write, with a TLB flush on every core): on the Llama
/// decoder's 100M sums, 20% of the process's page faults. The allocation is hidden from the
/// optimizer, which would otherwise turn it and the writes back into a zeroed allocation.
pub fn zeros(n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = Vec::with_capacity(n);
    let p = std::hint::black_box(v.as_mut_ptr());
    // SAFETY: `p` has room for `n` f64, all of which are written (0.0 is all-zero bits) before
    // the length is set.
    unsafe {
        std::ptr::write_bytes(p, 0, n);
        v.set_len(n);
    }
    v
}

/// Whether every entry is finite, in one vectorizable pass: `|x|`'s bits plus 2^23 reach the
/// sign bit exactly when `|x| >= 0x7f80_0000` (infinity, or a NaN above it), and the flags are
/// OR-ed (no compare per entry: baseline x86-64 has no unsigned 32-bit max).
pub fn all_finite(v: &[f32]) -> bool {
    v.iter().fold(0u32, |flags, x| flags | not_finite_bit(*x)) & 0x8000_0000 == 0
}

/// Bit 31 set when `x` is not finite (see [`all_finite`]).
#[inline(always)]
fn not_finite_bit(x: f32) -> u32 {
    (x.to_bits() & 0x7fff_ffff) + 0x0080_0000
}

/// `acc += g`, each entry widened to f64, over every tensor pair, on `threads` threads when
/// there are at least [`THREADED`] entries (two pieces): the entries are cut into pieces of at
/// most 1M and dealt round the threads. Each sum is the same one addition whichever thread
/// makes it. A 100M-parameter model's gradient is 400 MB read and 800 MB of sums read and
/// written every batch: memory-bound, and two cores move more of it. Threads pay from a few
/// million entries once ONNX Runtime's pool stops spinning when its run returns (see
/// `runtime::session`): on resnet18 (11.7M entries) 14-16 ms a batch on one thread, 8.8-9.0 on
/// two.
///
/// Returns whether every entry of `grads` was finite, found in the same pass (a separate check
/// read the whole gradient from memory once more: ~5 ms a batch of resnet18's 47 MB). The
/// sums are added either way: a caller that must leave a non-finite batch out checks first
/// ([`all_finite`]).
pub fn accumulate(acc: &mut [Vec<f64>], grads: &[&[f32]], threads: usize) -> bool {
    const PIECE: usize = 1 << 20;
    let add = |a: &mut [f64], g: &[f32]| -> u32 {
        let mut flags = 0u32;
        for (x, &v) in a.iter_mut().zip(g) {
            *x += v as f64;
            flags |= not_finite_bit(v);
        }
        flags
    };
    let total: usize = grads.iter().map(|g| g.len()).sum();
    let mut flags = 0u32;
    if threads <= 1 || total < THREADED {
        for (a, g) in acc.iter_mut().zip(grads) {
            flags |= add(a, g);
        }
        return flags & 0x8000_0000 == 0;
    }
    let mut dealt: Vec<Vec<(&mut [f64], &[f32])>> = (0..threads).map(|_| Vec::new()).collect();
    let mut k = 0;
    for (a, g) in acc.iter_mut().zip(grads) {
        for (pa, pg) in a.chunks_mut(PIECE).zip(g.chunks(PIECE)) {
            dealt[k % threads].push((pa, pg));
            k += 1;
        }
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = dealt
            .into_iter()
            .map(|mine| s.spawn(move || mine.into_iter().fold(0u32, |f, (a, g)| f | add(a, g))))
            .collect();
        for h in handles {
            flags |= h.join().expect("an f64 sum thread panicked");
        }
    });
    flags & 0x8000_0000 == 0
}

/// `f` of every item, on every core (`threads`), largest `size` first; results in the items'
/// order. A model's tensors differ in size by 10^5 (a bias against an embedding): handing them
/// out largest first keeps the cores busy to the end.
pub fn per_tensor<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    size: impl Fn(&T) -> usize + Sync,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    per_index(items.len(), threads, |i| size(&items[i]), |i| f(&items[i]))
}

/// [`per_tensor`] over the indices `0..n`.
pub fn per_index<R: Send>(
    n: usize,
    threads: usize,
    size: impl Fn(usize) -> usize + Sync,
    f: impl Fn(usize) -> R + Sync,
) -> Vec<R> {
    per_index_with(n, vec![(); threads.max(1)], size, |_, i| f(i))
}

/// [`per_index`] with a state per thread (a sort's scratch), one thread per entry of `states`;
/// `f` gets its thread's. Below ~1M entries in all, one thread (the first state): a thread costs
/// more than it saves.
pub fn per_index_with<S: Send, R: Send>(
    n: usize,
    mut states: Vec<S>,
    size: impl Fn(usize) -> usize + Sync,
    f: impl Fn(&mut S, usize) -> R + Sync,
) -> Vec<R> {
    let total: usize = (0..n).map(&size).sum();
    states.truncate(n.max(1));
    if total < 1 << 20 || states.len() <= 1 {
        let Some(mut one) = states.into_iter().next() else {
            assert_eq!(n, 0, "per_index_with: no state for {n} items");
            return Vec::new();
        };
        return (0..n).map(|i| f(&mut one, i)).collect();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(i)));
    let next = AtomicUsize::new(0);
    let (order, next, f) = (&order, &next, &f);
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let hs: Vec<_> = states
            .into_iter()
            .map(|mut state| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = order.get(j) else { break };
                        mine.push((i, f(&mut state, i)));
                    }
                    mine
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("a per-tensor thread panicked"))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's minor page faults so far.
    fn faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut u);
            u.ru_minflt
        }
    }

    /// `zeros` leaves its pages faulted in: adding into them takes no faults, where a zeroed
    /// allocation's pages take one or two each (read, then write).
    #[test]
    fn zeros_are_written() {
        let n = 1 << 21; // 16 MB: a fresh mapping of 4096 pages.
        let mut acc = zeros(n);
        assert!(acc.iter().all(|&x| x.to_bits() == 0));
        let g = vec![1.0f32; n];
        let before = faults();
        accumulate(std::slice::from_mut(&mut acc), &[&g], 1);
        let taken = faults() - before;
        assert!(
            taken < 256,
            "{taken} page faults adding into {n} written zeros"
        );
        assert!(acc.iter().all(|&x| x == 1.0));
    }

    fn data(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20001) as f64 / 1000.0 - 10.0
            })
            .collect()
    }

    /// Each sum against the sum in order, for lengths around the lane width (tails of 0..7).
    #[test]
    fn lanes_agree_with_the_sums_in_order() {
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 1000, 1003] {
            let g = data(n, n as u64 + 1);
            let w: Vec<f32> = data(n, n as u64 + 7).iter().map(|&x| x as f32).collect();
            let v: Vec<f32> = data(n, n as u64 + 9).iter().map(|&x| x as f32).collect();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
            let nm = norms(&g);
            assert!(close(nm.sq, g.iter().map(|x| x * x).sum()), "n {n}");
            assert!(close(nm.abs, g.iter().map(|x| x.abs()).sum()), "n {n}");
            assert_eq!(
                nm.max_abs,
                g.iter().fold(0f64, |m, x| m.max(x.abs())),
                "n {n}"
            );
            let want: f64 = w.iter().map(|&x| x as f64 * x as f64).sum();
            assert!(close(sq_f32(&w), want), "n {n}");
            let ap = apart(&w, &v);
            let d = |(&x, &y): (&f32, &f32)| x as f64 - y as f64;
            assert!(
                close(ap.sq, w.iter().zip(&v).map(|p| d(p) * d(p)).sum()),
                "n {n}"
            );
            assert!(
                close(ap.abs, w.iter().zip(&v).map(|p| d(p).abs()).sum()),
                "n {n}"
            );
            let want: f64 = g
                .iter()
                .zip(&w)
                .map(|(&x, &y)| (x + 0.3 * y as f64).powi(2))
                .sum();
            assert!(close(sq_plus(&g, &w, 0.3), want), "n {n}");
        }
    }

    /// A NaN anywhere (a lane or the tail) makes max |x| NaN; an infinity stays infinite.
    #[test]
    fn nan_and_inf_reach_the_max() {
        for at in [0usize, 5, 8, 16, 18] {
            let mut g = data(19, 3);
            g[at] = f64::NAN;
            assert!(norms(&g).max_abs.is_nan(), "NaN at {at}");
            g[at] = f64::NEG_INFINITY;
            assert_eq!(norms(&g).max_abs, f64::INFINITY, "-inf at {at}");
        }
    }

    /// The threaded sum against the sum on one thread, bit for bit, over tensors smaller and
    /// larger than a piece.
    /// `all_finite`, and `accumulate`'s answer on one thread and on three, is
    /// `all(is_finite)` on every class of f32, alone and among finite values; the sums are
    /// added either way.
    #[test]
    fn finite_checks_are_is_finite() {
        let special = [
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -1e-45,
            f32::MAX,
            f32::MIN,
            f32::from_bits(0x7f7f_ffff),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7fff_ffff),
            f32::from_bits(0x7f80_0001),
        ];
        for &x in &special {
            for at in [0, 5, 9] {
                let mut v = vec![1.5f32; 10];
                v[at] = x;
                assert_eq!(all_finite(&v), x.is_finite(), "{x} at {at}");
                let mut acc = vec![vec![1.0f64; 10]];
                assert_eq!(accumulate(&mut acc, &[&v], 1), x.is_finite(), "{x} at {at}");
                assert_eq!(acc[0][(at + 1) % 10], 2.5);
            }
        }
        // On threads: the entry in the second 1M piece (the second thread's).
        let mut big = vec![0.25f32; THREADED];
        for x in [1.0, f32::NAN, f32::NEG_INFINITY] {
            big[(1 << 20) + 7] = x;
            let mut acc = vec![vec![0.0f64; THREADED]];
            assert_eq!(accumulate(&mut acc, &[&big], 3), x.is_finite(), "{x}");
            assert_eq!(acc[0][THREADED - 1], 0.25);
        }
        assert!(all_finite(&[]));
        assert!(accumulate(&mut [vec![]], &[&[]], 2));
    }

    #[test]
    fn accumulate_is_the_one_thread_sum() {
        let sizes = [3usize, (1 << 20) + 5, 17, THREADED, 0];
        let grads: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| data(n, i as u64 + 11).iter().map(|&x| x as f32).collect())
            .collect();
        let views: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
        let start: Vec<Vec<f64>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| data(n, i as u64 + 5))
            .collect();
        let (mut one, mut two) = (start.clone(), start.clone());
        assert!(accumulate(&mut one, &views, 1));
        assert!(accumulate(&mut two, &views, 3));
        assert_eq!(one, two);
        let want: Vec<f64> = start[1]
            .iter()
            .zip(&grads[1])
            .map(|(a, &g)| a + g as f64)
            .collect();
        assert_eq!(one[1], want);
        assert_ne!(one, start);
    }

    #[test]
    fn per_tensor_keeps_the_order() {
        let items: Vec<Vec<f32>> = (0..9).map(|i| vec![1.0; (i * 7919 % 13) << 17]).collect();
        let got = per_tensor(&items, 3, |v| v.len(), |v| v.len());
        let want: Vec<usize> = items.iter().map(|v| v.len()).collect();
        assert_eq!(got, want);
        assert!(per_tensor(&Vec::<Vec<f32>>::new(), 2, |v| v.len(), |v| v.len()).is_empty());
    }
}
