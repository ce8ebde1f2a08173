//! What the kernels' tests share (and other crates' tests, through the `testing` feature):
//! deterministic inputs, the largest difference of two tensors, gradients of a probe-weighted
//! sum, and finite differences.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// `n` smooth, deterministic values in [-amplitude, amplitude]: `sin(i * frequency + seed)`.
pub fn wave(n: usize, seed: f32, frequency: f32, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * frequency + seed).sin() * amplitude)
        .collect()
}

/// The default test input: `wave(n, seed, 0.731, 3.0)`.
pub fn values(n: usize, seed: f32) -> Vec<f32> {
    wave(n, seed, 0.731, 3.0)
}

/// max |a - b| over all elements.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    d.max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// The gradients of `sum(y * probe)`: a loss whose gradient with respect to `y` is `probe`.
pub fn probe_grads(y: &Tensor, probe: &Tensor) -> GradStore {
    (y * probe).unwrap().sum_all().unwrap().backward().unwrap()
}

/// Each named variable's gradient in `got` has the shape of, and is within `tolerance` of,
/// its gradient in `want`.
pub fn assert_grads_close(
    got: &GradStore,
    want: &GradStore,
    vars: &[(&str, &Var)],
    tolerance: f32,
) {
    for (name, v) in vars {
        let (a, r) = (
            got.get(v.as_tensor()).unwrap(),
            want.get(v.as_tensor()).unwrap(),
        );
        assert_eq!(a.dims(), r.dims(), "gradient of {name}");
        let d = max_diff(a, r);
        assert!(d <= tolerance, "gradient of {name}: max |diff| {d}");
    }
}

/// Central differences of `loss` at `x` with step `h` equal `analytic` within
/// `tolerance * (1 + |numeric|)` (f32 arithmetic: a large step and a loose tolerance).
pub fn assert_finite_differences(
    loss: impl Fn(&[f32]) -> f32,
    x: &[f32],
    analytic: &[f32],
    h: f32,
    tolerance: f32,
) {
    for i in 0..x.len() {
        let (mut up, mut down) = (x.to_vec(), x.to_vec());
        up[i] += h;
        down[i] -= h;
        let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
        assert!(
            (numeric - analytic[i]).abs() < tolerance * (1.0 + numeric.abs()),
            "x[{i}]: numeric {numeric} vs analytic {}",
            analytic[i]
        );
    }
}

/// A tensor's values, flattened.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}
