//! Evaluating a checkpoint: batched eval-mode forward over the eval features (each batch
//! padded to its longest), HF post-processing, SQuAD metrics on the evaluated examples, and
//! the output files, each written atomically.
//!
//! Under MPI the batches are dealt out to the ranks and the logits summed into place on
//! every rank (each feature's logits come from one rank, zeros from the others, so the sum
//! is exact); rank 0 post-processes and writes. Each batch is the one a single process
//! would run, so the logits, and EM/F1, are the one-process result.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use qa_dist::Collective;
use qa_model::{make_batch, BertForQuestionAnswering, Checkpoint, RunPlan};
use serde::Serialize;
use squad_core::features::{self, FeatureSplit};
use squad_core::fsutil::{sha256_file, write_atomic_bytes};
use squad_core::parquet_io::{write_parquet, Metadata};
use squad_core::shard::Shard;
use squad_core::vocab::{tokenizer_file, vocab_sha256};
use squad_core::{Example, Feature};

use crate::metric::{evaluate_v1, evaluate_v2, Gold};
use crate::postprocess::{postprocess, Logits, PostprocessConfig, Predictions};

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
    /// A rank's error, found where every rank stops together (or another rank's: None).
    #[error("{}", match .0 { Some(e) => e.to_string(), None => "stopped: another rank failed".into() })]
    Ranks(Option<Box<EvalError>>),
}

impl EvalError {
    /// Whether every rank is stopping with this error (see `qa_dist::Ending`).
    pub fn ending(&self) -> qa_dist::Ending {
        match self {
            EvalError::Ranks(_) => qa_dist::Ending::Together,
            _ => qa_dist::Ending::Alone,
        }
    }
}

/// `result` once every rank knows whether any failed (see `qa_dist::together`).
pub fn together<T>(comm: &dyn Collective, result: Result<T, EvalError>) -> Result<T, EvalError> {
    let solo = comm.world() == 1;
    qa_dist::together(comm, result).map_err(|s| match s {
        qa_dist::Stopped::Here(e) if solo => e,
        qa_dist::Stopped::Here(e) => EvalError::Ranks(Some(Box::new(e))),
        qa_dist::Stopped::Elsewhere => EvalError::Ranks(None),
    })
}

pub struct EvalInputs<'a> {
    pub model: &'a str,
    pub features: &'a Path,
    pub examples: &'a Path,
    pub batch_size: usize,
    pub postprocess: PostprocessConfig,
    pub progress: bool,
    /// Evaluate only the examples whose position mod N == I (and their features).
    pub shard: Option<Shard>,
    pub device: Device,
    /// The GEMMs' arithmetic.
    pub precision: squad_core::Precision,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub examples: usize,
    pub features: usize,
    pub seconds_forward: f64,
    pub features_per_second: f64,
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// Start and end logits of every feature (each as long as the feature: the file does not
/// depend on how features were batched), this rank computing its share of the batches.
pub fn run_forward(
    model: &BertForQuestionAnswering,
    feats: &[Feature],
    batch_size: usize,
    progress: bool,
    comm: &dyn Collective,
) -> Result<Vec<Logits>, EvalError> {
    let bar = if progress {
        ProgressBar::new(feats.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} features  {per_sec}  eta {eta}")
            .expect("template"),
    );
    // On a GPU, reading logits back waits for the device: read every `READ_EVERY` batches,
    // so the host queues the next batches while the device computes.
    const READ_EVERY: usize = 32;
    // Batches of features of similar length (longest first), so padding each batch to its
    // longest adds few tokens (in file order, 8-feature batches of SQuAD dev pad to ~1.5x
    // the tokens); the logits go back to the features' own order.
    let mut order: Vec<usize> = (0..feats.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(feats[i].input_ids.len()));
    let mut rows = vec![Logits::default(); feats.len()];
    type Pending<'a> = Vec<(Tensor, Tensor, &'a [usize])>;
    let mut pending: Pending = vec![];
    let mut read = |pending: &mut Pending| -> Result<(), EvalError> {
        for (s, e, indices) in pending.drain(..) {
            let (s, e): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (s.to_vec2()?, e.to_vec2()?);
            for ((mut s, mut e), &i) in s.into_iter().zip(e).zip(indices) {
                s.truncate(feats[i].len());
                e.truncate(feats[i].len());
                rows[i] = Logits { start: s, end: e };
            }
            bar.inc(indices.len() as u64);
        }
        Ok(())
    };
    let on_host = model.device().is_cpu();
    let (rank, world) = (comm.rank(), comm.world());
    for chunk in order.chunks(batch_size.max(1)).skip(rank).step_by(world) {
        let refs: Vec<&Feature> = chunk.iter().map(|&i| &feats[i]).collect();
        let (s, e) = model.forward(&make_batch(&refs, None, model.device())?, None)?;
        pending.push((s, e, chunk));
        if on_host || pending.len() >= READ_EVERY {
            read(&mut pending)?;
        }
    }
    read(&mut pending)?;
    bar.finish_and_clear();
    if world > 1 {
        sum_over_ranks(comm, &mut rows, feats);
    }
    Ok(rows)
}

