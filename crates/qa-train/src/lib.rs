//! Fine-tuning a BERT checkpoint for extractive QA with HF Trainer semantics, on the CPU or a
//! GPU: seeded shuffle per epoch, dynamic (or max-length) padding, seeded dropout, AdamW with HF's
//! parameter groups, global-norm clipping, linear schedule with warm-up, gradient
//! accumulation, evaluation at each epoch's end, atomic checkpoints with everything needed
//! to resume bit-exactly, `metrics.jsonl` and a training-curve plot.
//!
//! Run directory layout (`--output DIR`):
//! - `checkpoints/checkpoint-N/`: HF checkpoint + `trainer_state.json`, `optimizer.safetensors`,
//!   `training_config.yaml` (the last `save_total_limit` kept);
//! - `model/`: the final HF checkpoint (what qa-eval and qa-infer load);
//! - `metrics.jsonl`, `training_curve.svg`, `eval/epoch-E/` (qa-eval's outputs), `config.yaml`,
//!   `train_summary.json`.

pub mod metrics_log;
pub mod optim;
pub mod order;
pub mod plot;
pub mod state;
pub mod step;
mod trainer;

use std::path::PathBuf;
use std::rc::Rc;

use candle_core::{Device, Tensor};
use qa_dist::{Collective, Comm, Solo, Stopped};
use qa_eval::evaluate::{EvalError, EvalSet};
use qa_model::{Mode, RunOptions, RunPlan};
use squad_core::features::{self, FeatureSplit};
use squad_core::lock::DirLock;
use squad_core::{Feature, PipelineConfig};

use state::newest_intact_checkpoint;
use trainer::{Inputs, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Core(#[from] squad_core::Error),
    #[error(transparent)]
    Model(#[from] qa_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    #[error("{}: cannot write: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("{}: cannot resume: {message}", path.display())]
    Resume { path: PathBuf, message: String },
    /// This rank disagrees with rank 0 about what the job trains on.
    #[error("{message}")]
    Ranks { message: String },
    /// This rank's error, found where every rank stops together.
    #[error(transparent)]
    Together(Box<TrainError>),
    /// Another rank failed (its line says why).
    #[error("stopped: another rank failed")]
    Elsewhere,
    #[error(
        "{what} is {value} at step {step} (epoch {epoch}); stopped. Last good checkpoint: {last}"
    )]
    NonFinite {
        what: &'static str,
        value: f64,
        step: usize,
        epoch: usize,
        last: String,
    },
}

/// Eval data for the end of each epoch.
pub struct EvalData {
    pub features: PathBuf,
    pub examples: PathBuf,
}

pub struct TrainOptions {
    /// Resolved pipeline config: `train`, `eval`, `features.max_length`, `model.name_or_path`.
    pub config: PipelineConfig,
    pub features: PathBuf,
    /// Initialise randomly with the architecture of `model/config.json` instead of loading.
    pub random_init: bool,
    pub output: PathBuf,
    pub eval: Option<EvalData>,
    /// Continue from the newest checkpoint in `output` (start afresh when there is none).
    pub resume: bool,
    /// Replace an earlier run in `output`.
    pub overwrite: bool,
    pub progress: bool,
    /// How the model runs beyond the device (the config's `device`): CLI choices.
    pub run: RunOptions,
}

#[derive(Debug, serde::Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs: usize,
    pub features: usize,
    pub train_loss: f64,
    pub train_seconds: f64,
    pub train_features_per_second: f64,
    pub resumed_from_step: Option<usize>,
    pub model: PathBuf,
    /// Where it trained (`cpu`, `cuda:0`).
    pub device: String,
    pub eval: Option<serde_json::Map<String, serde_json::Value>>,
    /// Peak resident memory of the process (Linux), in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// `VmHWM` of /proc/self/status: the process's peak resident set, in MiB (Linux only).
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Micro-batches per optimizer step at the end of an epoch may be fewer (HF steps anyway).
pub(crate) fn steps_per_epoch(batches: usize, accumulation: usize) -> usize {
    batches.div_ceil(accumulation.max(1)).max(1)
}

impl TrainError {
    /// Whether every rank is stopping with this error (so each can print and exit in turn)
    /// or it is this rank's alone (then the job must be ended for the others).
    pub fn ending(&self) -> qa_dist::Ending {
        match self {
            TrainError::Together(_) | TrainError::Elsewhere => qa_dist::Ending::Together,
            _ if self.same_on_every_rank() => qa_dist::Ending::Together,
            _ => qa_dist::Ending::Alone,
        }
    }

