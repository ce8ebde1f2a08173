//! bf16 as the GEMMs use it: the portable definition of the rounding (f32 → bf16,
//! round-to-nearest-even, as `c10::BFloat16` and `_mm512_cvtneps_pbh` round normal numbers)
//! and of a bf16 product, which the AVX512-BF16 kernel is tested against.

/// The bf16 nearest to `x` (ties to even), as its 16 bits; NaN stays NaN (quiet).
#[inline(always)]
pub fn round_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x40;
    (if x.is_nan() { nan } else { rounded }) as u16
}

/// The f32 value of bf16 `bits` (exact).
#[inline(always)]
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `x` rounded to bf16, as an f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    to_f32(round_bits(x))
}

/// Two values as the pair a bf16 dot-product instruction takes: `lo` in the low half.
#[inline(always)]
pub fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(round_bits(lo)) | u32::from(round_bits(hi)) << 16
}

/// The reference of a bf16 GEMM: `lhs [m, k] · rhs [k, n]` (row-major) with both inputs
/// rounded to bf16 and the products summed exactly (f64), for tests of the kernel.
pub fn reference_matmul(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32]) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let a = f64::from(round(lhs[i * k + p]));
            for j in 0..n {
                out[i * n + j] += a * f64::from(round(rhs[p * n + j]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and the next bf16 (1 + 2^-7): ties go to even (1).
        assert_eq!(round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        assert_eq!(round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Just above halfway rounds up.
        assert_eq!(
            round(f32::from_bits(1f32.to_bits() + 0x8001)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round(-1.0 - 2f32.powi(-8)), -1.0);
        for exact in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65536.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(round(exact).to_bits(), exact.to_bits());
        }
        assert!(round(f32::NAN).is_nan());
        // The largest f32 is past the largest bf16's halfway point: it rounds to infinity.
        assert_eq!(round(f32::MAX), f32::INFINITY);
    }

    #[test]
    fn rounding_error_is_at_most_half_a_bf16_ulp() {
        for i in 1..10_000 {
            let x = (i as f32 * 0.7311).sin() * 10f32.powi(i % 7 - 3);
            let r = round(x);
            let ulp = 2f32.powi(x.abs().log2().floor() as i32 - 7);
            assert!((r - x).abs() <= ulp / 2.0, "{x} -> {r}");
        }
    }

    #[test]
    fn pairs_put_the_first_value_low() {
        assert_eq!(pair(1.0, -2.0), 0xc000_3f80);
    }
}
