//! Post-processing parity with HF `utils_qa.postprocess_qa_predictions` (the oracle's
//! ref_postprocess.py): the same logits and features give the same predictions.json, n-best
//! texts and logits, for v1.1 and v2.0 (with a threshold that predicts "" for some).

mod common;

use std::path::Path;

use qa_eval::postprocess::{postprocess, Logits, PostprocessConfig, Predictions};
use squad_core::parquet_io::{read_parquet, Columns};
use squad_core::Feature;
use squad_ingest::{read_squad, IngestOptions};

use common::fixture;

/// The oracle's eval features (padded to 384) with their offsets, and the logits rows.
fn oracle_inputs(features: &Path, logits: &Path) -> (Vec<Feature>, Vec<Logits>) {
    let (df, _) = read_parquet(features).unwrap();
    let c = Columns::new(features, &df);
    let mask = c.i32_lists("attention_mask").unwrap();
    let (starts, ends) = (
        c.i32_lists("offset_start").unwrap(),
        c.i32_lists("offset_end").unwrap(),
    );
    let ids = c.i32_lists("input_ids").unwrap();
    let mapping = c.i32s("overflow_to_sample_mapping").unwrap();
    let example_ids = c.strings("example_id").unwrap();
    let feats = (0..ids.len())
        .map(|i| {
            let n = mask[i].iter().filter(|&&m| m == 1).count();
            Feature {
                example_id: example_ids[i].clone(),
                example_index: mapping[i] as u32,
                window_index: 0,
                input_ids: ids[i][..n].to_vec(),
                token_type_ids: vec![0; n],
                labels: None,
                offsets: Some(
                    starts[i][..n]
                        .iter()
                        .zip(&ends[i][..n])
                        .map(|(&s, &e)| (s, e))
                        .collect(),
                ),
            }
        })
        .collect();
    let (df, _) = read_parquet(logits).unwrap();
    let c = Columns::new(logits, &df);
    let rows = c
        .f32_lists("start_logits")
        .unwrap()
        .into_iter()
        .zip(c.f32_lists("end_logits").unwrap())
        .map(|(start, end)| Logits { start, end })
        .collect();
    (feats, rows)
}

fn assert_matches_oracle(ours: &Predictions, predictions: &str, nbest: &str) {
    let want: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("qa-eval", predictions)).unwrap()).unwrap();
    assert_eq!(ours.answers.len(), want.len());
    for (id, answer) in &ours.answers {
        assert_eq!(Some(answer.as_str()), want[id].as_str(), "{id}");
    }
    let want: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("qa-eval", nbest)).unwrap()).unwrap();
    for (id, entries) in &ours.nbest {
        let w = want[id].as_array().unwrap();
        assert_eq!(entries.len(), w.len(), "{id}");
        for (e, w) in entries.iter().zip(w) {
            assert_eq!(Some(e.text.as_str()), w["text"].as_str(), "{id}");
            assert!((e.start_logit as f64 - w["start_logit"].as_f64().unwrap()).abs() < 1e-6);
            assert!(
                (e.probability as f64 - w["probability"].as_f64().unwrap()).abs() < 1e-5,
                "{id}"
            );
        }
    }
}

fn run(data: &str, features: &str, logits: (&str, &str), cfg: PostprocessConfig) -> Predictions {
    let examples = read_squad(&fixture("qa-features", data), &IngestOptions::default())
        .unwrap()
        .examples;
    let (feats, rows) = oracle_inputs(
        &fixture("qa-features", features),
        &fixture(logits.0, logits.1),
    );
    postprocess(&examples, &feats, &rows, &cfg)
}

#[test]
fn v1_predictions_and_nbest_equal_hf() {
    let cfg = PostprocessConfig {
        n_best_size: 20,
        max_answer_length: 30,
        version_2_with_negative: false,
        null_score_diff_threshold: 0.0,
    };
    let ours = run(
        "tiny.json",
        "tiny.eval.ref.parquet",
        ("qa-model", "tiny.train.logits.ref.parquet"),
        cfg,
    );
    assert_matches_oracle(&ours, "tiny.predictions.ref.json", "tiny.nbest.ref.json");
}

#[test]
fn v2_null_answers_equal_hf() {
    let cfg = PostprocessConfig {
        n_best_size: 20,
        max_answer_length: 30,
        version_2_with_negative: true,
        null_score_diff_threshold: -0.65,
    };
    let ours = run(
        "tiny_v2.json",
        "tiny_v2.eval.ref.parquet",
        ("qa-eval", "tiny_v2.eval.logits.ref.parquet"),
        cfg,
    );
    assert_matches_oracle(
        &ours,
        "tiny_v2.predictions.ref.json",
        "tiny_v2.nbest.ref.json",
    );
    assert_eq!(ours.answers.iter().filter(|(_, a)| a.is_empty()).count(), 5);
    assert_eq!(ours.null_odds.len(), 14);
}