/// Every rank's logits on every rank: rows this rank did not compute are empty and filled
/// with the sum over ranks (exact: one rank's values plus zeros).
fn sum_over_ranks(comm: &dyn Collective, rows: &mut [Logits], feats: &[Feature]) {
    let total: usize = feats.iter().map(|f| 2 * f.len()).sum();
    let mut flat = Vec::with_capacity(total);
    for (row, f) in rows.iter().zip(feats) {
        match row.start.len() {
            0 => flat.resize(flat.len() + 2 * f.len(), 0.0),
            _ => flat.extend(row.start.iter().chain(&row.end)),
        }
    }
    qa_dist::all_reduce_parts(comm, &mut [&mut flat]);
    let mut at = 0;
    for (row, f) in rows.iter_mut().zip(feats) {
        let n = f.len();
        row.start = flat[at..at + n].to_vec();
        row.end = flat[at + n..at + 2 * n].to_vec();
        at += 2 * n;
    }
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

/// Eval features with the examples they were made from, checked to belong together.
pub struct EvalSet {
    pub features_path: PathBuf,
    pub features: Vec<Feature>,
    pub examples: Vec<Example>,
    pub max_length: Option<usize>,
    /// The examples come from a SQuAD v2.0 file (unanswerable questions possible).
    pub squad_v2: bool,
    vocab_sha256: Option<String>,
}

impl EvalSet {
    /// Loads features and examples; with a `shard` (asked for, or recorded in the features
    /// by `qa-features --shard`) only that shard's examples and features.
    pub fn load(
        features_path: &Path,
        examples_path: &Path,
        shard: Option<Shard>,
    ) -> Result<Self, EvalError> {
        let (mut feats, split, meta) = features::read(features_path)?;
        if split != FeatureSplit::Eval {
            return Err(EvalError::Input {
                path: features_path.into(),
                message:
                    "train features have no offsets: make eval features (qa-features --split eval)"
                        .into(),
            });
        }
        let (mut examples, examples_meta) = squad_core::examples::read(examples_path)?;
        let squad_v2 = examples_meta
            .get(squad_core::examples::meta::SQUAD_VERSION)
            .is_some_and(|v| v == "2.0");
        let examples_sha = sha256_file(examples_path)?;
        if meta
            .get(features::meta::EXAMPLES_SHA256)
            .is_some_and(|s| *s != examples_sha)
        {
            return Err(EvalError::Input {
                path: features_path.into(),
                message: format!(
                    "made from another examples file than {}",
                    examples_path.display()
                ),
            });
        }
        let input_error = |message: String| EvalError::Input {
            path: features_path.into(),
            message,
        };
        let features_shard = (meta.get(features::meta::SHARD))
            .map(|s| s.parse::<Shard>())
            .transpose()
            .map_err(input_error)?;
        let shard = match (features_shard, shard) {
            (Some(made), Some(asked)) if made != asked => {
                return Err(input_error(format!(
                    "holds shard {made} of the examples, not {asked}"
                )))
            }
            (made, asked) => made.or(asked),
        };
        if let Some(s) = shard {
            examples = s.select(examples);
            feats.retain(|f| s.contains(f.example_index as usize));
            for f in &mut feats {
                f.example_index = s.local(f.example_index as usize) as u32;
            }
        }
        Ok(EvalSet {
            features_path: features_path.into(),
            features: feats,
            examples,
            squad_v2,
            max_length: meta
                .get(features::meta::MAX_LENGTH)
                .and_then(|v| v.parse().ok()),
            vocab_sha256: meta.get(features::meta::TOKENIZER_VOCAB_SHA256).cloned(),
        })
    }

    /// Errors when the checkpoint in `model_dir` ships another tokenizer than the one the
    /// features were made with.
    pub fn check_tokenizer(&self, model_dir: &Path) -> Result<(), EvalError> {
        let (Some(file), Some(theirs)) = (tokenizer_file(model_dir), self.vocab_sha256.as_ref())
        else {
            return Ok(()); // nothing to compare
        };
        if &vocab_sha256(&file)? != theirs {
            return Err(EvalError::Input {
                path: self.features_path.clone(),
                message: format!(
                    "made with another tokenizer vocabulary than the model's ({})",
                    file.display()
                ),
            });
        }
        Ok(())
    }
}

/// What evaluating a model on an `EvalSet` gives.
pub struct Evaluation {
    pub logits: Vec<Logits>,
    pub predictions: Predictions,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub seconds_forward: f64,
}

/// Forward pass, post-processing and metrics for an already loaded model.
pub fn evaluate_model(
    model: &BertForQuestionAnswering,
    set: &EvalSet,
    batch_size: usize,
    postprocess_config: &PostprocessConfig,
    progress: bool,
    comm: &dyn Collective,
) -> Result<Evaluation, EvalError> {
    let started = std::time::Instant::now();
    let logits = run_forward(model, &set.features, batch_size, progress, comm)?;
    let seconds_forward = started.elapsed().as_secs_f64();
    let predictions = postprocess(&set.examples, &set.features, &logits, postprocess_config);
    let metrics = metrics(
        &set.examples,
        &predictions,
        postprocess_config.version_2_with_negative,
    );
    Ok(Evaluation {
        logits,
        predictions,
        metrics,
        seconds_forward,
    })
}

/// Writes predictions.json, nbest_predictions.json, null_odds.json (v2.0), eval_logits.parquet
/// and metrics.json into `output`, each atomically.
pub fn write_outputs(
    evaluation: &Evaluation,
    set: &EvalSet,
    output: &Path,
) -> Result<EvalReport, EvalError> {
    let predictions = &evaluation.predictions;
    std::fs::create_dir_all(output).map_err(|e| squad_core::Error::io(output, e))?;
    write_atomic_bytes(
        &output.join("predictions.json"),
        json_object(&predictions.answers).as_bytes(),
    )?;
    write_atomic_bytes(
        &output.join("nbest_predictions.json"),
        json_object(&predictions.nbest).as_bytes(),
    )?;
    if !predictions.null_odds.is_empty() {
        write_atomic_bytes(
            &output.join("null_odds.json"),
            json_object(&predictions.null_odds).as_bytes(),
        )?;
    }
    let mut df = logits_frame(&evaluation.logits, set.max_length)?;
    write_parquet(
        &output.join("eval_logits.parquet"),
        &mut df,
        &Metadata::new(),
    )?;
    let seconds = evaluation.seconds_forward;
    let report = EvalReport {
        examples: set.examples.len(),
        features: set.features.len(),
        seconds_forward: seconds,
        features_per_second: set.features.len() as f64 / seconds.max(1e-9),
        metrics: evaluation.metrics.clone(),
    };
    write_atomic_bytes(
        &output.join("metrics.json"),
        serde_json::to_string_pretty(&report)
            .expect("json")
            .as_bytes(),
    )?;
    Ok(report)
}

/// Loads the checkpoint and the eval set, evaluates, and writes the outputs into `output`:
/// in one process, or as one of `comm`'s ranks (rank 0 locks, writes and gets the report).
pub fn evaluate(
    inputs: &EvalInputs,
    output: &Path,
    comm: &dyn Collective,
) -> Result<Option<EvalReport>, EvalError> {
    let writer = comm.rank() == 0;
    let loaded = (|| {
        let set = EvalSet::load(inputs.features, inputs.examples, inputs.shard)?;
        let ck = Checkpoint::load(
            inputs.model,
            0,
            &RunPlan::inference(inputs.device.clone(), inputs.precision),
        )?;
        set.check_tokenizer(&ck.dir)?;
        Ok((set, ck))
    })();
    let (set, ck) = together(comm, loaded)?;
    together(comm, same_split(comm, inputs, &set))?;
    let lock = writer.then(|| {
        squad_core::lock::DirLock::acquire(
            output,
            "qa-eval",
            "wait for it to end (or stop it), then rerun",
        )
    });
    let _lock = together(comm, lock.transpose().map_err(EvalError::from))?;
    let evaluation = evaluate_model(
        &ck.model,
        &set,
        inputs.batch_size,
        &inputs.postprocess,
        inputs.progress && writer,
        comm,
    )?;
    writer
        .then(|| write_outputs(&evaluation, &set, output))
        .transpose()
}

/// Every rank evaluates the same features (sha256 of the file) in the same batches.
fn same_split(comm: &dyn Collective, inputs: &EvalInputs, set: &EvalSet) -> Result<(), EvalError> {
    let mine = format!(
        "{} features, batch size {}, sha256 {}",
        set.features.len(),
        inputs.batch_size,
        sha256_file(inputs.features)?
    );
    match qa_dist::differs_from_rank0(comm, mine.as_bytes()) {
        None => Ok(()),
        Some(theirs) => Err(EvalError::Input {
            path: inputs.features.to_path_buf(),
            message: format!(
                "rank {} reads {mine}; rank 0 reads {}",
                comm.rank(),
                String::from_utf8_lossy(&theirs)
            ),
        }),
    }
}

/// Logit written where a feature has no token (dynamic padding computes none there): low
/// enough that HF post-processing never ranks it, so the file is a direct input to
/// `ref_postprocess.py`.
pub const PADDING_LOGIT: f32 = -10_000.0;

/// `start_logits`/`end_logits` list<f32> columns (what ref_postprocess.py reads), each row
/// padded with `PADDING_LOGIT` to `pad_to` (the features' max_length) when known.
fn logits_frame(
    rows: &[Logits],
    pad_to: Option<usize>,
) -> Result<squad_core::polars::prelude::DataFrame, EvalError> {
    use squad_core::polars::prelude::*;
    let col = |name: &str, pick: fn(&Logits) -> &Vec<f32>| -> Column {
        let mut b = ListPrimitiveChunkedBuilder::<Float32Type>::new(
            name.into(),
            rows.len(),
            rows.len() * 64,
            DataType::Float32,
        );
        for r in rows {
            let row = pick(r);
            let mut padded = row.clone();
            padded.resize(pad_to.unwrap_or(0).max(row.len()), PADDING_LOGIT);
            b.append_slice(&padded);
        }
        b.finish().into_series().into()
    };
    DataFrame::new(
        rows.len(),
        vec![
            col("start_logits", |r| &r.start),
            col("end_logits", |r| &r.end),
        ],
    )
    .map_err(|e| EvalError::Input {
        path: "eval_logits.parquet".into(),
        message: e.to_string(),
    })
}

/// Largest absolute difference between two `eval_logits.parquet` files of the same features
/// (e.g. the same model run on the CPU and on a GPU). Errors when their shapes differ.
pub fn max_logit_difference(a: &Path, b: &Path) -> Result<f32, EvalError> {
    let read = |path: &Path| -> Result<Vec<Vec<f32>>, EvalError> {
        let (df, _) = squad_core::parquet_io::read_parquet(path)?;
        let cols = squad_core::parquet_io::Columns::new(path, &df);
        let mut rows = cols.f32_lists("start_logits")?;
        rows.extend(cols.f32_lists("end_logits")?);
        Ok(rows)
    };
    let (left, right) = (read(a)?, read(b)?);
    let same_shape =
        left.len() == right.len() && left.iter().zip(&right).all(|(x, y)| x.len() == y.len());
    if !same_shape {
        return Err(EvalError::Input {
            path: b.to_path_buf(),
            message: format!("logits of other features than {}", a.display()),
        });
    }
    Ok(left
        .iter()
        .zip(&right)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max))
}
