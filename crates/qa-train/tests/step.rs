//! Optimizer-step parity with torch (`scripts/make_train_fixtures.sh`), through the step the
//! trainer runs (`Learner::step`): the oracle's seeded QA checkpoint (`make model` + the
//! committed seed-0 head), the first 8 tiny train features padded to 384, dropout off, clip
//! 1.0, AdamW as HF Trainer builds it, two steps on the same batch (lr 2e-5 then 1e-5). Also
//! guards the LayerNorm trap (every tensor must move), and gradient accumulation: 2 x 8
//! features step as one batch of 16.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use qa_model::schema::split_qkv;
mod common;
use common::max_abs_diff;

use qa_model::testing::fixture;
use qa_model::RunPlan;
use qa_train::gather_flat;
use qa_train::step::Learner;
use squad_core::Feature;

fn seeded_learner(accumulation: usize) -> Learner {
    common::seeded_learner(&RunPlan::cpu_train(), accumulation)
}

fn tiny_features(n: usize) -> Vec<Feature> {
    let path = fixture("qa-features", "tiny.train.ref.parquet");
    let feats = qa_features::parity::read_reference(&path, n).unwrap();
    assert_eq!(feats.len(), n);
    feats
}

/// Every parameter under its checkpoint (HF) name, copied: the reference's names.
fn snapshot(learner: &Learner) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (name, v) in &learner.params.vars {
        for (part, t) in split_qkv(name, &v.as_tensor().copy().unwrap()).unwrap() {
            out.insert(part, t);
        }
    }
    out
}

/// The start/end bias: its gradient is a sum over positions of softmax minus one-hot, exactly
/// 0 in real arithmetic, so both sides feed AdamW rounding noise (~1e-9) that it normalises
/// to steps of up to lr in either direction. It is checked against that bound, not 1e-5.
const GRADIENT_IS_ROUNDING_NOISE: &str = "qa_outputs.bias";

#[test]
fn two_adamw_steps_match_torch_and_move_every_tensor() {
    let mut learner = seeded_learner(1);
    let feats = tiny_features(8);
    let batch: Vec<&Feature> = feats.iter().collect();
    let reference_path = fixture("qa-train", "adamw2.ref.safetensors");
    let reference = candle_core::safetensors::load(&reference_path, &Device::Cpu).unwrap();
    let info: serde_json::Value = {
        let bytes = std::fs::read(&reference_path).unwrap();
        let (_, meta) = safetensors_metadata(&bytes);
        serde_json::from_str(&meta["info"]).unwrap()
    };

    let before = snapshot(&learner);
    for (step, lr) in [(1usize, 2e-5), (2, 1e-5)] {
        let outcome = learner
            .step(step - 1, std::slice::from_ref(&batch), lr)
            .unwrap();
        let (loss, norm) = (
            outcome.loss.value().unwrap(),
            outcome.grad_norm.value().unwrap(),
        );
        assert_eq!(outcome.features, 8);
        let want_loss = info["losses"][step - 1].as_f64().unwrap();
        let want_norm = info["grad_norms"][step - 1].as_f64().unwrap();
        assert!(
            (loss - want_loss).abs() / want_loss < 1e-4,
            "step {step}: loss {loss} vs {want_loss}"
        );
        assert!(
            (norm - want_norm).abs() / want_norm < 1e-4,
            "step {step}: grad norm {norm} vs {want_norm}"
        );
        let now = snapshot(&learner);
        if step == 1 {
            // Every trainable tensor changed (LayerNorm weights included: the fused candle-nn
            // LayerNorm has no backward and would leave everything below it frozen).
            let unchanged: Vec<&String> = before
                .iter()
                .filter(|(name, t)| max_abs_diff(&now[*name], t) == 0.0)
                .map(|(n, _)| n)
                .collect();
            assert!(
                unchanged.is_empty(),
                "tensors that did not move: {unchanged:?}"
            );
            assert_eq!(before.len(), 103, "all of BertForQuestionAnswering");
        }
        compare_with_reference(&now, &reference, step);
    }
}

