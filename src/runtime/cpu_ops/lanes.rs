//! Sums in eight lanes, so that the loops vectorize: the lanes are added at the end, which
//! fixes the order of the additions (the kernels' results depend on it, bit for bit).

/// `sum a b` in eight f32 lanes, the lanes added at the end.
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a8, b8) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += a8[j] * b8[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum a b` of f32 operands in f64 (each product exact), in eight f64 lanes: one f64 sum
/// in order was a chain of dependent additions (2.2 ms for a 512 x 512 x 3 x 3 weight).
pub fn dot8_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    for (a8, b8) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += a8[j] as f64 * b8[j] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `sum a` in eight f32 lanes.
pub fn sum8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for a8 in c {
        for j in 0..8 {
            acc[j] += a8[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_then_tail() {
        let a: Vec<f32> = (1..=11).map(|v| v as f32).collect();
        assert_eq!(sum8(&a), 66.0);
        assert_eq!(dot8(&a, &a), 506.0);
        assert_eq!(dot8_f64(&a, &a), 506.0);
        assert_eq!(sum8(&[]), 0.0);
    }
}
