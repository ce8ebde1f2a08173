//! The training loop as a small trainer that reads top to bottom: `prepare` (a fresh start or
//! the newest intact checkpoint), `run` (epochs of `step`s, logging, checkpoints, evaluation at
//! each epoch's end), `finish` (the final model and summary). How the model runs (device,
//! kernels) is decided once, in the `RunPlan` `train` builds, and travels with the model, the
//! optimizer and each batch; each step is `Learner::step`.
//!
//! A step leaves its loss and gradient norm where they were computed. On the CPU they are
//! read at once; on a GPU they are read at logging and checkpoint steps only (`flush`), so
//! the host never waits on the device in between.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use qa_dist::{Collective, Comm};
use qa_eval::evaluate::{evaluate_model, write_outputs, EvalSet};
use qa_eval::postprocess::PostprocessConfig;
use qa_model::checkpoint::save_with;
use qa_model::{BertForQuestionAnswering, Checkpoint, DropoutRng, Mode, RunPlan};
use squad_core::{Feature, PipelineConfig};

use crate::metrics_log::{DoneRecord, EvalRecord, MetricsLog, StepRecord};
use crate::optim::{AdamW, AdamWConfig, LinearSchedule, Scalar};
use crate::state::{self, TrainerState, CHECKPOINT_PREFIX, CONFIG_FILE};
use crate::step::Learner;
use crate::{
    order, peak_rss_mib, resume_compatible, steps_per_epoch, together, TrainError, TrainOptions,
    TrainSummary,
};

/// What training reads besides the model: the features, their order, the eval set.
pub(crate) struct Inputs {
    pub features: Vec<Feature>,
    pub features_sha256: String,
    pub lengths: Vec<usize>,
    pub recorded_order: Option<Vec<usize>>,
    pub eval_set: Option<EvalSet>,
    /// The features' max_length (from their metadata).
    pub max_length: Option<usize>,
}

impl Inputs {
    /// The global micro-batches (feature indices; `batch_size x world` each) of `epoch`: the
    /// same on every rank and for every split of the global batch.
    fn epoch_batches(
        &self,
        config: &PipelineConfig,
        epoch: usize,
        world: usize,
    ) -> Result<Vec<Vec<usize>>, TrainError> {
        let tc = &config.train;
        let global_batch = tc.batch_size * world;
        match &self.recorded_order {
            Some(o) => order::replayed_batches(o, self.features.len(), global_batch, epoch)
                .map_err(|message| TrainError::Input {
                    path: tc.data_order.clone().unwrap_or_default(),
                    message,
                }),
            None => Ok(order::epoch_batches(
                &self.lengths,
                global_batch,
                tc.seed,
                epoch,
                tc.group_by_length,
            )),
        }
    }
}

/// The shape of the run: how many steps, how they are batched and the learning rates.
struct RunShape {
    accumulation: usize,
    total_steps: usize,
    epochs: usize,
    schedule: LinearSchedule,
    pad_to: Option<usize>,
}

impl RunShape {
    fn new(config: &PipelineConfig, features: usize, world: usize) -> Self {
        let tc = &config.train;
        let batches_per_epoch = features.div_ceil(tc.batch_size.max(1) * world);
        let accumulation = tc.gradient_accumulation_steps.max(1);
        let per_epoch = steps_per_epoch(batches_per_epoch, accumulation);
        let total_steps = tc.max_steps.unwrap_or(per_epoch * tc.epochs);
        RunShape {
            accumulation,
            total_steps,
            epochs: total_steps.div_ceil(per_epoch),
            schedule: LinearSchedule::new(
                tc.learning_rate,
                total_steps,
                tc.warmup_steps,
                tc.warmup_ratio,
            ),
            pad_to: tc.pad_to_max_length.then_some(config.features.max_length),
        }
    }
}

