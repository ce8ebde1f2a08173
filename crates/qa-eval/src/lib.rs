//! `qa-eval`: SQuAD metrics. `score` is a drop-in replacement for the official
//! `evaluate-v1.1.py` / `evaluate-v2.0.py` scripts (see [`metric`]), and merges
//! several prediction files (the shards of a sharded evaluation).

pub mod evaluate;
pub mod metric;
pub mod postprocess;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use squad_core::fsutil::read_maybe_gzip;
use squad_ingest::squad_json::SquadFile;

use metric::{evaluate_v1, evaluate_v2, unknown_ids, Gold, OrderedMap};

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Core(#[from] squad_core::Error),
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Metric {
        path: PathBuf,
        source: metric::MetricError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Auto,
    V1,
    V2,
}

pub struct ScoreOptions {
    pub version: Version,
    /// Score only the questions that have a prediction (HF `evaluate` on a subset).
    pub only_predicted: bool,
    pub na_prob_thresh: f64,
}

pub struct Scored {
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub warnings: Vec<String>,
}

fn input_err(path: &Path, message: impl Into<String>) -> ScoreError {
    ScoreError::Input {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Gold answers of a SQuAD file, and whether it is a v2.0 file.
pub fn read_gold(path: &Path) -> Result<(Vec<Gold>, bool), ScoreError> {
    let bytes = read_maybe_gzip(path)?;
    let file: SquadFile = serde_json::from_slice(&bytes)
        .map_err(|e| input_err(path, format!("not valid SQuAD JSON: {e}")))?;
    let mut v2 = file.squad_version() == "2.0";
    let mut gold = Vec::new();
    for qa in file
        .data
        .into_iter()
        .flat_map(|a| a.paragraphs)
        .flat_map(|p| p.qas)
    {
        v2 |= qa.answers.is_empty();
        gold.push(Gold {
            id: qa.id,
            answers: qa.answers.into_iter().map(|a| a.text).collect(),
        });
    }
    Ok((gold, v2))
}

/// `{qid: answer}` files, merged in order; a question answered twice is an error.
pub fn read_predictions(paths: &[PathBuf]) -> Result<HashMap<String, String>, ScoreError> {
    let mut merged = HashMap::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| input_err(path, e.to_string()))?;
        let map: OrderedMap<serde_json::Value> = serde_json::from_slice(&bytes).map_err(|e| {
            input_err(
                path,
                format!("not a {{question id: answer}} JSON object: {e}"),
            )
        })?;
        for (id, value) in map.0 {
            let serde_json::Value::String(answer) = value else {
                return Err(input_err(
                    path,
                    format!("the answer for question {id:?} is not a string: {value}"),
                ));
            };
            if merged.insert(id.clone(), answer).is_some() {
                return Err(input_err(
                    path,
                    format!("question {id:?} is answered in more than one predictions file"),
                ));
            }
        }
    }
    Ok(merged)
}

pub fn read_na_probs(path: &Path) -> Result<Vec<(String, f64)>, ScoreError> {
    let bytes = std::fs::read(path).map_err(|e| input_err(path, e.to_string()))?;
    let map: OrderedMap<f64> = serde_json::from_slice(&bytes).map_err(|e| {
        input_err(
            path,
            format!("not a {{question id: probability}} JSON object: {e}"),
        )
    })?;
    Ok(map.0)
}

pub fn score(
    data: &Path,
    predictions: &[PathBuf],
    na_probs: Option<&Path>,
    options: &ScoreOptions,
) -> Result<Scored, ScoreError> {
    let (mut gold, file_is_v2) = read_gold(data)?;
    let preds = read_predictions(predictions)?;
    let na = na_probs.map(read_na_probs).transpose()?;
    let v2 = match options.version {
        Version::Auto => file_is_v2 || na.is_some(),
        Version::V1 => false,
        Version::V2 => true,
    };
    let mut warnings = Vec::new();
    let unknown = unknown_ids(&gold, preds.keys());
    if !unknown.is_empty() {
        warnings.push(format!(
            "{} predictions for questions not in {} were ignored (e.g. {:?})",
            unknown.len(),
            data.display(),
            unknown[0]
        ));
    }
    if options.only_predicted {
        gold.retain(|q| preds.contains_key(&q.id));
    }
    let metrics = if v2 {
        evaluate_v2(&gold, &preds, na.as_deref(), options.na_prob_thresh).map_err(|source| {
            ScoreError::Metric {
                path: na_probs.unwrap_or(data).to_path_buf(),
                source,
            }
        })?
    } else {
        let s = evaluate_v1(&gold, &preds);
        if !s.missing.is_empty() {
            warnings.push(format!(
                "{} questions have no prediction and score 0 (e.g. {:?})",
                s.missing.len(),
                s.missing[0]
            ));
        }
        match serde_json::to_value(&s).expect("scores serialise") {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("struct serialises to an object"),
        }
    };
    Ok(Scored { metrics, warnings })
}
