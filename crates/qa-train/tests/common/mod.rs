//! What qa-train's test files share.

use candle_core::{Device, Tensor};
use qa_model::testing::seeded_checkpoint;
use qa_model::RunPlan;
use qa_train::optim::{AdamW, AdamWConfig};
use qa_train::step::Learner;

/// The trainer's step over the oracle's seeded checkpoint running as `plan` says, as HF
/// Trainer's settings build it (AdamW 0.9/0.999/1e-8, weight decay 0.01, clip 1.0, padded to
/// 384, dropout off).
pub fn seeded_learner(plan: &RunPlan, accumulation: usize) -> Learner {
    let ck = seeded_checkpoint(plan);
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let optimizer = AdamW::new(adam, &ck.params, plan);
    Learner {
        model: ck.model,
        params: ck.params,
        optimizer,
        dropout: None,
        pad_to: Some(384),
        accumulation,
        max_grad_norm: 1.0,
    }
}

/// The largest |a - b| over all elements, on whichever devices the two live.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let on_cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    (on_cpu(a) - on_cpu(b))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
