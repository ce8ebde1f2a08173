//! What qa-train's test files share (each uses some of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use candle_core::{Device, Tensor};
use qa_features::{make_features_file, QaTokenizer, Settings};
use qa_model::testing::seeded_checkpoint;
use qa_model::RunPlan;
use qa_train::optim::{AdamW, AdamWConfig};
use qa_train::step::Learner;
use squad_core::features::FeatureSplit;
use squad_ingest::{read_squad, write_outputs, IngestOptions, Selection};

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
        comm: Rc::new(qa_dist::Solo),
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

pub const BIN: &str = env!("CARGO_BIN_EXE_qa-train");

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// tiny.json examples plus train and eval features (MiniLM's tokenizer).
pub struct Inputs {
    pub examples: PathBuf,
    pub train: PathBuf,
    pub eval: PathBuf,
    pub model: PathBuf,
}

pub fn inputs(dir: &Path) -> Inputs {
    let tokenizer_dir = root().join("data/models/all-MiniLM-L6-v2");
    assert!(
        tokenizer_dir.join("tokenizer.json").exists(),
        "run `make model`"
    );
    let json = root().join("crates/qa-features/tests/fixtures/tiny.json");
    let ingested = read_squad(&json, &IngestOptions::default()).unwrap();
    let examples = dir.join("tiny.examples.parquet");
    write_outputs(&examples, &ingested, &Selection::default()).unwrap();
    let tok = QaTokenizer::load(&tokenizer_dir).unwrap();
    let settings = Settings {
        max_length: 384,
        stride: 128,
    };
    let (train, eval) = (
        dir.join("tiny.train.parquet"),
        dir.join("tiny.eval.parquet"),
    );
    make_features_file(&examples, &tok, settings, FeatureSplit::Train, None, &train).unwrap();
    make_features_file(&examples, &tok, settings, FeatureSplit::Eval, None, &eval).unwrap();
    // A small BERT (2 layers, hidden 32) with MiniLM's vocab, initialised by --random-init.
    let model = dir.join("small-bert");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512,
            "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}"#,
    )
    .unwrap();
    Inputs {
        examples,
        train,
        eval,
        model,
    }
}

pub fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "qa-train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn steps_logged(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.get("loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}