/// A finished step whose loss and gradient norm may still be on the device.
struct PendingStep {
    step: usize,
    epoch: usize,
    /// Fractional epoch at the end of the step (for the log).
    epoch_position: f64,
    loss: Scalar,
    grad_norm: Scalar,
    lr: f64,
}

/// Progress for a terminal (a bar) or a log file (a plain line per logging window).
struct Progress {
    bar: ProgressBar,
    lines: bool,
}

impl Progress {
    fn new(enabled: bool, total_steps: usize, at: usize) -> Self {
        let bar = if enabled {
            ProgressBar::new(total_steps as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
                .expect("template"),
        );
        bar.set_position(at as u64);
        // Under make, cron or a batch scheduler stderr is a log file, where indicatif draws
        // nothing: print a plain line per logging window there instead.
        let lines = enabled && !std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress { bar, lines }
    }

    /// A line on stderr from rank 0 (`enabled` is false on the others).
    fn say(&self, line: &str) {
        self.bar
            .suspend(|| squad_core::exit::say(&format!("qa-train: {line}")));
    }
}

pub(crate) struct Trainer<'a> {
    opts: &'a TrainOptions,
    /// Rank 0: the one rank that writes (checkpoints, model, metrics, plot, summary).
    writer: bool,
    config: &'a PipelineConfig,
    plan: RunPlan,
    shape: RunShape,
    checkpoints_dir: PathBuf,
    tokenizer_src: PathBuf,
    bert: qa_model::BertConfig,
    learner: Learner,
    /// The same parameters, running for inference (the evaluation at each epoch's end).
    eval_model: BertForQuestionAnswering,
    state: TrainerState,
    log: MetricsLog,
    last_checkpoint: Option<PathBuf>,
    resumed_from_step: Option<usize>,
    pending: Vec<PendingStep>,
    /// Features and wall time since the last flush (the logged throughput).
    window: (usize, Instant),
    progress: Progress,
    last_eval: Option<serde_json::Map<String, serde_json::Value>>,
}

impl<'a> Trainer<'a> {
    /// Loads the base model (or the newest intact checkpoint with `--resume`) to run as
    /// `plan` says, with the optimizer, dropout generator and metrics log to continue with;
    /// checks that every rank starts from the same parameters.
    pub fn prepare(
        opts: &'a TrainOptions,
        inputs: &Inputs,
        plan: RunPlan,
        resume_from: Option<(usize, PathBuf)>,
        comm: Comm,
    ) -> Result<Self, TrainError> {
        let config = &opts.config;
        let tc = &config.train;
        let (world, writer) = (comm.world(), comm.rank() == 0);
        let shape = RunShape::new(config, inputs.features.len(), world);
        let ck = load_checkpoint(opts, resume_from.as_ref(), &plan, world)?;
        check_inputs_fit(opts, inputs, &ck)?;
        together(&*comm, same_parameters(&*comm, &ck.params))?;
        let mut optimizer = AdamW::new(adam_config(config), &ck.params, &plan);
        let metrics = opts.output.join("metrics.jsonl");
        let (mut state, log) = match &resume_from {
            Some((step, dir)) => {
                let state = resumed_state(opts, inputs, dir, &plan, writer)?;
                state::read_optimizer(&mut optimizer, *step as u64, dir, &plan.device)?;
                let log = match writer {
                    true => MetricsLog::resume(&metrics, *step)?,
                    false => MetricsLog::in_memory(),
                };
                (state, log)
            }
            None => (
                TrainerState::new(shape.total_steps, &inputs.features_sha256),
                match writer {
                    true => MetricsLog::create(&metrics)?,
                    false => MetricsLog::in_memory(),
                },
            ),
        };
        state.device = qa_model::device::name(&plan.device);
        state.world_size = world;
        state.dropout_masks = state::DROPOUT_MASKS.into();
        if writer {
            config.save(&opts.output.join("config.yaml"))?;
        }
        let progress = Progress::new(
            opts.progress && writer,
            shape.total_steps,
            state.global_step,
        );
        let Checkpoint {
            dir: tokenizer_src,
            config: bert,
            params,
            model,
            ..
        } = ck;
        let eval_model =
            BertForQuestionAnswering::new(bert.clone(), &params, &plan.with_mode(Mode::Inference))?;
        let learner = Learner {
            model,
            params,
            optimizer,
            dropout: tc.dropout.then(|| DropoutRng::new(tc.seed.wrapping_add(1))),
            pad_to: shape.pad_to,
            accumulation: shape.accumulation,
            max_grad_norm: tc.max_grad_norm,
            comm,
        };
        Ok(Trainer {
            opts,
            writer,
            config,
            plan,
            shape,
            checkpoints_dir: opts.output.join("checkpoints"),
            tokenizer_src,
            bert,
            learner,
            eval_model,
            state,
            log,
            last_checkpoint: resume_from.as_ref().map(|(_, d)| d.clone()),
            resumed_from_step: resume_from.map(|(s, _)| s),
            pending: vec![],
            window: (0, Instant::now()),
            progress,
            last_eval: None,
        })
    }

