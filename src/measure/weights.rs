//! The distribution of each weight tensor's entries at a checkpoint, and how it moves.
//!
//! The invariant-measure view (Zhang et al., ICML 2022) says the weights keep moving while their
//! *distribution* settles. Per parameter tensor p with n entries we store, at every checkpoint:
//! - quantiles at the levels j/256, j = 0..256 (linear interpolation between order statistics,
//!   numpy's default), from which `probe analyze` rebuilds CDFs of windows of checkpoints;
//! - a 64-bin histogram between the tensor's min and max, for plots;
//! - the exact 1-Wasserstein distance to the previous and to the first checkpoint. For two
//!   empirical distributions of n atoms each, the optimal coupling pairs order statistics:
//!   W1 = (1/n) sum_i |a_(i) - b_(i)|;
//! - the mean absolute move (1/n) sum_i |a_i - b_i| of the entries themselves. Pairing entry i
//!   with entry i is one coupling, so W1 <= mean |Δw|: the ratio W1 / mean|Δw| in [0, 1] says
//!   how much of the motion changes the distribution (1: all of it; near 0: the entries trade
//!   places, the distribution stays).

pub const QUANTILE_LEVELS: usize = 257;
pub const HIST_BINS: usize = 64;

/// One tensor's entries, sorted in IEEE 754 total order (`f32::total_cmp`: -NaN, -inf, finite
/// values, +inf, +NaN; -0 before +0). Weights are read as f32 and every statistic below widens
/// each entry to f64 before any arithmetic, so nothing is lost by keeping them in f32 (half the
/// memory of a widened copy: a model's sorted weights are held for the first and the previous
/// checkpoint).
///
/// An LSD radix sort on 11-bit digits of the order-preserving key ([`total_key`]), three passes
/// at most (a digit every entry shares is skipped), the three digits' counts taken in one read.
/// Equal keys are equal bit patterns, so the result is exactly what a comparison sort by
/// `total_cmp` gives; it is linear in n where the comparison sort was n log n on tensors of tens
/// of millions of entries, and 2048 counters stay in L1 where 16-bit digits' 65536 did not
/// (24.6M entries: 440-480 ms against 510-560).
pub fn sorted(v: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    let mut scratch = vec![0u32; scratch_len(v.len())];
    sort_into(v, &mut out, &mut scratch);
    out
}

/// Below this many entries a comparison sort, in place.
const SMALL_SORT: usize = 1 << 12;

/// The scratch [`sort_into`] needs for `n` entries.
pub fn scratch_len(n: usize) -> usize {
    if n <= SMALL_SORT {
        0
    } else {
        n
    }
}

/// [`sorted`] into `out` (as long as `v`), with `scratch` of at least [`scratch_len`] entries:
/// the caller allocates both, so that they come from where it allocates (see
/// [`Distribution::of`]).
pub fn sort_into(v: &[f32], out: &mut [f32], scratch: &mut [u32]) {
    const BITS: u32 = 11;
    const DIGITS: usize = 1 << BITS;
    let n = v.len();
    assert!(out.len() == n && scratch.len() >= scratch_len(n));
    // SAFETY: f32 and u32 have one size and alignment and every bit pattern is a valid u32;
    // `out` is borrowed mutably for as long as `keys` lives.
    let keys: &mut [u32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), n) };
    for (k, &x) in keys.iter_mut().zip(v) {
        *k = total_key(x);
    }
    if n <= SMALL_SORT {
        keys.sort_unstable();
    } else {
        let buf = &mut scratch[..n];
        let mut count = vec![[0usize; DIGITS]; 3];
        for &k in keys.iter() {
            for (d, c) in count.iter_mut().enumerate() {
                c[((k >> (BITS * d as u32)) as usize) & (DIGITS - 1)] += 1;
            }
        }
        // The passes go keys -> buf -> keys ...; `in_keys` says where the entries are.
        let mut in_keys = true;
        for (d, c) in count.iter_mut().enumerate() {
            if c.iter().any(|&m| m == n) {
                continue;
            }
            let mut at = 0;
            for m in c.iter_mut() {
                let here = *m;
                *m = at;
                at += here;
            }
            let shift = BITS * d as u32;
            let (from, to): (&[u32], &mut [u32]) = if in_keys {
                (&*keys, &mut *buf)
            } else {
                (&*buf, &mut *keys)
            };
            for &k in from {
                let j = ((k >> shift) as usize) & (DIGITS - 1);
                to[c[j]] = k;
                c[j] += 1;
            }
            in_keys = !in_keys;
        }
        if !in_keys {
            keys.copy_from_slice(buf);
        }
    }
    for k in keys.iter_mut() {
        *k = from_total_key(*k).to_bits();
    }
}

/// An unsigned key whose order is `f32::total_cmp`'s: negative numbers have all but the sign
/// bit flipped (larger magnitude, smaller key), then the sign bit is flipped so that negatives
/// come first.
fn total_key(x: f32) -> u32 {
    let b = x.to_bits();
    let flip = (((b as i32) >> 31) as u32) >> 1;
    (b ^ flip) ^ (1 << 31)
}

