//! The dot products every search runs, with the widest SIMD the CPU has, picked at run time.
//! Each kernel is tested against the portable loop: the f32 ones give the same bits, the int8
//! ones the same (exact) integer.

/// Symmetric int8 quantisation with one scale per vector: `x ≈ code * scale`.
pub fn quantize(v: &[f32], codes: &mut [i8]) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        codes.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (c, x) in codes.iter_mut().zip(v) {
        *c = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Dot product of int8 codes of equal length, exact whenever the result fits in an i32 (any
/// vector up to ~130k dimensions): AVX-512 VNNI, else AVX2, else portable.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len(), "int8 codes of different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if has_vnni() {
            // SAFETY: the CPU supports AVX-512F, BW and VNNI, checked just above.
            return unsafe { dot_i8_vnni(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// The portable loop compiled for AVX2, which the default x86-64 target may not assume.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

/// VNNI multiplies unsigned by signed bytes (`vpdpbusd`, 64 pairs summed into 16 lanes per
/// instruction). Flipping `a`'s sign bit reads it as `a + 128` unsigned, so
/// `a·b = (a + 128)·b − 128 Σb`, and Σb comes from the same instruction with a vector of ones.
/// The lanes wrap like the i32 they hold, so the difference is exact whenever `a·b` fits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_i8_vnni(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let flip = _mm512_set1_epi8(i8::MIN);
    let ones = _mm512_set1_epi8(1);
    let (mut products, mut sums) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let mut i = 0;
    while i < n {
        // The last block reads only what is left; the lanes past the end load as 0 in both.
        let mask: __mmask64 = if n - i >= 64 { u64::MAX } else { (1u64 << (n - i)) - 1 };
        // SAFETY: the mask keeps every load inside the first `n` bytes of both slices.
        let (x, y) = unsafe {
            (
                _mm512_maskz_loadu_epi8(mask, a.as_ptr().add(i)),
                _mm512_maskz_loadu_epi8(mask, b.as_ptr().add(i)),
            )
        };
        products = _mm512_dpbusd_epi32(products, _mm512_xor_si512(x, flip), y);
        sums = _mm512_dpbusd_epi32(sums, ones, y);
        i += 64;
    }
    _mm512_reduce_add_epi32(products).wrapping_sub(_mm512_reduce_add_epi32(sums).wrapping_mul(128))
}

/// Dot product of f32 vectors, with the widest SIMD the CPU has (AVX-512, else AVX2, picked at run
/// time): every kernel runs the same loop, so all give the same bits as [`dot_portable`].
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { dot_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Sixteen independent accumulators, so the compiler can keep them in SIMD lanes (one AVX-512
/// register, two AVX2 ones); summed in a fixed order.
#[inline(always)]
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }

    #[test]
    fn every_int8_dot_kernel_gives_the_exact_integer() {
        let mut rng = fastrand::Rng::with_seed(5);
        for len in [0, 1, 37, 63, 64, 65, 128, 1280, 1283, 4099] {
            let mut cases: Vec<(Vec<i8>, Vec<i8>)> = vec![(
                (0..len).map(|_| rng.i8(-127..=127)).collect(),
                (0..len).map(|_| rng.i8(-127..=127)).collect(),
            )];
            // The extremes, where an unsigned reading or a saturating add would show.
            cases.push((vec![127; len], vec![-127; len]));
            cases.push((vec![-128; len], vec![-128; len]));
            cases.push((vec![-127; len], vec![127; len]));
            for (a, b) in cases {
                let expected: i32 = a.iter().zip(&b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
                assert_eq!(dot_i8_portable(&a, &b), expected, "portable, {len}");
                assert_eq!(dot_i8(&a, &b), expected, "dispatched, {len}");
                #[cfg(target_arch = "x86_64")]
                {
                    if has_vnni() {
                        // SAFETY: checked just above.
                        assert_eq!(unsafe { dot_i8_vnni(&a, &b) }, expected, "vnni, {len}");
                    }
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: checked just above.
                        assert_eq!(unsafe { dot_i8_avx2(&a, &b) }, expected, "avx2, {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn quantization_round_trips() {
        let v = [0.5, -1.0, 0.25, 0.0];
        let mut codes = [0i8; 4];
        let scale = quantize(&v, &mut codes);
        assert_eq!(codes, [64, -127, 32, 0]);
        assert!((scale - 1.0 / 127.0).abs() < 1e-9);
        assert_eq!(quantize(&[0.0; 4], &mut codes), 0.0);
    }

    #[test]
    fn every_f32_dot_kernel_gives_the_portable_bits() {
        let mut rng = fastrand::Rng::with_seed(3);
        for len in [0, 1, 15, 16, 17, 1280, 1283] {
            let a: Vec<f32> = (0..len).map(|_| rng.f32() - 0.5).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.f32() - 0.5).collect();
            let expected = dot_portable(&a, &b);
            assert_eq!(dot(&a, &b).to_bits(), expected.to_bits(), "dispatched, {len}");
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!(
                (f64::from(expected) - exact).abs() < 1e-4,
                "{len}: {expected} vs {exact}"
            );
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: checked just above.
                    assert_eq!(
                        unsafe { dot_avx512(&a, &b) }.to_bits(),
                        expected.to_bits(),
                        "avx512, {len}"
                    );
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: checked just above.
                    assert_eq!(unsafe { dot_avx2(&a, &b) }.to_bits(), expected.to_bits(), "avx2, {len}");
                }
            }
        }
    }
}