    /// Every remaining step of every remaining epoch.
    pub fn run(&mut self, inputs: &Inputs) -> Result<(), TrainError> {
        let config: &'a PipelineConfig = self.config;
        let tc = &config.train;
        while self.state.epoch < self.shape.epochs {
            let epoch = self.state.epoch;
            let batches = inputs.epoch_batches(config, epoch, self.learner.comm.world())?;
            while self.state.batches_done < batches.len()
                && self.state.global_step < self.shape.total_steps
            {
                let from = self.state.batches_done;
                let group = &batches[from..(from + self.shape.accumulation).min(batches.len())];
                let micro_batches: Vec<Vec<&Feature>> = group
                    .iter()
                    .map(|batch| batch.iter().map(|&i| &inputs.features[i]).collect())
                    .collect();
                let started = Instant::now();
                let lr = self.shape.schedule.lr(self.state.global_step);
                let step = self
                    .learner
                    .step(self.state.global_step, &micro_batches, lr)?;
                let s = &mut self.state;
                s.global_step += 1;
                s.batches_done += group.len();
                s.features_seen += step.features;
                self.window.0 += step.features;
                self.pending.push(PendingStep {
                    step: s.global_step,
                    epoch,
                    epoch_position: epoch as f64 + s.batches_done as f64 / batches.len() as f64,
                    loss: step.loss,
                    grad_norm: step.grad_norm,
                    lr: step.lr,
                });
                let n = s.global_step;
                let at_end = n == self.shape.total_steps;
                let log_now =
                    tc.logging_steps > 0 && (n.is_multiple_of(tc.logging_steps) || at_end);
                let save_now = tc.save_steps > 0 && n.is_multiple_of(tc.save_steps) && !at_end;
                // The host reads each step's numbers at once; a GPU run at logging steps only.
                if self.plan.host || log_now || save_now {
                    self.flush()?;
                }
                self.state.train_seconds += started.elapsed().as_secs_f64();
                self.progress.bar.set_position(n as u64);
                if save_now {
                    self.save_checkpoint()?;
                }
            }
            self.end_epoch(inputs, epoch, batches.len())?;
        }
        Ok(())
    }

