//! `qa-eval score` against the official metric (the oracle's squad_metric.py, expected values
//! committed by scripts/make_metric_fixtures.py), on prediction files that hit every
//! normalisation rule; plus shard merging and bad prediction files.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::fixture;

const BIN: &str = env!("CARGO_BIN_EXE_qa-eval");

fn score(args: &[&str]) -> Output {
    Command::new(BIN).arg("score").args(args).output().unwrap()
}

fn metrics(out: &Output) -> serde_json::Map<String, serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn expected(case: &str) -> serde_json::Map<String, serde_json::Value> {
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("qa-eval", "expected.json")).unwrap())
            .unwrap();
    all[case].as_object().unwrap().clone()
}

fn assert_same(
    got: &serde_json::Map<String, serde_json::Value>,
    want: &serde_json::Map<String, serde_json::Value>,
) {
    assert_eq!(
        got.keys().collect::<std::collections::BTreeSet<_>>(),
        want.keys().collect(),
        "{got:?}"
    );
    for (k, w) in want {
        let (g, w) = (got[k].as_f64().unwrap(), w.as_f64().unwrap());
        assert!((g - w).abs() <= 1e-9, "{k}: {g} vs {w}");
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn v1_1_equals_the_official_metric() {
    let (d, preds) = (
        fixture("qa-features", "tiny.json"),
        fixture("qa-eval", "v1.predictions.json"),
    );
    let out = score(&["--data", p(&d), "--predictions", p(&preds)]);
    assert_same(&metrics(&out), &expected("v1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 questions have no prediction") && err.contains("not-a-question"),
        "{err}"
    );
    let out = score(&[
        "--data",
        p(&d),
        "--predictions",
        p(&preds),
        "--only-predicted",
    ]);
    assert_same(&metrics(&out), &expected("v1_only_predicted"));
}

#[test]
fn v2_0_equals_the_official_metric_with_and_without_na_probs() {
    let (d, preds, na) = (
        fixture("qa-features", "tiny_v2.json"),
        fixture("qa-eval", "v2.predictions.json"),
        fixture("qa-eval", "v2.na_probs.json"),
    );
    assert_same(
        &metrics(&score(&["--data", p(&d), "--predictions", p(&preds)])),
        &expected("v2"),
    );
    assert_same(
        &metrics(&score(&[
            "--data",
            p(&d),
            "--predictions",
            p(&preds),
            "--na-prob",
            p(&na),
        ])),
        &expected("v2_na"),
    );
}

#[test]
fn shards_merge_to_the_same_score() {
    let dir = tempfile::tempdir().unwrap();
    let all: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("qa-eval", "v1.predictions.json")).unwrap())
            .unwrap();
    let (mut a, mut b) = (serde_json::Map::new(), serde_json::Map::new());
    for (i, (k, v)) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            a.insert(k, v)
        } else {
            b.insert(k, v)
        };
    }
    let (pa, pb) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&pa, serde_json::to_string(&a).unwrap()).unwrap();
    std::fs::write(&pb, serde_json::to_string(&b).unwrap()).unwrap();
    let d = fixture("qa-features", "tiny.json");
    assert_same(
        &metrics(&score(&["--data", p(&d), "--predictions", p(&pa), p(&pb)])),
        &expected("v1"),
    );
    // The same question in two shards is an error.
    let out = score(&["--data", p(&d), "--predictions", p(&pa), p(&pa)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than one predictions file"));
}

#[test]
fn bad_prediction_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = fixture("qa-features", "tiny.json");
    let bad = dir.path().join("nonstring.json");
    std::fs::write(&bad, r#"{"rhine-q1": 42}"#).unwrap();
    let out = score(&["--data", p(&d), "--predictions", p(&bad)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("nonstring.json") && err.contains("rhine-q1") && err.contains("not a string"),
        "{err}"
    );
    let bad = dir.path().join("list.json");
    std::fs::write(&bad, "[1]").unwrap();
    let out = score(&["--data", p(&d), "--predictions", p(&bad)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("list.json"));
    assert_eq!(out.status.code(), Some(1));
}
