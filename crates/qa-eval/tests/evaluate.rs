//! `qa-eval` end to end on the tiny file with the base model (`make model`; untrained head):
//! every output file, predictions for every example, and the input checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use qa_features::{build_features, QaTokenizer, Settings};
use squad_core::features::{self, FeatureSplit};
use squad_core::parquet_io::Metadata;
use squad_ingest::{read_squad, write_outputs, IngestOptions, Selection};

const BIN: &str = env!("CARGO_BIN_EXE_qa-eval");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> PathBuf {
    let dir = root().join("data/models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "run `make model`");
    dir
}

/// Examples and features files for tiny.json, made the way the pipeline makes them.
fn inputs(dir: &Path, split: FeatureSplit) -> (PathBuf, PathBuf) {
    let json = root().join("crates/qa-features/tests/fixtures/tiny.json");
    let ingested = read_squad(&json, &IngestOptions::default()).unwrap();
    let examples = dir.join("tiny.examples.parquet");
    write_outputs(&examples, &ingested, &Selection::default()).unwrap();
    let tok = QaTokenizer::load(&model()).unwrap();
    let settings = Settings {
        max_length: 384,
        stride: 128,
    };
    let (feats, _) = build_features(&tok, &ingested.examples, settings, split).unwrap();
    let path = dir.join(format!("tiny.{}.features.parquet", split.as_str()));
    let mut md = Metadata::new();
    md.insert(features::meta::TOKENIZER_SHA256.into(), tok.sha256.clone());
    md.insert(
        features::meta::EXAMPLES_SHA256.into(),
        squad_core::fsutil::sha256_file(&examples).unwrap(),
    );
    features::write(&path, &feats, split, &md).unwrap();
    (examples, path)
}

fn eval(examples: &Path, feats: &Path, out: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("--model")
        .arg(model())
        .arg("--features")
        .arg(feats)
        .arg("--examples")
        .arg(examples)
        .arg("--output")
        .arg(out)
        .arg("--quiet")
        .output()
        .unwrap()
}

#[test]
fn writes_predictions_nbest_logits_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (examples, feats) = inputs(dir.path(), FeatureSplit::Eval);
    let out = dir.path().join("eval");
    let res = eval(&examples, &feats, &out);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let preds: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("predictions.json")).unwrap()).unwrap();
    assert_eq!(preds.len(), 12);
    assert!(preds.values().all(|v| v.is_string()));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["features"], 18);
    assert!(metrics["metrics"]["f1"].as_f64().is_some());
    assert!(
        out.join("nbest_predictions.json").exists() && out.join("eval_logits.parquet").exists()
    );
}

#[test]
fn rejects_train_features_and_mismatched_examples() {
    let dir = tempfile::tempdir().unwrap();
    let (examples, train) = inputs(dir.path(), FeatureSplit::Train);
    let out = dir.path().join("eval");
    let res = eval(&examples, &train, &out);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("--split eval"));
    let (_, eval_feats) = inputs(dir.path(), FeatureSplit::Eval);
    let other = dir.path().join("other.examples.parquet");
    let ingested = read_squad(
        &root().join("crates/qa-features/tests/fixtures/tiny_v2.json"),
        &IngestOptions::default(),
    )
    .unwrap();
    write_outputs(&other, &ingested, &Selection::default()).unwrap();
    let res = eval(&other, &eval_feats, &out);
    assert_eq!(res.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("another examples file"),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(!out.join("predictions.json").exists());
}