    /// Reads the pending steps' numbers (waiting for the device), stops on a non-finite loss
    /// or gradient norm, adds them to the running sums and logs the logging steps.
    fn flush(&mut self) -> Result<(), TrainError> {
        let config: &'a PipelineConfig = self.config;
        let tc = &config.train;
        let pending = std::mem::take(&mut self.pending);
        let mut values = Vec::with_capacity(pending.len());
        for p in &pending {
            values.push((p.loss.value()?, p.grad_norm.value()?));
        }
        let speed = self.window.0 as f64 / self.window.1.elapsed().as_secs_f64().max(1e-9);
        self.window = (0, Instant::now());
        for (p, (loss, grad_norm)) in pending.iter().zip(values) {
            for (what, value) in [("loss", loss), ("gradient norm", grad_norm)] {
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        what,
                        value,
                        step: p.step,
                        epoch: p.epoch + 1,
                        last: self.last_good(),
                    });
                }
            }
            let s = &mut self.state;
            s.loss_sum += loss;
            s.window_loss_sum += loss;
            s.window_steps += 1;
            self.progress.bar.set_message(format!(
                "loss {loss:.4}  lr {:.3e}  {speed:.2} features/s",
                p.lr
            ));
            let total = self.shape.total_steps;
            if tc.logging_steps > 0 && (p.step % tc.logging_steps == 0 || p.step == total) {
                let window_loss = s.window_loss_sum / s.window_steps.max(1) as f64;
                let record = StepRecord {
                    step: p.step,
                    epoch: p.epoch_position,
                    loss: window_loss,
                    grad_norm,
                    learning_rate: p.lr,
                    features_per_second: speed,
                    train_seconds: s.train_seconds,
                };
                s.window_loss_sum = 0.0;
                s.window_steps = 0;
                let eta = s.train_seconds / p.step as f64 * (total - p.step) as f64;
                self.log.append(record)?;
                if self.progress.lines {
                    self.progress.say(&format!(
                        "step {}/{total}  loss {window_loss:.4}  lr {:.3e}  {speed:.2} features/s  eta {eta:.0}s",
                        p.step, p.lr
                    ));
                }
            }
        }
        Ok(())
    }

    /// End of an epoch (or of max_steps): save, then evaluate (HF: evaluation_strategy
    /// "epoch"). A run killed during the evaluation resumes here and redoes it.
    fn end_epoch(
        &mut self,
        inputs: &Inputs,
        epoch: usize,
        batches: usize,
    ) -> Result<(), TrainError> {
        // Waits for the device's last steps: training time, not evaluation time.
        let started = Instant::now();
        self.flush()?;
        self.state.train_seconds += started.elapsed().as_secs_f64();
        let finished = self.state.global_step >= self.shape.total_steps;
        if !finished && self.state.batches_done < batches {
            return Ok(());
        }
        if finished {
            self.state.epoch = self.shape.epochs - 1;
        }
        let step = self.state.global_step;
        let already_saved = self
            .last_checkpoint
            .as_ref()
            .is_some_and(|d| d.ends_with(format!("{CHECKPOINT_PREFIX}{step}")));
        if !already_saved {
            self.save_checkpoint()?;
        }
        if let Some(set) = &inputs.eval_set {
            self.evaluate(set, epoch)?;
        }
        self.state.epoch += 1;
        self.state.batches_done = 0;
        self.window = (0, Instant::now());
        Ok(())
    }

    fn evaluate(&mut self, set: &EvalSet, epoch: usize) -> Result<(), TrainError> {
        self.progress
            .say(&format!("evaluating after epoch {}", epoch + 1));
        let ev = &self.config.eval;
        let pp = PostprocessConfig {
            n_best_size: ev.n_best_size,
            max_answer_length: ev.max_answer_length,
            version_2_with_negative: ev.version_2_with_negative || set.squad_v2,
            null_score_diff_threshold: ev.null_score_diff_threshold,
        };
        let comm = &*self.learner.comm;
        let evaluation = evaluate_model(&self.eval_model, set, ev.batch_size, &pp, false, comm)?;
        if !self.writer {
            self.last_eval = Some(evaluation.metrics);
            return Ok(());
        }
        let dir = self
            .opts
            .output
            .join("eval")
            .join(format!("epoch-{}", epoch + 1));
        let report = write_outputs(&evaluation, set, &dir)?;
        let metrics = serde_json::Value::Object(report.metrics.clone());
        self.progress
            .say(&format!("epoch {} eval: {metrics}", epoch + 1));
        self.log.append(EvalRecord {
            step: self.state.global_step,
            epoch: (epoch + 1) as f64,
            eval: report.metrics,
            eval_features_per_second: report.features_per_second,
        })?;
        self.last_eval = Some(evaluation.metrics);
        Ok(())
    }

    /// Saves `checkpoints/checkpoint-<step>` atomically and prunes old ones.
    fn save_checkpoint(&mut self) -> Result<(), TrainError> {
        let dir = self
            .checkpoints_dir
            .join(format!("{CHECKPOINT_PREFIX}{}", self.state.global_step));
        if self.writer {
            let (state, optimizer) = (&self.state, &self.learner.optimizer);
            self.save_model(&dir, |tmp| state::write_optimizer(optimizer, tmp), state)?;
            state::prune_checkpoints(&self.checkpoints_dir, self.config.train.save_total_limit);
        }
        self.last_checkpoint = Some(dir);
        self.window = (0, Instant::now());
        Ok(())
    }

    /// An HF checkpoint directory with the trainer state, the config and whatever `extra`
    /// writes, renamed into place only when complete.
    fn save_model(
        &self,
        dir: &Path,
        extra: impl FnOnce(&Path) -> Result<(), TrainError>,
        state: &TrainerState,
    ) -> Result<(), TrainError> {
        let yaml = self.config.to_yaml();
        save_with(
            dir,
            &self.bert,
            &self.learner.params,
            Some(&self.tokenizer_src),
            |tmp| {
                state.write(tmp)?;
                extra(tmp)?;
                let path = tmp.join(CONFIG_FILE);
                std::fs::write(&path, &yaml)
                    .map_err(|e| qa_model::ModelError::io(&path, "write", e))?;
                Ok(())
            },
        )
    }

    fn last_good(&self) -> String {
        self.last_checkpoint
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    }

    /// The final model (`OUTPUT/model`), the training curve and `train_summary.json`.
    pub fn finish(mut self, inputs: &Inputs) -> Result<TrainSummary, TrainError> {
        self.progress.bar.finish_and_clear();
        let s = &self.state;
        let summary = TrainSummary {
            steps: s.global_step,
            epochs: self.shape.epochs,
            features: inputs.features.len(),
            train_loss: s.loss_sum / s.global_step.max(1) as f64,
            train_seconds: s.train_seconds,
            train_features_per_second: s.features_seen as f64 / s.train_seconds.max(1e-9),
            resumed_from_step: self.resumed_from_step,
            model: self.opts.output.join("model"),
            device: s.device.clone(),
            eval: self.last_eval.take(),
            peak_rss_mib: peak_rss_mib(),
        };
        if !self.writer {
            return Ok(summary);
        }
        self.log.append(DoneRecord {
            step: s.global_step,
            done: true,
            train_loss: summary.train_loss,
            train_seconds: summary.train_seconds,
            train_features_per_second: summary.train_features_per_second,
        })?;
        self.save_model(&summary.model, |_| Ok(()), &self.state)?;
        let output = &self.opts.output;
        if let Err(e) =
            crate::plot::training_curve(&self.log.records, &output.join("training_curve.svg"))
        {
            self.progress
                .say(&format!("warning: no training curve: {e}"));
        }
        squad_core::fsutil::write_atomic_bytes(
            &output.join("train_summary.json"),
            serde_json::to_string_pretty(&summary)
                .expect("json")
                .as_bytes(),
        )?;
        Ok(summary)
    }
}