/// Sampled weights after `step` equal torch's within 1e-5 (the rounding-noise bias within
/// Adam's step bound).
fn compare_with_reference(
    now: &BTreeMap<String, Tensor>,
    reference: &std::collections::HashMap<String, Tensor>,
    step: usize,
) {
    let mut worst = (0f32, String::new());
    let mut compared = 0;
    for (name, t) in now {
        let idx: Vec<usize> = reference[&format!("{name}/idx")]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let want: Vec<f32> = reference[&format!("{name}/step{step}")].to_vec1().unwrap();
        let got = gather_flat(t, &idx).unwrap();
        if name == GRADIENT_IS_ROUNDING_NOISE {
            // Adam scales each side's noise to a step of up to lr: bounded, not equal.
            let bound = 2.0 * 3e-5 * 1.01;
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= bound, "{name}: {g} vs {w}");
            }
            continue;
        }
        for (g, w) in got.iter().zip(&want) {
            let d = (g - w).abs();
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
        compared += idx.len();
    }
    eprintln!(
        "step {step}: {compared} weights compared, max |diff| {:e} ({})",
        worst.0, worst.1
    );
    assert!(compared > 90_000);
    assert!(
        worst.0 < 1e-5,
        "step {step}: {} differs by {}",
        worst.1,
        worst.0
    );
}

/// Gradient accumulation: two micro-batches of 8 (each loss divided by 2) take the same two
/// steps as one batch of the 16 (dropout off; padded to 384, so the batches' arithmetic
/// differs only in summation order).
#[test]
fn accumulating_two_batches_of_8_steps_as_one_batch_of_16() {
    let feats = tiny_features(16);
    let all: Vec<&Feature> = feats.iter().collect();
    let (mut one, mut two) = (seeded_learner(1), seeded_learner(2));
    for (step, lr) in [(0, 2e-5), (1, 1e-5)] {
        let a = one.step(step, std::slice::from_ref(&all), lr).unwrap();
        let b = two
            .step(step, &[all[..8].to_vec(), all[8..].to_vec()], lr)
            .unwrap();
        let (la, lb) = (a.loss.value().unwrap(), b.loss.value().unwrap());
        let (na, nb) = (a.grad_norm.value().unwrap(), b.grad_norm.value().unwrap());
        assert!(
            (la - lb).abs() / la < 1e-5,
            "step {step}: loss {la} vs {lb}"
        );
        assert!(
            (na - nb).abs() / na < 1e-5,
            "step {step}: grad norm {na} vs {nb}"
        );
        assert_eq!((a.features, b.features), (16, 16));
    }
    let (wa, wb) = (snapshot(&one), snapshot(&two));
    let mut worst = (0f32, String::new());
    for (name, t) in &wa {
        let d = max_abs_diff(t, &wb[name]);
        if name == GRADIENT_IS_ROUNDING_NOISE {
            assert!(
                d <= 2.0 * 3e-5 * 1.01,
                "{name}: {d} beyond Adam's step bound"
            );
        } else if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    eprintln!(
        "accumulation: max |weight diff| {:e} ({})",
        worst.0, worst.1
    );
    // Adam moves a weight by at most ~lr a step (3e-5 over both), and for a tiny gradient
    // turns summation-order noise into a sizeable share of that; a wrong batch or a missed
    // micro-batch moves most weights by a whole step. A fifth of the bound tells them apart.
    assert!(worst.0 < 0.2 * 3e-5, "{} differs by {}", worst.1, worst.0);
}

/// The JSON header of a safetensors file: (tensor names, `__metadata__`).
fn safetensors_metadata(bytes: &[u8]) -> (Vec<String>, BTreeMap<String, String>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header
        .get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    (header.keys().cloned().collect(), meta)
}
