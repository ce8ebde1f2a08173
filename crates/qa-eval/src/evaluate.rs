//! Evaluating a checkpoint: batched eval-mode forward over the eval features (each batch
//! padded to its longest), HF post-processing, SQuAD metrics on the evaluated examples, and
//! the output files, each written atomically.

use std::path::{Path, PathBuf};

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use qa_model::{make_batch, Checkpoint};
use serde::Serialize;
use squad_core::features::{self, FeatureSplit};
use squad_core::fsutil::{sha256_file, write_atomic_bytes};
use squad_core::metric::{evaluate_v1, evaluate_v2, Gold};
use squad_core::parquet_io::{write_parquet, Metadata};
use squad_core::postprocess::{postprocess, PostprocessConfig, Predictions};
use squad_core::{Example, Feature};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Core(#[from] squad_core::Error),
    #[error(transparent)]
    Model(#[from] qa_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
}

pub struct EvalInputs<'a> {
    pub model: &'a str,
    pub features: &'a Path,
    pub examples: &'a Path,
    pub batch_size: usize,
    pub postprocess: PostprocessConfig,
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    pub features: usize,
    pub seconds_forward: f64,
    pub features_per_second: f64,
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// The tokenizer file a checkpoint ships (what qa-features hashed), if any.
fn model_tokenizer_sha(dir: &Path) -> Option<String> {
    ["tokenizer.json", "vocab.txt"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .and_then(|p| sha256_file(&p).ok())
}

pub fn run_forward(
    ck: &Checkpoint,
    feats: &[Feature],
    batch_size: usize,
    progress: bool,
) -> Result<Vec<(Vec<f32>, Vec<f32>)>, EvalError> {
    let bar = if progress {
        ProgressBar::new(feats.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} features  {per_sec}  eta {eta}")
            .expect("template"),
    );
    let mut rows = Vec::with_capacity(feats.len());
    for chunk in feats.chunks(batch_size.max(1)) {
        let refs: Vec<&Feature> = chunk.iter().collect();
        let (s, e) = ck
            .model
            .forward(&make_batch(&refs, None, &Device::Cpu)?, None)?;
        let (s, e): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (s.to_vec2()?, e.to_vec2()?);
        rows.extend(s.into_iter().zip(e));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(rows)
}

pub fn metrics(
    examples: &[Example],
    predictions: &Predictions,
    v2: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let gold: Vec<Gold> = examples
        .iter()
        .map(|e| Gold {
            id: e.id.clone(),
            answers: e.answer_texts.clone(),
        })
        .collect();
    let preds = predictions.answers.iter().cloned().collect();
    if v2 {
        // Real no-answer scores (null - best span), not HF run_qa's all-zero probabilities.
        evaluate_v2(&gold, &preds, Some(&predictions.null_odds), f64::INFINITY)
            .expect("every prediction has null odds")
    } else {
        match serde_json::to_value(evaluate_v1(&gold, &preds)).expect("serialise") {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        }
    }
}

fn json_object<T: Serialize>(pairs: &[(String, T)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).expect("serialise")))
        .collect();
    serde_json::to_string_pretty(&map).expect("json")
}

/// Runs the evaluation and writes predictions.json, nbest_predictions.json, null_odds.json
/// (v2.0), eval_logits.parquet and metrics.json into `output`.
pub fn evaluate(inputs: &EvalInputs, output: &Path) -> Result<EvalReport, EvalError> {
    let (feats, split, feat_meta) = features::read(inputs.features)?;
    if split != FeatureSplit::Eval {
        return Err(EvalError::Input {
            path: inputs.features.into(),
            message:
                "train features have no offsets: make eval features (qa-features --split eval)"
                    .into(),
        });
    }
    let (examples, _) = squad_core::examples::read(inputs.examples)?;
    let examples_sha = sha256_file(inputs.examples)?;
    if feat_meta
        .get(features::meta::EXAMPLES_SHA256)
        .is_some_and(|s| *s != examples_sha)
    {
        return Err(EvalError::Input {
            path: inputs.features.into(),
            message: format!(
                "made from another examples file than {}",
                inputs.examples.display()
            ),
        });
    }
    let ck = Checkpoint::load(inputs.model, 0, &Device::Cpu)?;
    if let (Some(ours), Some(theirs)) = (
        model_tokenizer_sha(&ck.dir),
        feat_meta.get(features::meta::TOKENIZER_SHA256),
    ) {
        if &ours != theirs {
            return Err(EvalError::Input {
                path: inputs.features.into(),
                message: format!(
                    "made with another tokenizer than the model's ({})",
                    ck.dir.display()
                ),
            });
        }
    }
    let started = std::time::Instant::now();
    let logits = run_forward(&ck, &feats, inputs.batch_size, inputs.progress)?;
    let seconds = started.elapsed().as_secs_f64();
    let predictions = postprocess(&examples, &feats, &logits, &inputs.postprocess);
    let v2 = inputs.postprocess.version_2_with_negative;
    let metrics = metrics(&examples, &predictions, v2);

    std::fs::create_dir_all(output).map_err(|e| squad_core::Error::io(output, e))?;
    write_atomic_bytes(
        &output.join("predictions.json"),
        json_object(&predictions.answers).as_bytes(),
    )?;
    write_atomic_bytes(
        &output.join("nbest_predictions.json"),
        json_object(&predictions.nbest).as_bytes(),
    )?;
    if v2 {
        write_atomic_bytes(
            &output.join("null_odds.json"),
            json_object(&predictions.null_odds).as_bytes(),
        )?;
    }
    let mut df = logits_frame(&logits)?;
    write_parquet(
        &output.join("eval_logits.parquet"),
        &mut df,
        &Metadata::new(),
    )?;
    let report = EvalReport {
        examples: examples.len(),
        features: feats.len(),
        seconds_forward: seconds,
        features_per_second: feats.len() as f64 / seconds.max(1e-9),
        metrics,
    };
    write_atomic_bytes(
        &output.join("metrics.json"),
        serde_json::to_string_pretty(&report)
            .expect("json")
            .as_bytes(),
    )?;
    Ok(report)
}

/// `start_logits`/`end_logits` list<f32> columns (what ref_postprocess.py reads).
fn logits_frame(
    rows: &[(Vec<f32>, Vec<f32>)],
) -> Result<squad_core::polars::prelude::DataFrame, EvalError> {
    use squad_core::polars::prelude::*;
    let col = |name: &str, pick: fn(&(Vec<f32>, Vec<f32>)) -> &Vec<f32>| -> Column {
        let mut b = ListPrimitiveChunkedBuilder::<Float32Type>::new(
            name.into(),
            rows.len(),
            rows.len() * 64,
            DataType::Float32,
        );
        for r in rows {
            b.append_slice(pick(r));
        }
        b.finish().into_series().into()
    };
    DataFrame::new(
        rows.len(),
        vec![col("start_logits", |r| &r.0), col("end_logits", |r| &r.1)],
    )
    .map_err(|e| EvalError::Input {
        path: "eval_logits.parquet".into(),
        message: e.to_string(),
    })
}