/// `cuda:1` → `cuda`: runs resume bit-exactly on the same kind of device.
fn kind(device: &str) -> &str {
    device.split(':').next().unwrap_or(device)
}

/// The model to start from: the resumed checkpoint, a random init, or the base checkpoint.
fn load_checkpoint(
    opts: &TrainOptions,
    resume_from: Option<&(usize, PathBuf)>,
    plan: &RunPlan,
    world: usize,
) -> Result<Checkpoint, TrainError> {
    let config = &opts.config;
    let seed = config.train.seed;
    Ok(match resume_from {
        Some((_, dir)) => {
            let saved = PipelineConfig::from_yaml_file(&dir.join(CONFIG_FILE))?;
            let saved_world = TrainerState::read(dir)?.world_size;
            if !resume_compatible((&saved, saved_world), (config, world)) {
                return Err(TrainError::Resume {
                    path: dir.clone(),
                    message: "was made with other model/features/train settings; use --overwrite to start over".into(),
                });
            }
            Checkpoint::load(dir.to_str().expect("utf-8 path"), seed, plan)?
        }
        None if opts.random_init => {
            Checkpoint::random(Path::new(&config.model.name_or_path), seed, plan)?
        }
        None => Checkpoint::load(&config.model.name_or_path, seed, plan)?,
    })
}

