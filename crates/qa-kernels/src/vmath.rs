//! Row kernels of the fused CPU ops with exp and erf the compiler can vectorise. glibc's
//! `expf` and libm's `erff` are scalar calls, and they were a fifth of a training step (the
//! attention softmax, GELU forward and backward). Here exp is Cephes' polynomial (within 2 ulp
//! of `expf`) and erf the Abramowitz–Stegun 7.1.26 form torch's vectorised CPU GELU also uses
//! (absolute error < 1.5e-7, < 4e-7 in f32) above |x| = 0.5, its series (< 1e-7) below. Loops
//! run over 16-wide accumulators with fused multiply-adds, compiled for AVX-512 and for
//! AVX2 + FMA besides the generic build, chosen at run time.

/// The instruction sets a kernel below is compiled for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Avx512,
    Avx2Fma,
    Generic,
}

impl Tier {
    /// The best tier this CPU runs (tests may pin a lower one: `tests::pinned`).
    fn of_this_cpu() -> Tier {
        #[cfg(test)]
        if let Some(tier) = tests::PINNED.get() {
            return tier;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Tier::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Tier::Avx2Fma;
            }
        }
        Tier::Generic
    }
}

/// Compiles `$body` three times, generic, with AVX2 + FMA and with AVX-512F, and picks one per
/// call (`Tier`). Bodies use `f32::mul_add` (one rounding, so every tier computes the same
/// values): one instruction where the CPU has FMA; in the generic tier a libm call, slow but
/// only on x86-64 CPUs from before 2013.
macro_rules! dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
            match Tier::of_this_cpu() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX-512F (`Tier::of_this_cpu`).
                Tier::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX2 and FMA (`Tier::of_this_cpu`).
                Tier::Avx2Fma => unsafe { avx2($($arg),*) },
                _ => generic($($arg),*),
            }
        }
    };
}

const LANES: usize = 16;

/// e^x; exactly 0 below -87.33 (where f32 `expf` underflows to subnormals or 0), saturating
/// at e^88 above (the kernels take it of values <= 0).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let c = x.clamp(-87.336_54, 88.0);
    let n = c.mul_add(LOG2E, 0.5).floor();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, c));
    let mut p = 1.987_569_1e-4f32;
    for k in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p.mul_add(r, k);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    // SAFETY: n is an integer in [-126, 127] (c is clamped), so the conversion is exact; a
    // checked `as` would not vectorise.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let two_n = f32::from_bits(((n + 127) as u32) << 23);
    if x < -87.336_54 {
        0.0
    } else {
        y * two_n
    }
}

/// erf(x): its Taylor series below |x| = 0.5 (where the A&S form loses digits to
/// cancellation in f32), Abramowitz & Stegun 7.1.26 above.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    for k in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
        p = p.mul_add(t, k);
    }
    let far = (-p * t).mul_add(exp(-a * a), 1.0).copysign(x);
    // 2/sqrt(pi) * (x - x^3/3 + x^5/10 - x^7/42 + x^9/216 - x^11/1320 + x^13/9360)
    let x2 = x * x;
    let mut q = 1.0f32 / 9360.0;
    for k in [
        -1.0 / 1320.0,
        1.0 / 216.0,
        -1.0 / 42.0,
        1.0 / 10.0,
        -1.0 / 3.0,
        1.0,
    ] {
        q = q.mul_add(x2, k);
    }
    let near = std::f32::consts::FRAC_2_SQRT_PI * x * q;
    if a < 0.5 {
        near
    } else {
        far
    }
}

dispatch! {
    /// `row = softmax(row * scale + mask)` in place (`row * scale + mask` rounded once).
    fn softmax_row(row: &mut [f32], mask: &[f32], scale: f32) {
        // The larger of two lanes without NaN checks (`f32::max`'s cost 3x the instructions).
        let larger = |a: f32, b: f32| if b > a { b } else { a };
        let mut top = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for (c, m) in (&mut chunks).zip(mask.chunks_exact(LANES)) {
            for ((t, s), &m) in top.iter_mut().zip(c).zip(m) {
                *s = s.mul_add(scale, m);
                *t = larger(*t, *s);
            }
        }
        let whole = row.len() - row.len() % LANES;
        for (s, &m) in row[whole..].iter_mut().zip(&mask[whole..]) {
            *s = s.mul_add(scale, m);
            top[0] = larger(top[0], *s);
        }
        let top = top.into_iter().fold(f32::NEG_INFINITY, larger);
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (a, s) in acc.iter_mut().zip(c) {
                *s = exp(*s - top);
                *a += *s;
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for s in chunks.into_remainder() {
            *s = exp(*s - top);
            sum += *s;
        }
        let inverse = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inverse);
    }
}