fn from_total_key(k: u32) -> f32 {
    let b = k ^ (1 << 31);
    let flip = (((b as i32) >> 31) as u32) >> 1;
    f32::from_bits(b ^ flip)
}

/// Quantiles of sorted values at levels j/(Q-1), j = 0..Q-1: position h = (n-1) u, linear
/// between the order statistics around it.
pub fn quantiles(sorted: &[f32]) -> Vec<f64> {
    let n = sorted.len();
    if n == 0 {
        return vec![f64::NAN; QUANTILE_LEVELS];
    }
    (0..QUANTILE_LEVELS)
        .map(|j| {
            let h = (n - 1) as f64 * j as f64 / (QUANTILE_LEVELS - 1) as f64;
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            let t = h - lo as f64;
            let (a, b) = (sorted[lo] as f64, sorted[hi] as f64);
            a + t * (b - a)
        })
        .collect()
}

/// Counts in [`HIST_BINS`] equal bins between min and max (the max falls in the last bin), and
/// the bins' edges. A constant tensor gets edges around its value, all counts in the middle.
///
/// An entry x goes to bin min(floor((x - lo) / w), B - 1). IEEE subtraction and division are
/// monotone, so along the sorted entries that bin never decreases: each bin is one run, found by
/// binary search (B log n steps where a pass over the entries took one division each, 0.3 s
/// for a 100M-parameter model), with exactly the per-entry counts.
pub fn histogram(sorted: &[f32]) -> (Vec<i64>, Vec<f64>) {
    let mut counts = vec![0i64; HIST_BINS];
    // In total order the finite values are one run: after -NaN and -inf, before +inf and +NaN.
    let start = sorted.partition_point(|x| !x.is_finite() && x.is_sign_negative());
    let end = start + sorted[start..].partition_point(|x| x.is_finite());
    let finite = &sorted[start..end];
    let (lo, hi) = match (finite.first(), finite.last()) {
        (Some(&a), Some(&b)) if b > a => (a as f64, b as f64),
        (Some(&a), Some(_)) => (a as f64 - 0.5, a as f64 + 0.5),
        _ => return (counts, vec![f64::NAN; HIST_BINS + 1]),
    };
    let w = (hi - lo) / HIST_BINS as f64;
    let bin = |x: f32| (((x as f64 - lo) / w) as usize).min(HIST_BINS - 1);
    let mut from = 0;
    for (k, c) in counts.iter_mut().enumerate() {
        let to = from + finite[from..].partition_point(|&x| bin(x) <= k);
        *c = (to - from) as i64;
        from = to;
    }
    let edges = (0..=HIST_BINS).map(|k| lo + w * k as f64).collect();
    (counts, edges)
}

/// Exact W1 between the empirical distributions of two equally long sorted vectors.
pub fn w1_sorted(a: &[f32], b: &[f32]) -> f64 {
    mean_abs_move(a, b)
}

/// (1/n) sum |a_i - b_i|, entry by entry.
pub fn mean_abs_move(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return f64::NAN;
    }
    super::reduce::apart(a, b).abs / a.len() as f64
}

/// Everything above for one checkpoint, per tensor, in order.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub sorted: Vec<Vec<f32>>,
    pub quantiles: Vec<f64>,
    pub hist_counts: Vec<i64>,
    pub hist_edges: Vec<f64>,
}

