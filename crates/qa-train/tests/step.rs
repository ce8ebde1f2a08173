//! Optimizer-step parity with torch (`scripts/make_train_fixtures.sh`): the oracle's seeded
//! QA checkpoint (`make model` + the committed seed-0 head), the first 8 tiny train features
//! padded to 384, dropout off, clip 1.0, AdamW as HF Trainer builds it, two steps on the same
//! batch (lr 2e-5 then 1e-5). Also guards the LayerNorm trap: every tensor must move.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use qa_model::params::decays;
use qa_model::{BertForQuestionAnswering, Checkpoint};
use qa_train::optim::{AdamW, AdamWConfig};
use qa_train::{gather_flat, single_step};
use squad_core::Feature;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seeded_checkpoint() -> (Checkpoint, BertForQuestionAnswering) {
    let dir = root().join("data/models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "run `make model`");
    let mut ck = Checkpoint::load(dir.to_str().unwrap(), 1, &Device::Cpu).unwrap();
    ck.params
        .overwrite_from(
            &root().join("crates/qa-model/tests/fixtures/seed0_qa_head.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
    let model = BertForQuestionAnswering::new(ck.config.clone(), &ck.params).unwrap();
    (ck, model)
}

fn hf_adamw() -> AdamW {
    AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    })
}

fn snapshot(ck: &Checkpoint) -> BTreeMap<String, Tensor> {
    ck.params
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect()
}

/// The start/end bias: its gradient is a sum over positions of softmax minus one-hot, exactly
/// 0 in real arithmetic, so both sides feed AdamW rounding noise (~1e-9) that it normalises
/// to steps of up to lr in either direction. It is checked against that bound, not 1e-5.
const GRADIENT_IS_ROUNDING_NOISE: &str = "qa_outputs.bias";

#[test]
fn two_adamw_steps_match_torch_and_move_every_tensor() {
    let (ck, model) = seeded_checkpoint();
    let feats: Vec<Feature> = qa_features::parity::read_reference(
        &root().join("crates/qa-features/tests/fixtures/tiny.train.ref.parquet"),
        8,
    )
    .unwrap();
    let batch: Vec<&Feature> = feats.iter().collect();
    let reference_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adamw2.ref.safetensors");
    let reference = candle_core::safetensors::load(&reference_path, &Device::Cpu).unwrap();
    let info: serde_json::Value = {
        let bytes = std::fs::read(&reference_path).unwrap();
        let (_, meta) = safetensors_metadata(&bytes);
        serde_json::from_str(&meta["info"]).unwrap()
    };

    let before = snapshot(&ck);
    let mut opt = hf_adamw();
    for (step, lr) in [(1usize, 2e-5), (2, 1e-5)] {
        let (loss, norm) =
            single_step(&model, &ck.params, &mut opt, &batch, Some(384), lr, 1.0).unwrap();
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

        if step == 1 {
            // Every trainable tensor changed (LayerNorm weights included: the fused candle-nn
            // LayerNorm has no backward and would leave everything below it frozen).
            let unchanged: Vec<&String> = before
                .iter()
                .filter(|(name, t)| {
                    let now = ck.params.vars[*name].as_tensor();
                    let diff = (now - *t).unwrap().abs().unwrap().max_all().unwrap();
                    diff.to_scalar::<f32>().unwrap() == 0.0
                })
                .map(|(n, _)| n)
                .collect();
            assert!(
                unchanged.is_empty(),
                "tensors that did not move: {unchanged:?}"
            );
            assert_eq!(before.len(), 103, "all of BertForQuestionAnswering");
        }

        let mut worst = (0f32, String::new());
        let mut compared = 0;
        for (name, var) in &ck.params.vars {
            let idx: Vec<usize> = reference[&format!("{name}/idx")]
                .to_dtype(DType::I64)
                .unwrap()
                .to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|i| i as usize)
                .collect();
            let want: Vec<f32> = reference[&format!("{name}/step{step}")].to_vec1().unwrap();
            let got = gather_flat(var.as_tensor(), &idx).unwrap();
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
    assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
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
