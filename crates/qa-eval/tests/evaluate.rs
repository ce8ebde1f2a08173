//! `qa-eval` end to end on the tiny file with the base model (`make model`; untrained head):
//! every output file, predictions for every example, and the input checks.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use qa_features::{make_features_file, QaTokenizer, Settings};
use squad_core::features::FeatureSplit;
use squad_ingest::{read_squad, write_outputs, IngestOptions, Selection, Shard};

use common::{fixture, model};

const BIN: &str = env!("CARGO_BIN_EXE_qa-eval");

/// Examples and features files for tiny.json, made the way the pipeline makes them.
fn inputs(dir: &Path, split: FeatureSplit) -> (PathBuf, PathBuf) {
    let json = fixture("qa-features", "tiny.json");
    let ingested = read_squad(&json, &IngestOptions::default()).unwrap();
    let examples = dir.join("tiny.examples.parquet");
    write_outputs(&examples, &ingested, &Selection::default()).unwrap();
    let tok = QaTokenizer::load(&model()).unwrap();
    let settings = Settings {
        max_length: 384,
        stride: 128,
    };
    let path = dir.join(format!("tiny.{}.features.parquet", split.as_str()));
    make_features_file(&examples, &tok, settings, split, None, &path).unwrap();
    (examples, path)
}

fn eval(examples: &Path, feats: &Path, out: &Path) -> std::process::Output {
    eval_with(&model(), examples, feats, out)
}

fn eval_with(model: &Path, examples: &Path, feats: &Path, out: &Path) -> std::process::Output {
    eval_args(model, examples, feats, out, &[])
}

fn eval_args(
    model: &Path,
    examples: &Path,
    feats: &Path,
    out: &Path,
    extra: &[String],
) -> std::process::Output {
    Command::new(BIN)
        .arg("--model")
        .arg(model)
        .arg("--features")
        .arg(feats)
        .arg("--examples")
        .arg(examples)
        .arg("--output")
        .arg(out)
        .arg("--quiet")
        .args(extra)
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
        &fixture("qa-features", "tiny_v2.json"),
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

/// A copy of the model directory whose tokenizer files are `tokenizer_json` (weights linked).
fn model_with_tokenizer(dir: &Path, name: &str, tokenizer_json: &str) -> PathBuf {
    let m = dir.join(name);
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(model().join(f), m.join(f)).unwrap();
    }
    std::fs::write(m.join("tokenizer.json"), tokenizer_json).unwrap();
    m
}

#[test]
fn checks_the_tokenizer_vocabulary_not_the_file_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (examples, feats) = inputs(dir.path(), FeatureSplit::Eval);
    let original = std::fs::read_to_string(model().join("tokenizer.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    // transformers rewrites tokenizer.json on save: other bytes, same vocabulary.
    let rewritten = model_with_tokenizer(
        dir.path(),
        "rewritten",
        &serde_json::to_string(&json).unwrap(),
    );
    let res = eval_with(&rewritten, &examples, &feats, &dir.path().join("ok"));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    // Another vocabulary: two tokens swap ids.
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["the"].clone(), vocab["of"].clone());
    vocab.insert("the".into(), b);
    vocab.insert("of".into(), a);
    let other = model_with_tokenizer(dir.path(), "other", &serde_json::to_string(&json).unwrap());
    let out = dir.path().join("bad");
    let res = eval_with(&other, &examples, &feats, &out);
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("another tokenizer vocabulary") && err.contains("tiny.eval.features.parquet"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Examples and eval features of a SQuAD file, cut to a shard at ingest (`ingest_shard`)
/// and/or when making features (`features_shard`).
fn shard_inputs(
    dir: &Path,
    json: &Path,
    ingest_shard: Option<Shard>,
    features_shard: Option<Shard>,
) -> (PathBuf, PathBuf) {
    let name = |s: Option<Shard>| s.map_or("all".to_string(), |s| format!("shard{}", s.index));
    let options = IngestOptions {
        selection: Selection {
            shard: ingest_shard,
            ..Selection::default()
        },
        ..IngestOptions::default()
    };
    let ingested = read_squad(json, &options).unwrap();
    let examples = dir.join(format!("{}.examples.parquet", name(ingest_shard)));
    write_outputs(&examples, &ingested, &options.selection).unwrap();
    let feats = dir.join(format!(
        "{}-{}.features.parquet",
        name(ingest_shard),
        name(features_shard)
    ));
    let tok = QaTokenizer::load(&model()).unwrap();
    let settings = Settings {
        max_length: 384,
        stride: 128,
    };
    make_features_file(
        &examples,
        &tok,
        settings,
        FeatureSplit::Eval,
        features_shard,
        &feats,
    )
    .unwrap();
    (examples, feats)
}

fn read_json(p: PathBuf) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn a_sharded_evaluation_merges_to_the_unsharded_one() {
    let dir = tempfile::tempdir().unwrap();
    let json = fixture("qa-features", "tiny_v2.json");
    let (examples, feats) = shard_inputs(dir.path(), &json, None, None);
    let whole = dir.path().join("eval-all");
    assert!(eval(&examples, &feats, &whole).status.success());
    let whole_predictions = read_json(whole.join("predictions.json"));
    let mut merged = serde_json::Map::new();
    let mut shard_predictions = vec![];
    for index in 0..2 {
        let shard = Shard { index, count: 2 };
        let arg = ["--shard".to_string(), shard.to_string()];
        // The same shard cut at each stage: squad-ingest --shard, qa-features --shard,
        // qa-eval --shard (over the whole features file).
        let (ingest_examples, ingest_feats) = shard_inputs(dir.path(), &json, Some(shard), None);
        let (_, features_feats) = shard_inputs(dir.path(), &json, None, Some(shard));
        let runs = [
            (&ingest_examples, &ingest_feats, &[][..]),
            (&examples, &features_feats, &[][..]),
            (&examples, &feats, &arg[..]),
            (&examples, &features_feats, &arg[..]),
        ];
        let mut per_stage = vec![];
        for (k, (ex, fe, extra)) in runs.into_iter().enumerate() {
            let out = dir.path().join(format!("eval-{index}-{k}"));
            let res = eval_args(&model(), ex, fe, &out, extra);
            let stderr = String::from_utf8_lossy(&res.stderr);
            assert!(res.status.success(), "run {k}: {stderr}");
            per_stage.push(read_json(out.join("predictions.json")));
            if k == 0 {
                shard_predictions.push(out.join("predictions.json"));
            }
        }
        let preds = &per_stage[0];
        assert!(!preds.is_empty() && preds.len() < 14);
        for (k, other) in per_stage.iter().enumerate() {
            assert_eq!(other, preds, "shard {shard} cut at stage {k}");
        }
        merged.extend(preds.clone());

        // Features of one shard refuse to be evaluated as another.
        let other = Shard {
            index: 1 - index,
            count: 2,
        };
        let mismatch = dir.path().join("mismatch");
        let other_arg = ["--shard".to_string(), other.to_string()];
        let res = eval_args(&model(), &examples, &features_feats, &mismatch, &other_arg);
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("holds shard {shard} of the examples, not {other}")),
            "{stderr}"
        );
        assert!(!mismatch.exists());
    }
    assert_eq!(merged, whole_predictions, "same answers");

    // The documented merge: `qa-eval score` over the shards' files equals scoring the whole.
    let score = |files: &[PathBuf]| -> serde_json::Value {
        let out = Command::new(BIN)
            .arg("score")
            .arg("--data")
            .arg(&json)
            .arg("--predictions")
            .args(files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(
        score(&shard_predictions),
        score(&[whole.join("predictions.json")])
    );
}