/// The dot product of `a` and `b` over 16-wide accumulators.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

dispatch! {
    /// The softmax's backward for one row of probabilities `p` (of `softmax(s * scale + m)`):
    /// `dp` (the gradient of `p`) becomes that of `s`, `p * (dp - <p, dp>) * scale`.
    fn softmax_backward_row(dp: &mut [f32], p: &[f32], scale: f32) {
        let d = dot(p, dp);
        for (x, &y) in dp.iter_mut().zip(p) {
            *x = y * (*x - d) * scale;
        }
    }
}

dispatch! {
    /// `x *= m`, element by element (a dropout mask's multipliers).
    fn mul_in_place(x: &mut [f32], m: &[f32]) {
        x.iter_mut().zip(m).for_each(|(x, &m)| *x *= m);
    }
}

dispatch! {
    /// `y = x * m`, element by element.
    fn mul(x: &[f32], m: &[f32], y: &mut [f32]) {
        for ((y, &x), &m) in y.iter_mut().zip(x).zip(m) {
            *y = x * m;
        }
    }
}

/// f64 lanes of the LayerNorm row sums (one zmm register).
const F64_LANES: usize = 8;

/// The sum of `f(i)` over `0..n` on `F64_LANES` f64 accumulators (their lanes added in order).
#[inline(always)]
fn sum_f64(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0f64; F64_LANES];
    let whole = n - n % F64_LANES;
    for i in (0..whole).step_by(F64_LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    let tail: f64 = (whole..n).map(&f).sum();
    acc.iter().sum::<f64>() + tail
}

dispatch! {
    /// Mean and `1 / sqrt(var + eps)` of a row (biased variance, as torch), accumulated in f64.
    fn row_stats(row: &[f32], eps: f64) -> (f32, f32) {
        let n = row.len() as f64;
        let mean = sum_f64(row.len(), |i| f64::from(row[i])) / n;
        let var = sum_f64(row.len(), |i| (f64::from(row[i]) - mean).powi(2)) / n;
        (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
    }
}

dispatch! {
    /// The two row means of LayerNorm's input gradient, in f64: `mean(g * w)` and
    /// `mean(g * w * normed)` (`normed` the row's `(x - mean) / std`).
    fn layer_norm_grad_means(g: &[f32], w: &[f32], normed: &[f32]) -> (f32, f32) {
        let n = g.len();
        let a = sum_f64(n, |j| f64::from(g[j] * w[j]));
        let b = sum_f64(n, |j| f64::from(g[j] * w[j]) * f64::from(normed[j]));
        ((a / n as f64) as f32, (b / n as f64) as f32)
    }
}

/// GELU (erf form): `x * Φ(x)`, Φ the standard normal CDF.
#[inline(always)]
fn gelu_of(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

dispatch! {
    /// `y = x * Φ(x)`, Φ the standard normal CDF (GELU, erf form).
    fn gelu(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = gelu_of(v);
        }
    }
}

dispatch! {
    /// `x = x * Φ(x)` in place.
    fn gelu_in_place(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = gelu_of(*v));
    }
}

dispatch! {
    /// `dx = g * (Φ(x) + x φ(x))`, the GELU derivative applied to the incoming gradient.
    fn gelu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
        // 1 / sqrt(2 pi)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for ((o, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
            let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
            *o = gv * (cdf + v * pdf);
        }
    }
}