/// The features fit the model (max_length within its positions) and the eval set was made
/// with its tokenizer.
fn check_inputs_fit(
    opts: &TrainOptions,
    inputs: &Inputs,
    ck: &Checkpoint,
) -> Result<(), TrainError> {
    let max_position = ck.config.max_position_embeddings;
    if inputs.max_length.is_some_and(|l| l > max_position) {
        return Err(TrainError::Input {
            path: opts.features.clone(),
            message: format!(
                "max_length exceeds the model's max_position_embeddings ({max_position})"
            ),
        });
    }
    if let (Some(set), false) = (&inputs.eval_set, opts.random_init) {
        set.check_tokenizer(&ck.dir)?;
    }
    Ok(())
}

fn adam_config(config: &PipelineConfig) -> AdamWConfig {
    let tc = &config.train;
    AdamWConfig {
        beta1: tc.adam_beta1,
        beta2: tc.adam_beta2,
        eps: tc.adam_epsilon,
        weight_decay: tc.weight_decay,
    }
}

/// The trainer state of checkpoint `dir`, checked against this run's features; a warning
/// when it was saved on another kind of device or in another precision (the continuation is
/// not bit-exact).
fn resumed_state(
    opts: &TrainOptions,
    inputs: &Inputs,
    dir: &Path,
    plan: &RunPlan,
    writer: bool,
) -> Result<TrainerState, TrainError> {
    let state = TrainerState::read(dir)?;
    if state.features_sha256 != inputs.features_sha256 {
        return Err(TrainError::Resume {
            path: dir.to_path_buf(),
            message: format!(
                "was trained on other features than {}",
                opts.features.display()
            ),
        });
    }
    let device_name = qa_model::device::name(&plan.device);
    let warn = |what: String| {
        if writer {
            squad_core::exit::say(&format!("qa-train: warning: {}: {what}", dir.display()));
        }
    };
    if !state.device.is_empty() && kind(&state.device) != kind(&device_name) {
        warn(format!(
            "saved by a run on {}; continuing on {device_name} (not bit-exact)",
            state.device
        ));
    }
    let saved = PipelineConfig::from_yaml_file(&dir.join(CONFIG_FILE))?
        .train
        .precision;
    if saved != plan.precision() {
        warn(format!(
            "saved by a run in precision {saved}; continuing in {} (not bit-exact)",
            plan.precision()
        ));
    }
    if opts.config.train.dropout && state.dropout_masks != state::DROPOUT_MASKS {
        warn("saved before dropout masks followed global-batch positions; continuing with the new masks (not bit-exact)".into());
    }
    Ok(state)
}

/// Every rank starts from rank 0's parameters: a sha256 of their bytes, compared.
fn same_parameters(comm: &dyn Collective, params: &qa_model::Params) -> Result<(), TrainError> {
    if comm.world() == 1 {
        return Ok(());
    }
    let digest = params.sha256()?;
    match qa_dist::differs_from_rank0(comm, digest.as_bytes()) {
        None => Ok(()),
        Some(theirs) => Err(TrainError::Ranks {
            message: format!(
                "rank {} starts from other parameters than rank 0 (sha256 {digest} here, {} on rank 0)",
                comm.rank(),
                String::from_utf8_lossy(&theirs)
            ),
        }),
    }
}