    /// Every rank meets this error at the same point with the same words (it comes from
    /// numbers summed over all ranks), so rank 0's line says it for all.
    pub fn same_on_every_rank(&self) -> bool {
        matches!(self, TrainError::NonFinite { .. })
    }
}

/// `result` once every rank knows whether any failed (see `qa_dist::together`).
pub(crate) fn together<T>(
    comm: &dyn Collective,
    result: Result<T, TrainError>,
) -> Result<T, TrainError> {
    let solo = comm.world() == 1;
    qa_dist::together(comm, result).map_err(|s| match s {
        Stopped::Here(e) if solo => e,
        Stopped::Here(e) => TrainError::Together(Box::new(e)),
        Stopped::Elsewhere => TrainError::Elsewhere,
    })
}

/// The parts of two configs that change the arithmetic of a run must agree to resume it.
/// `batch_size` may differ when the global batch (`batch_size x world`) does not, and the
/// precision may change (with a warning: `trainer::resumed_state`).
pub(crate) fn resume_compatible(
    (a, a_world): (&PipelineConfig, usize),
    (b, b_world): (&PipelineConfig, usize),
) -> bool {
    let mut a = a.clone();
    let (t, bt) = (&mut a.train, &b.train);
    if t.batch_size * a_world == bt.batch_size * b_world {
        t.batch_size = bt.batch_size;
    }
    t.save_steps = bt.save_steps;
    t.save_total_limit = bt.save_total_limit;
    t.logging_steps = bt.logging_steps;
    t.precision = bt.precision;
    a.train == b.train && a.features == b.features && a.model == b.model
}

pub(crate) fn labels(batch: &[&Feature]) -> (Vec<i64>, Vec<i64>) {
    batch
        .iter()
        .map(|f| {
            let (s, e) = f.labels.expect("train features carry labels");
            (s as i64, e as i64)
        })
        .unzip()
}

fn prepare_output(opts: &TrainOptions) -> Result<(), TrainError> {
    let out = &opts.output;
    let existing = out.join("checkpoints").exists()
        || out.join("model").exists()
        || out.join("metrics.jsonl").exists();
    if existing && !opts.resume && !opts.overwrite {
        return Err(TrainError::Input {
            path: out.clone(),
            message: "holds an earlier training run; pass --resume to continue it or --overwrite to start over".into(),
        });
    }
    if opts.overwrite && !opts.resume {
        for sub in ["checkpoints", "eval"] {
            let p = out.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| squad_core::Error::io(&p, e))?;
            }
        }
    }
    std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| squad_core::Error::io(out, e))?;
    Ok(())
}

/// Runs (or resumes) a training run in one process; see the crate docs for what it writes.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    train_on(opts, Rc::new(Solo))
}

/// Runs (or resumes) a training run as one of `comm`'s ranks, each taking its share of every
/// global batch. Only rank 0 holds the run-directory lock and writes; the others write
/// nothing. Every rank stops together on bad inputs or a disagreement with rank 0.
pub fn train_on(opts: &TrainOptions, comm: Comm) -> Result<TrainSummary, TrainError> {
    let c = &*comm;
    let device = qa_model::device::device_for_rank(&opts.config.device, c.local_rank())?;
    let comm = qa_dist::on_device(comm.clone(), &device)
        .map_err(|message| TrainError::Ranks { message })?;
    let c = &*comm;
    let plan = RunPlan::new(device, Mode::Train, opts.run.clone());
    let inputs = together(c, load_inputs(opts))?;
    together(c, agree_with_rank0(c, opts, &inputs))?;
    let writer = c.rank() == 0;
    let _lock = together(c, writer.then(|| lock_output(opts)).transpose())?;
    let resume_from = match (opts.resume, writer) {
        (true, true) => newest_intact_checkpoint(&opts.output.join("checkpoints")),
        _ => Ok(None),
    };
    let resume_from = rank0_checkpoint(c, together(c, resume_from)?);
    let mut trainer = together(
        c,
        Trainer::prepare(opts, &inputs, plan, resume_from, comm.clone()),
    )?;
    trainer.run(&inputs)?;
    trainer.finish(&inputs)
}

