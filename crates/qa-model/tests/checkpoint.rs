//! Saving and loading checkpoints: HF layout, both naming schemes, ignored tensors, a fresh
//! head for a base encoder, and clear errors for broken checkpoints.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use qa_model::checkpoint::{save, SafetensorsError, VerifyError};
use qa_model::{make_batch, BertConfig, Checkpoint, Params, RunPlan};
use squad_core::Feature;

fn feature(len: usize) -> Feature {
    Feature {
        example_id: "x".into(),
        example_index: 0,
        window_index: 0,
        input_ids: (0..len as i32).map(|i| (i * 7) % 50 + 1).collect(),
        token_type_ids: (0..len).map(|i| i32::from(i > 3)).collect(),
        labels: None,
        offsets: None,
    }
}

fn logits(ck: &Checkpoint) -> Vec<Vec<f32>> {
    let (a, b) = (feature(10), feature(6));
    let batch = make_batch(&[&a, &b], None, &Device::Cpu).unwrap();
    ck.model.forward(&batch, None).unwrap().0.to_vec2().unwrap()
}

fn tiny_checkpoint(dir: &std::path::Path) -> Params {
    let config = BertConfig::tiny(60);
    let params = Params::random(&config, 3, &Device::Cpu).unwrap();
    save(dir, &config, &params, None).unwrap();
    params
}

#[test]
fn save_then_load_gives_the_same_tensors_and_hf_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let params = tiny_checkpoint(&dir);
    let ck = Checkpoint::load(dir.to_str().unwrap(), 0, &RunPlan::cpu_inference()).unwrap();
    assert!(!ck.report.fresh_head);
    for (name, var) in &params.vars {
        let back = &ck.params.vars[name];
        assert_eq!(
            var.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            back.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            "{name}"
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForQuestionAnswering");
    let names: Vec<String> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("bert.") || n.starts_with("qa_outputs.")),
        "{names:?}"
    );
    assert!(!names
        .iter()
        .any(|n| n.contains("pooler") || n.contains("position_ids")));
    // Saving again over an existing checkpoint replaces it.
    save(&dir, &ck.config, &ck.params, None).unwrap();
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().count() == 1,
        "no temp dirs left"
    );
}

#[test]
fn unprefixed_legacy_names_and_ignored_tensors_load_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    tiny_checkpoint(&dir);
    let reference = Checkpoint::load(dir.to_str().unwrap(), 0, &RunPlan::cpu_inference()).unwrap();
    // Rewrite as a sentence-transformers/old-BERT style file: no `bert.` prefix, gamma/beta,
    // plus a pooler and position_ids, which are ignored.
    let mut renamed: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in reference.params.checkpoint_tensors().unwrap() {
        let n = name
            .strip_prefix("bert.")
            .unwrap_or(&name)
            .replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta");
        renamed.insert(n, t);
    }
    renamed.insert(
        "pooler.dense.weight".into(),
        Tensor::zeros((16, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    renamed.insert(
        "embeddings.position_ids".into(),
        Tensor::arange(0i64, 64, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&renamed, dir.join("model.safetensors")).unwrap();
    let ck = Checkpoint::load(dir.to_str().unwrap(), 0, &RunPlan::cpu_inference()).unwrap();
    assert!(
        ck.report.unexpected.is_empty(),
        "{:?}",
        ck.report.unexpected
    );
    assert_eq!(logits(&ck), logits(&reference));
}

#[test]
fn a_base_encoder_gets_a_seeded_untrained_head() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    tiny_checkpoint(&dir);
    let mut t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    t.retain(|name, _| !name.starts_with("qa_outputs"));
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let a = Checkpoint::load(dir.to_str().unwrap(), 5, &RunPlan::cpu_inference()).unwrap();
    let b = Checkpoint::load(dir.to_str().unwrap(), 5, &RunPlan::cpu_inference()).unwrap();
    let c = Checkpoint::load(dir.to_str().unwrap(), 6, &RunPlan::cpu_inference()).unwrap();
    assert!(a.report.fresh_head);
    assert_eq!(logits(&a), logits(&b));
    assert_ne!(logits(&a), logits(&c));
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    tiny_checkpoint(&dir);
    let load = |d: &std::path::Path| {
        Checkpoint::load(d.to_str().unwrap(), 0, &RunPlan::cpu_inference())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };

    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let err = load(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("cannot read weights"),
        "{err}"
    );
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();

    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"hidden_size\": 16", "\"hidden_size\": 32"),
    )
    .unwrap();
    let err = load(&dir);
    assert!(err.contains("has shape"), "{err}");
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    let err = load(&dir);
    assert!(
        err.contains("config.json") && err.contains("bad config.json"),
        "{err}"
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load(&dir);
    assert!(err.contains("no config.json"), "{err}");

    let err = load(&tmp.path().join("./missing-dir"));
    assert!(err.contains("no such directory"), "{err}");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = load(std::path::Path::new("no-such-user/no-such-model"));
    assert!(err.contains("make model"), "{err}");
}

/// Hub checkpoints are often stored in f16 or bf16: they load as f32 (the values the half
/// type holds, exactly), and the model runs as from an f32 copy of them.
#[test]
fn half_precision_checkpoints_load_as_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let params = tiny_checkpoint(&dir);
    for dtype in [candle_core::DType::F16, candle_core::DType::BF16] {
        let half: HashMap<String, Tensor> = params
            .checkpoint_tensors()
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, dir.join("model.safetensors")).unwrap();
        let ck = Checkpoint::load(dir.to_str().unwrap(), 0, &RunPlan::cpu_inference()).unwrap();
        for (name, var) in ck.params.checkpoint_tensors().unwrap() {
            assert_eq!(var.dtype(), candle_core::DType::F32, "{name}");
            let want: Vec<f32> = half[&name]
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{name} ({dtype:?})");
        }
        assert_eq!(logits(&ck).len(), 2);
    }
}

/// A saved checkpoint records its files' sha256; `verify` accepts it as saved and names the
/// file when one is cut short or its tensors do not fit its config.
#[test]
fn verify_finds_damaged_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    tiny_checkpoint(&dir);
    let sums = std::fs::read_to_string(dir.join(qa_model::checkpoint::CHECKSUMS_FILE)).unwrap();
    assert!(sums.contains("  model.safetensors\n") && sums.contains("  config.json\n"));
    qa_model::checkpoint::verify(&dir).unwrap();

    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1]).unwrap();
    let err = qa_model::checkpoint::verify(&dir).unwrap_err();
    assert!(
        matches!(&err, VerifyError::ChecksumMismatch { file } if file == "model.safetensors"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("model.safetensors") && text.contains("sha256"),
        "{text}"
    );
    // Without recorded sums (older checkpoints) the header and shapes are still checked.
    std::fs::remove_file(dir.join(qa_model::checkpoint::CHECKSUMS_FILE)).unwrap();
    let err = qa_model::checkpoint::verify(&dir).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Weights(SafetensorsError::BadHeader { file, .. }) if file == "model.safetensors"),
        "{err:?}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::write(&weights, &bytes).unwrap();
    qa_model::checkpoint::verify(&dir).unwrap();
}