/// The scalars of one AdamW step of one tensor (torch's `_single_tensor_adamw`, the bias
/// corrections folded into `step_size` and `bias2_sqrt`).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// `1 - lr * weight_decay`, or 1 where the tensor does not decay.
    pub decay: f32,
    /// The gradient's factor from clipping (torch multiplies the gradients by it in place
    /// first: the same f32 product), 1 when not clipped.
    pub grad_scale: f32,
    pub step_size: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub bias2_sqrt: f32,
    pub eps: f32,
}

dispatch! {
    /// One AdamW step in place: parameters `p`, moments `m` and `v`, gradient `g` (times the
    /// clip factor), in torch's
    /// order of operations (IEEE add, multiply, divide and sqrt only: the same bits in every
    /// tier and as one element at a time).
    fn adamw(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamWStep) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = g * s.grad_scale;
            *p *= s.decay;
            // torch: exp_avg.lerp_(grad, 1 - beta1)
            *m += s.one_minus_beta1 * (g - *m);
            *v = *v * s.beta2 + s.one_minus_beta2 * g * g;
            let denom = v.sqrt() / s.bias2_sqrt + s.eps;
            *p -= s.step_size * (*m / denom);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// The tier this test thread's kernels run in, where pinned.
        pub(super) static PINNED: Cell<Option<Tier>> = const { Cell::new(None) };
    }

    /// `f()` with the kernels pinned to `tier`.
    fn pinned<T>(tier: Tier, f: impl FnOnce() -> T) -> T {
        PINNED.set(Some(tier));
        let out = f();
        PINNED.set(None);
        out
    }

    /// Every tier this CPU can run computes the same bits (one rounding per multiply-add
    /// everywhere), on rows with and without a 16-lane tail.
    #[test]
    fn every_tier_computes_the_same_values() {
        let best = Tier::of_this_cpu();
        let tiers = [Tier::Avx512, Tier::Avx2Fma, Tier::Generic];
        let runnable = tiers.iter().skip_while(|&&t| t != best);
        let run = |tier: Tier| {
            pinned(tier, || {
                let x: Vec<f32> = (0..389).map(|i| (i as f32 * 0.731).sin() * 5.0).collect();
                let mask: Vec<f32> = (0..389)
                    .map(|i| if i % 7 == 3 { f32::MIN } else { 0.0 })
                    .collect();
                let mut out = x.clone();
                softmax_row(&mut out, &mask, 0.3);
                let mut y = vec![0f32; x.len()];
                gelu(&x, &mut y);
                out.extend(&y);
                gelu_backward(
                    &x,
                    &mask.iter().map(|m| 1.0 + m.signum()).collect::<Vec<_>>(),
                    &mut y,
                );
                out.extend(&y);
                let mut dp = x.clone();
                softmax_backward_row(&mut dp, &out[..389], 0.7);
                out.extend(&dp);
                let (mut p, mut m, mut v) = (x.clone(), y.clone(), mask.clone());
                v.iter_mut().for_each(|v| *v = v.abs().min(4.0));
                let step = AdamWStep {
                    decay: 0.99,
                    grad_scale: 0.7,
                    step_size: 1e-3,
                    beta2: 0.999,
                    one_minus_beta1: 0.1,
                    one_minus_beta2: 1e-3,
                    bias2_sqrt: 0.3,
                    eps: 1e-8,
                };
                adamw(&mut p, &mut m, &mut v, &dp, &step);
                out.extend(p.iter().chain(&m).chain(&v));
                out.into_iter().map(f32::to_bits).collect::<Vec<_>>()
            })
        };
        let want = run(best);
        for &tier in runnable {
            assert!(run(tier) == want, "{tier:?} differs from {best:?}");
        }
    }

    #[test]
    fn exp_is_within_2_ulp_of_std_and_0_far_below() {
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1.7e-4;
            let (got, want) = (exp(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, std {want}");
        }
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_is_close_to_the_f64_series() {
        for i in -6000..6000 {
            let x = i as f32 * 1e-3;
            let want = series_erf(f64::from(x));
            let err = (f64::from(erf(x)) - want).abs();
            let tolerance = if x.abs() < 0.5 { 1e-7 } else { 4e-7 };
            assert!(err < tolerance, "erf({x}): off by {err:e}");
        }
    }

    /// erf in f64 by its Taylor series (enough terms for |x| < 6 in f64).
    fn series_erf(x: f64) -> f64 {
        if x.abs() > 3.5 {
            return x.signum() * (1.0 - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt()));
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn softmax_row_matches_the_plain_formula() {
        for len in [2usize, 15, 16, 17, 384] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
            let mut mask = vec![0f32; len];
            mask[len / 2] = f32::MIN;
            let mut row = x.clone();
            softmax_row(&mut row, &mask, 0.5);
            let logits: Vec<f32> = x.iter().zip(&mask).map(|(v, m)| v * 0.5 + m).collect();
            let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = logits.iter().map(|v| (v - top).exp()).sum();
            for (j, (&got, v)) in row.iter().zip(&logits).enumerate() {
                let want = (v - top).exp() / sum;
                assert!(
                    (got - want).abs() < 1e-6,
                    "len {len} [{j}]: {got} vs {want}"
                );
            }
            assert_eq!(row[len / 2], 0.0, "masked");
        }
    }

    #[test]
    fn softmax_backward_row_matches_the_plain_formula() {
        for len in [3usize, 16, 37, 384] {
            let p: Vec<f32> = (0..len).map(|i| (i as f32 * 0.21).cos().abs()).collect();
            let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.57).sin()).collect();
            let mut dp = g.clone();
            softmax_backward_row(&mut dp, &p, 0.25);
            let d: f64 = p.iter().zip(&g).map(|(&a, &b)| f64::from(a * b)).sum();
            for j in 0..len {
                let want = f64::from(p[j]) * (f64::from(g[j]) - d) * 0.25;
                assert!((f64::from(dp[j]) - want).abs() < 1e-5, "len {len} [{j}]");
            }
        }
        let (x, m) = ([1f32, 2., 3.], [0f32, 2., 0.5]);
        let mut y = [0f32; 3];
        mul(&x, &m, &mut y);
        let mut z = x;
        mul_in_place(&mut z, &m);
        assert_eq!((y, z), ([0., 4., 1.5], [0., 4., 1.5]));
    }

    #[test]
    fn layer_norm_row_sums_match_plain_f64() {
        for len in [5usize, 8, 29, 384] {
            let x: Vec<f32> = (0..len)
                .map(|i| (i as f32 * 0.43).sin() * 3.0 + 1.0)
                .collect();
            let n = len as f64;
            let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = x
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let (m, r) = row_stats(&x, 1e-12);
            assert_eq!((m, r), (mean as f32, (1.0 / (var + 1e-12).sqrt()) as f32));
            let w: Vec<f32> = (0..len).map(|i| 1.0 + i as f32 * 0.01).collect();
            let (a, b) = layer_norm_grad_means(&x, &w, &x);
            let gw = |j: usize| f64::from(x[j] * w[j]);
            let want_a = (0..len).map(gw).sum::<f64>() / n;
            let want_b = (0..len).map(|j| gw(j) * f64::from(x[j])).sum::<f64>() / n;
            assert_eq!((a, b), (want_a as f32, want_b as f32), "len {len}");
        }
    }

    #[test]
    fn gelu_and_its_derivative() {
        let x: Vec<f32> = (-700..700).map(|i| i as f32 * 1e-2).collect();
        let mut y = vec![0f32; x.len()];
        gelu(&x, &mut y);
        let ones = vec![1f32; x.len()];
        let mut d = vec![0f32; x.len()];
        gelu_backward(&x, &ones, &mut d);
        for (i, &v) in x.iter().enumerate() {
            let phi = |t: f64| 0.5 * (1.0 + series_erf(t / std::f64::consts::SQRT_2));
            let want = f64::from(v) * phi(f64::from(v));
            assert!(
                (f64::from(y[i]) - want).abs() < 1e-6 * (1.0 + want.abs()),
                "gelu({v})"
            );
            let h = 1e-4;
            let (a, b) = (f64::from(v) - h, f64::from(v) + h);
            let numeric = (b * phi(b) - a * phi(a)) / (2.0 * h);
            assert!((f64::from(d[i]) - numeric).abs() < 1e-5, "gelu'({v})");
        }
    }
}