impl Distribution {
    pub fn of(weights: &[&[f32]]) -> Distribution {
        // Each tensor sorted and summarized on every core, largest first, each thread with its
        // sort scratch; the result per tensor, in order. The sorted copies and the scratch are
        // allocated here, on the calling thread: its heap holds the memory the pass freed. A
        // thread of its own maps each tensor over 64 MB afresh (glibc's arenas for other
        // threads map larger blocks on their own), which put the Llama decoder's peak 490 MB
        // above its pass's.
        let threads = crate::runtime::default_threads().clamp(1, weights.len().max(1));
        let most = weights
            .iter()
            .map(|w| scratch_len(w.len()))
            .max()
            .unwrap_or(0);
        let scratch: Vec<Vec<u32>> = (0..threads).map(|_| vec![0u32; most]).collect();
        let outs: Vec<std::sync::Mutex<Vec<f32>>> = weights
            .iter()
            .map(|w| std::sync::Mutex::new(vec![0f32; w.len()]))
            .collect();
        let summaries = super::reduce::per_index_with(
            weights.len(),
            scratch,
            |i| weights[i].len(),
            |scratch, i| {
                let mut out = outs[i].lock().unwrap_or_else(|p| p.into_inner());
                sort_into(weights[i], &mut out, scratch);
                (quantiles(&out), histogram(&out))
            },
        );
        let per = outs
            .into_iter()
            .map(|o| o.into_inner().unwrap_or_else(|p| p.into_inner()))
            .zip(summaries)
            .map(|(s, (q, (c, e)))| (s, q, c, e));
        let n = weights.len();
        let mut d = Distribution {
            sorted: Vec::with_capacity(n),
            quantiles: Vec::with_capacity(n * QUANTILE_LEVELS),
            hist_counts: Vec::with_capacity(n * HIST_BINS),
            hist_edges: Vec::with_capacity(n * (HIST_BINS + 1)),
        };
        for (s, q, c, e) in per {
            d.sorted.push(s);
            d.quantiles.extend(q);
            d.hist_counts.extend(c);
            d.hist_edges.extend(e);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        // numpy.quantile([3, 1, 2, 10], [0, 1/256, 0.5, 1]) = 1, 1.01171875, 2.5, 10.
        let s = sorted(&[3.0, 1.0, 2.0, 10.0]);
        let q = quantiles(&s);
        assert_eq!(q[0], 1.0);
        assert!((q[1] - 1.01171875).abs() < 1e-15);
        assert_eq!(q[128], 2.5);
        assert_eq!(q[256], 10.0);
    }

    #[test]
    fn w1_is_the_sorted_pairing_and_below_the_move() {
        // A permutation moves every entry but leaves the distribution: W1 = 0.
        let a = [0.0f32, 1.0, 2.0, 3.0];
        let b = [3.0f32, 2.0, 1.0, 0.0];
        let (sa, sb) = (sorted(&a), sorted(&b));
        assert_eq!(w1_sorted(&sa, &sb), 0.0);
        assert_eq!(mean_abs_move(&a, &b), 2.0);
        // A shift by c moves the distribution by exactly c.
        let c: Vec<f32> = a.iter().map(|x| x + 0.25).collect();
        assert!((w1_sorted(&sa, &sorted(&c)) - 0.25).abs() < 1e-15);
        // W1 <= mean |Δ| on arbitrary data.
        let x: Vec<f32> = (0..100).map(|i| ((i * 37 % 101) as f32).sin()).collect();
        let y: Vec<f32> = (0..100).map(|i| ((i * 53 % 97) as f32).cos()).collect();
        assert!(w1_sorted(&sorted(&x), &sorted(&y)) <= mean_abs_move(&x, &y) + 1e-15);
    }

    /// The radix sort against the comparison sort it replaced, bit for bit, on data with every
    /// kind of value the order distinguishes, and on data whose low digit is shared (skipped).
    #[test]
    fn radix_sort_is_total_cmp_order() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            f32::MAX,
            f32::MIN,
        ];
        for n in [0usize, 1, 7, 5000, 70_000] {
            let mut v: Vec<f32> = (0..n)
                .map(|i| match rnd() % 4 {
                    0 => special[i % special.len()],
                    1 => f32::from_bits(rnd() as u32),
                    _ => ((rnd() % 2001) as f32 - 1000.0) * 0.5,
                })
                .collect();
            let bits = |x: &[f32]| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
            let mut want = v.clone();
            want.sort_by(|a, b| a.total_cmp(b));
            assert_eq!(bits(&sorted(&v)), bits(&want), "n = {n}");
            // Low 22 bits all zero: the first two passes are skipped.
            v.iter_mut()
                .for_each(|x| *x = f32::from_bits(x.to_bits() & 0xffc0_0000));
            let mut want = v.clone();
            want.sort_by(|a, b| a.total_cmp(b));
            assert_eq!(bits(&sorted(&v)), bits(&want), "shared low digit, n = {n}");
        }
    }

    /// The binary search against the per-entry count it replaced, on values that sit on the
    /// bins' edges, repeat, and span signs and magnitudes.
    #[test]
    fn histogram_runs_are_the_per_entry_bins() {
        let per_entry = |finite: &[f32]| {
            let (lo, hi) = (finite[0] as f64, *finite.last().unwrap() as f64);
            let w = (hi - lo) / HIST_BINS as f64;
            let mut c = vec![0i64; HIST_BINS];
            for &x in finite {
                c[(((x as f64 - lo) / w) as usize).min(HIST_BINS - 1)] += 1;
            }
            c
        };
        let edges: Vec<f32> = (0..=640).map(|i| -3.0 + i as f32 * (7.0 / 640.0)).collect();
        let odd: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919 % 1013) as f32 - 500.0).powi(3) * 1e-7)
            .collect();
        let mut with_inf = odd.clone();
        with_inf.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        for v in [edges, odd, with_inf] {
            let s = sorted(&v);
            let finite: Vec<f32> = s.iter().copied().filter(|x| x.is_finite()).collect();
            assert_eq!(histogram(&s).0, per_entry(&finite));
        }
    }

    #[test]
    fn histogram_counts_everything() {
        let v: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let (c, e) = histogram(&sorted(&v));
        assert_eq!(c.iter().sum::<i64>(), 1000);
        assert_eq!(e.len(), HIST_BINS + 1);
        assert!(e.windows(2).all(|w| w[1] > w[0]));
        let (c, e) = histogram(&[2.0, 2.0]);
        assert_eq!(c.iter().sum::<i64>(), 2);
        assert_eq!(e[0], 1.5);
    }
}