/// Takes the run directory (one qa-train at a time) and readies it.
fn lock_output(opts: &TrainOptions) -> Result<DirLock, TrainError> {
    let lock = DirLock::acquire(
        &opts.output,
        "qa-train",
        "wait for it to end (or stop it), then rerun with --resume to continue its run",
    )?;
    prepare_output(opts)?;
    Ok(lock)
}

/// Rank 0's checkpoint to resume from, on every rank (all read it on a shared filesystem).
fn rank0_checkpoint(
    comm: &dyn Collective,
    found: Option<(usize, PathBuf)>,
) -> Option<(usize, PathBuf)> {
    if comm.world() == 1 {
        return found;
    }
    let mut bytes = found
        .map(|(step, dir)| format!("{step}\n{}", dir.display()))
        .unwrap_or_default()
        .into_bytes();
    comm.broadcast(&mut bytes);
    let text = String::from_utf8(bytes).ok()?;
    let (step, dir) = text.split_once('\n')?;
    Some((step.parse().ok()?, PathBuf::from(dir)))
}

/// Every rank trains on the same features with the same resolved config as rank 0.
fn agree_with_rank0(
    comm: &dyn Collective,
    opts: &TrainOptions,
    inputs: &Inputs,
) -> Result<(), TrainError> {
    let rank = comm.rank();
    let sha = inputs.features_sha256.as_bytes();
    if let Some(theirs) = qa_dist::differs_from_rank0(comm, sha) {
        return Err(TrainError::Ranks {
            message: format!(
                "{} differs from rank 0's features: sha256 {} here, {} on rank 0",
                opts.features.display(),
                inputs.features_sha256,
                String::from_utf8_lossy(&theirs)
            ),
        });
    }
    let yaml = opts.config.to_yaml();
    if let Some(theirs) = qa_dist::differs_from_rank0(comm, yaml.as_bytes()) {
        let theirs = String::from_utf8_lossy(&theirs).into_owned();
        let (mine, other) = yaml
            .lines()
            .zip(theirs.lines().chain(std::iter::repeat("")))
            .find(|(a, b)| a != b)
            .unwrap_or(("", ""));
        return Err(TrainError::Ranks {
            message: format!(
                "rank {rank}'s resolved config differs from rank 0's: `{}` here, `{}` on rank 0",
                mine.trim(),
                other.trim()
            ),
        });
    }
    Ok(())
}

/// Reads and checks the training features (and the eval set): labels present, not empty,
/// not longer than the model can take, a recorded data order that fits.
fn load_inputs(opts: &TrainOptions) -> Result<Inputs, TrainError> {
    let tc = &opts.config.train;
    let input_error = |path: &std::path::Path, message: String| TrainError::Input {
        path: path.to_path_buf(),
        message,
    };
    let (feats, split, meta) = features::read(&opts.features)?;
    if split != FeatureSplit::Train {
        return Err(input_error(
            &opts.features,
            "eval features have no labels: make train features (qa-features --split train)".into(),
        ));
    }
    if feats.is_empty() {
        return Err(input_error(
            &opts.features,
            "no features to train on".into(),
        ));
    }
    let features_sha256 = squad_core::fsutil::sha256_file(&opts.features)?;
    let eval_set = match &opts.eval {
        Some(e) => Some(EvalSet::load(&e.features, &e.examples, None)?),
        None => None,
    };
    let max_length = meta
        .get(features::meta::MAX_LENGTH)
        .and_then(|v| v.parse::<usize>().ok());
    let recorded_order: Option<Vec<usize>> = match &tc.data_order {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| squad_core::Error::io(path, e))?;
            let order: Vec<usize> = serde_json::from_str(&text).map_err(|e| {
                input_error(
                    path,
                    format!("expected a JSON list of feature indices: {e}"),
                )
            })?;
            order::replayed_batches(&order, feats.len(), tc.batch_size, 0)
                .map_err(|message| input_error(path, message))?;
            Some(order)
        }
        None => None,
    };
    Ok(Inputs {
        lengths: feats.iter().map(Feature::len).collect(),
        features: feats,
        features_sha256,
        recorded_order,
        eval_set,
        max_length,
    })
}

/// Flat values of a tensor at `indices` (for comparing against sampled reference tensors).
pub fn gather_flat(t: &Tensor, indices: &[usize]) -> Result<Vec<f32>, TrainError> {
    let flat: Vec<f32> = t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
    Ok(indices.iter().map(|&i| flat[i]).collect())
}
