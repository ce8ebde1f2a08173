//! HF Trainer's optimiser: torch AdamW (decoupled weight decay on weight matrices and
//! embeddings only), global-norm gradient clipping and the linear schedule with warm-up.
//! candle-nn's AdamW decays every tensor and has neither clipping nor schedules.
//!
//! Moments live on the host as f32 vectors, updated in the order of torch's fused CPU kernel
//! (scalars in f64, element arithmetic in f32), so a step matches torch within float noise
//! and the state is trivially saved and restored for exact resumption.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use rayon::prelude::*;

/// AdamW hyper-parameters (lr comes from the schedule each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimiser steps taken (torch's `step`, the bias-correction exponent).
    pub steps: u64,
    pub moments: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of every parameter in `params` with its gradient in `grads` (same names).
    /// `decays(name)` says whether weight decay applies.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Vec<f32>>,
        lr: f64,
        decays: impl Fn(&str) -> bool,
    ) -> candle_core::Result<()> {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (lr / bias1) as f32;
        let b2 = c.beta2 as f32;
        let (one_minus_b1, one_minus_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        let (bias2_sqrt, eps) = (bias2_sqrt as f32, c.eps as f32);
        for (name, var) in params {
            let grad = grads
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))?;
            let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let moments = self.moments.entry(name.clone()).or_insert_with(|| Moments {
                m: vec![0.0; p.len()],
                v: vec![0.0; p.len()],
            });
            let decay = if decays(name) {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            p.par_iter_mut()
                .zip(moments.m.par_iter_mut())
                .zip(moments.v.par_iter_mut())
                .zip(grad.par_iter())
                .for_each(|(((p, m), v), &g)| {
                    *p *= decay;
                    // torch: exp_avg.lerp_(grad, 1 - beta1)
                    *m += one_minus_b1 * (g - *m);
                    *v = *v * b2 + one_minus_b2 * g * g;
                    let denom = v.sqrt() / bias2_sqrt + eps;
                    *p -= step_size * (*m / denom);
                });
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// Global L2 norm of all gradients (before clipping), accumulated in f64.
pub fn global_norm(grads: &BTreeMap<String, Vec<f32>>) -> f64 {
    grads
        .values()
        .map(|g| g.par_iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// torch `clip_grad_norm_`: scales every gradient by `max_norm / (norm + 1e-6)` when that is
/// below 1. Returns the norm before clipping. `max_norm <= 0` disables clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Vec<f32>>, max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let coef = coef as f32;
            for g in grads.values_mut() {
                g.par_iter_mut().for_each(|x| *x *= coef);
            }
        }
    }
    norm
}

/// HF `get_linear_schedule_with_warmup`: linear warm-up from 0, then linear decay to 0 at
/// `total_steps`. `lr(step)` is the rate used by optimizer step `step` (0-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LinearSchedule {
    /// Warm-up: explicit steps win over the ratio (HF: `ceil(total * ratio)`).
    pub fn new(base_lr: f64, total_steps: usize, warmup_steps: usize, warmup_ratio: f64) -> Self {
        let warmup_steps = if warmup_steps > 0 {
            warmup_steps
        } else {
            (total_steps as f64 * warmup_ratio).ceil() as usize
        };
        LinearSchedule {
            base_lr,
            warmup_steps,
            total_steps,
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let remaining = self.total_steps.saturating_sub(step) as f64;
            (remaining / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_matches_hf_linear_with_warmup() {
        let s = LinearSchedule::new(2e-5, 3, 0, 0.0);
        let lrs: Vec<f64> = (0..4).map(|t| s.lr(t)).collect();
        let want = [2e-5, 2e-5 * 2.0 / 3.0, 2e-5 / 3.0, 0.0];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        let w = LinearSchedule::new(1.0, 10, 0, 0.25); // ceil(2.5) = 3 warm-up steps
        assert_eq!(w.warmup_steps, 3);
        assert_eq!(w.lr(0), 0.0);
        assert!((w.lr(1) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(w.lr(3), 1.0);
        assert!((w.lr(6) - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_max_norm_and_reports_the_raw_norm() {
        let mut g = BTreeMap::from([("a".to_string(), vec![3.0f32]), ("b".into(), vec![4.0])]);
        let norm = clip_grad_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
        let mut small = BTreeMap::from([("a".to_string(), vec![0.3f32])]);
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small["a"], vec![0.3], "below the limit: untouched");
    }

    #[test]
    fn first_adamw_step_moves_by_lr_times_sign_and_decays_only_weights() {
        let dev = Device::Cpu;
        let params = BTreeMap::from([
            (
                "x.weight".to_string(),
                Var::new(&[1.0f32, -1.0, 0.5], &dev).unwrap(),
            ),
            ("x.bias".to_string(), Var::new(&[1.0f32], &dev).unwrap()),
        ]);
        let grads = BTreeMap::from([
            ("x.weight".to_string(), vec![0.5f32, -2.0, 0.0]),
            ("x.bias".to_string(), vec![1.0f32]),
        ]);
        let mut opt = AdamW::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        });
        opt.step(&params, &grads, 0.01, |n| n.ends_with(".weight"))
            .unwrap();
        let w: Vec<f32> = params["x.weight"].as_tensor().to_vec1().unwrap();
        let b: Vec<f32> = params["x.bias"].as_tensor().to_vec1().unwrap();
        let decay = 1.0 - 0.01 * 0.1;
        let want = [1.0 * decay - 0.01, -1.0 * decay + 0.01, 0.5 * decay];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        assert!((b[0] - 0.99).abs() < 1e-6, "bias not decayed: {b:?}");
        assert_eq!(opt.steps, 1);
    }
}
