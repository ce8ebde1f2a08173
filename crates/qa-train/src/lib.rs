//! Fine-tuning a BERT checkpoint for extractive QA with HF Trainer semantics: seeded shuffle
//! per epoch, dynamic (or max-length) padding, dropout from a seeded host RNG, AdamW with HF's
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use qa_eval::evaluate::{evaluate_model, write_outputs, EvalError, EvalSet};
use qa_model::checkpoint::save_with;
use qa_model::loss::qa_loss;
use qa_model::params::decays;
use qa_model::{make_batch, BertForQuestionAnswering, Checkpoint, DropoutRng, Params};
use squad_core::features::{self, FeatureSplit};
use squad_core::postprocess::PostprocessConfig;
use squad_core::{Feature, PipelineConfig};

use metrics_log::MetricsLog;
use optim::{clip_grad_norm, AdamW, AdamWConfig, LinearSchedule};
use state::{list_checkpoints, TrainerState, CHECKPOINT_PREFIX, CONFIG_FILE};

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
    #[error("{}: cannot resume: {message}", path.display())]
    Resume { path: PathBuf, message: String },
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
    pub eval: Option<serde_json::Map<String, serde_json::Value>>,
    /// Peak resident memory of the process (Linux), in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// `VmHWM` of /proc/self/status: the process's peak resident set, in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Micro-batches per optimizer step at the end of an epoch may be fewer (HF steps anyway).
fn steps_per_epoch(batches: usize, accumulation: usize) -> usize {
    batches.div_ceil(accumulation.max(1)).max(1)
}

/// The parts of two configs that change the arithmetic of a run must agree to resume it.
fn resume_compatible(a: &PipelineConfig, b: &PipelineConfig) -> bool {
    let mut a = a.clone();
    let (t, bt) = (&mut a.train, &b.train);
    t.save_steps = bt.save_steps;
    t.save_total_limit = bt.save_total_limit;
    t.logging_steps = bt.logging_steps;
    a.train == b.train && a.features == b.features && a.model == b.model
}

struct Run<'a> {
    config: &'a PipelineConfig,
    checkpoints_dir: PathBuf,
    tokenizer_src: PathBuf,
    bert: qa_model::BertConfig,
    params: Params,
    model: BertForQuestionAnswering,
    optimizer: AdamW,
    state: TrainerState,
    dropout: DropoutRng,
    log: MetricsLog,
    last_checkpoint: Option<PathBuf>,
}

impl Run<'_> {
    /// Saves `checkpoints/checkpoint-<step>` atomically and prunes old ones.
    fn save_checkpoint(&mut self) -> Result<(), TrainError> {
        let dir = self
            .checkpoints_dir
            .join(format!("{CHECKPOINT_PREFIX}{}", self.state.global_step));
        self.state.set_dropout(&self.dropout);
        let (state, optimizer, yaml) = (&self.state, &self.optimizer, self.config.to_yaml());
        save_with(
            &dir,
            &self.bert,
            &self.params,
            Some(&self.tokenizer_src),
            |tmp| {
                state.write(tmp).map_err(to_model_error(tmp))?;
                state::write_optimizer(optimizer, tmp).map_err(to_model_error(tmp))?;
                std::fs::write(tmp.join(CONFIG_FILE), &yaml).map_err(|e| qa_model::ModelError::Io {
                    path: tmp.join(CONFIG_FILE),
                    source: e,
                })
            },
        )?;
        self.last_checkpoint = Some(dir);
        let all = list_checkpoints(&self.checkpoints_dir);
        let keep = self.config.train.save_total_limit.max(1);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }

    fn last_good(&self) -> String {
        self.last_checkpoint
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    }
}

fn to_model_error(dir: &Path) -> impl Fn(TrainError) -> qa_model::ModelError + '_ {
    move |e| qa_model::ModelError::Checkpoint {
        path: dir.into(),
        message: e.to_string(),
    }
}

/// Gradient of every parameter as a host vector (zeros where the loss does not reach).
fn host_grads(
    grads: &candle_core::backprop::GradStore,
    params: &Params,
) -> Result<BTreeMap<String, Vec<f32>>, TrainError> {
    let mut out = BTreeMap::new();
    for (name, var) in &params.vars {
        let g = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; var.elem_count()],
        };
        out.insert(name.clone(), g);
    }
    Ok(out)
}

fn labels(batch: &[&Feature]) -> (Vec<i64>, Vec<i64>) {
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

/// Runs (or resumes) a training run; see the crate docs for what it writes.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let config = &opts.config;
    let tc = &config.train;
    let (feats, split, meta) = features::read(&opts.features)?;
    if split != FeatureSplit::Train {
        return Err(TrainError::Input {
            path: opts.features.clone(),
            message:
                "eval features have no labels: make train features (qa-features --split train)"
                    .into(),
        });
    }
    if feats.is_empty() {
        return Err(TrainError::Input {
            path: opts.features.clone(),
            message: "no features to train on".into(),
        });
    }
    let features_sha256 = squad_core::fsutil::sha256_file(&opts.features)?;
    let eval_set = match &opts.eval {
        Some(e) => Some(EvalSet::load(&e.features, &e.examples, None)?),
        None => None,
    };
    prepare_output(opts)?;
    let checkpoints_dir = opts.output.join("checkpoints");
    let resume_from = if opts.resume {
        list_checkpoints(&checkpoints_dir).pop()
    } else {
        None
    };

    let device = Device::Cpu;
    let ck = match &resume_from {
        Some((_, dir)) => {
            let saved = PipelineConfig::from_yaml_file(&dir.join(CONFIG_FILE))?;
            if !resume_compatible(&saved, config) {
                return Err(TrainError::Resume {
                    path: dir.clone(),
                    message: "was made with other model/features/train settings; use --overwrite to start over".into(),
                });
            }
            Checkpoint::load(dir.to_str().expect("utf-8 path"), tc.seed, &device)?
        }
        None if opts.random_init => {
            Checkpoint::random(Path::new(&config.model.name_or_path), tc.seed, &device)?
        }
        None => Checkpoint::load(&config.model.name_or_path, tc.seed, &device)?,
    };
    if let (Some(set), false) = (&eval_set, opts.random_init) {
        set.check_tokenizer(&ck.dir)?;
    }
    if meta
        .get(features::meta::MAX_LENGTH)
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|l| l > ck.config.max_position_embeddings)
    {
        return Err(TrainError::Input {
            path: opts.features.clone(),
            message: format!(
                "max_length exceeds the model's max_position_embeddings ({})",
                ck.config.max_position_embeddings
            ),
        });
    }

    let lengths: Vec<usize> = feats.iter().map(Feature::len).collect();
    let recorded_order: Option<Vec<usize>> = match &tc.data_order {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| squad_core::Error::io(path, e))?;
            let order: Vec<usize> = serde_json::from_str(&text).map_err(|e| TrainError::Input {
                path: path.clone(),
                message: format!("expected a JSON list of feature indices: {e}"),
            })?;
            order::replayed_batches(&order, feats.len(), tc.batch_size, 0).map_err(|message| {
                TrainError::Input {
                    path: path.clone(),
                    message,
                }
            })?;
            Some(order)
        }
        None => None,
    };
    let batches_per_epoch = feats.len().div_ceil(tc.batch_size.max(1));
    let accumulation = tc.gradient_accumulation_steps.max(1);
    let per_epoch = steps_per_epoch(batches_per_epoch, accumulation);
    let total_steps = tc.max_steps.unwrap_or(per_epoch * tc.epochs);
    let epochs = total_steps.div_ceil(per_epoch);
    let schedule = LinearSchedule::new(
        tc.learning_rate,
        total_steps,
        tc.warmup_steps,
        tc.warmup_ratio,
    );
    let adam = AdamWConfig {
        beta1: tc.adam_beta1,
        beta2: tc.adam_beta2,
        eps: tc.adam_epsilon,
        weight_decay: tc.weight_decay,
    };

    let (state, optimizer, dropout, log) = match &resume_from {
        Some((step, dir)) => {
            let state = TrainerState::read(dir)?;
            if state.features_sha256 != features_sha256 {
                return Err(TrainError::Resume {
                    path: dir.clone(),
                    message: format!(
                        "was trained on other features than {}",
                        opts.features.display()
                    ),
                });
            }
            let optimizer = state::read_optimizer(adam, *step as u64, dir)?;
            let dropout = state.dropout(dir)?;
            let log = MetricsLog::resume(&opts.output.join("metrics.jsonl"), *step)?;
            (state, optimizer, dropout, log)
        }
        None => {
            let dropout = DropoutRng::new(tc.seed.wrapping_add(1));
            let mut state = TrainerState {
                global_step: 0,
                total_steps,
                epoch: 0,
                batches_done: 0,
                dropout_seed: String::new(),
                dropout_word_pos: String::new(),
                features_sha256,
                loss_sum: 0.0,
                window_loss_sum: 0.0,
                window_steps: 0,
                features_seen: 0,
                train_seconds: 0.0,
            };
            state.set_dropout(&dropout);
            let log = MetricsLog::create(&opts.output.join("metrics.jsonl"))?;
            (state, AdamW::new(adam), dropout, log)
        }
    };
    config.save(&opts.output.join("config.yaml"))?;

    let Checkpoint {
        dir: ck_dir,
        config: bert,
        params,
        model,
        ..
    } = ck;
    let mut run = Run {
        config,
        checkpoints_dir,
        tokenizer_src: ck_dir,
        bert,
        params,
        model,
        optimizer,
        state,
        dropout,
        log,
        last_checkpoint: resume_from.as_ref().map(|(_, d)| d.clone()),
    };
    let resumed_from_step = resume_from.map(|(s, _)| s);

    let bar = if opts.progress {
        ProgressBar::new(total_steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
            .expect("template"),
    );
    bar.set_position(run.state.global_step as u64);
    // Under make, cron or a batch scheduler stderr is a log file, where indicatif draws
    // nothing: print a plain line per logging window there instead.
    let log_lines = opts.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let pad_to = tc.pad_to_max_length.then_some(config.features.max_length);
    let dropout_on = tc.dropout;
    let mut last_eval = None;

    while run.state.epoch < epochs {
        let epoch = run.state.epoch;
        let batches = match &recorded_order {
            Some(o) => order::replayed_batches(o, feats.len(), tc.batch_size, epoch).map_err(
                |message| TrainError::Input {
                    path: tc.data_order.clone().unwrap_or_default(),
                    message,
                },
            )?,
            None => {
                order::epoch_batches(&lengths, tc.batch_size, tc.seed, epoch, tc.group_by_length)
            }
        };
        while run.state.batches_done < batches.len() && run.state.global_step < total_steps {
            let started = Instant::now();
            let from = run.state.batches_done;
            let group = &batches[from..(from + accumulation).min(batches.len())];
            let mut grads: Option<BTreeMap<String, Vec<f32>>> = None;
            let mut step_loss = 0f64;
            let mut step_features = 0;
            for indices in group {
                let batch_feats: Vec<&Feature> = indices.iter().map(|&i| &feats[i]).collect();
                let batch = make_batch(&batch_feats, pad_to, &device)?;
                let rng = if dropout_on {
                    Some(&mut run.dropout)
                } else {
                    None
                };
                let (start, end) = run.model.forward(&batch, rng)?;
                let (starts, ends) = labels(&batch_feats);
                let (loss, _, _) = qa_loss(&start, &end, &starts, &ends)?;
                let loss = (loss / accumulation as f64)?;
                let value = loss.to_scalar::<f32>()? as f64;
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        what: "loss",
                        value,
                        step: run.state.global_step + 1,
                        epoch: epoch + 1,
                        last: run.last_good(),
                    });
                }
                step_loss += value;
                step_features += batch_feats.len();
                let g = host_grads(&loss.backward()?, &run.params)?;
                match grads.as_mut() {
                    None => grads = Some(g),
                    Some(acc) => {
                        for (name, add) in g {
                            for (a, b) in
                                acc.get_mut(&name).expect("same names").iter_mut().zip(add)
                            {
                                *a += b;
                            }
                        }
                    }
                }
            }
            let mut grads = grads.expect("at least one micro-batch");
            let grad_norm = clip_grad_norm(&mut grads, tc.max_grad_norm);
            if !grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "gradient norm",
                    value: grad_norm,
                    step: run.state.global_step + 1,
                    epoch: epoch + 1,
                    last: run.last_good(),
                });
            }
            let lr = schedule.lr(run.state.global_step);
            run.optimizer.step(&run.params.vars, &grads, lr, decays)?;
            drop(grads);

            let seconds = started.elapsed().as_secs_f64();
            let s = &mut run.state;
            s.global_step += 1;
            s.batches_done += group.len();
            s.loss_sum += step_loss;
            s.window_loss_sum += step_loss;
            s.window_steps += 1;
            s.features_seen += step_features;
            s.train_seconds += seconds;
            let speed = step_features as f64 / seconds.max(1e-9);
            bar.set_position(s.global_step as u64);
            bar.set_message(format!(
                "loss {step_loss:.4}  lr {lr:.3e}  {speed:.2} features/s"
            ));
            let step = s.global_step;
            let at_end = step == total_steps;
            if tc.logging_steps > 0 && (step % tc.logging_steps == 0 || at_end) {
                let loss = s.window_loss_sum / s.window_steps.max(1) as f64;
                let record = record! {
                    "step" => step,
                    "epoch" => epoch as f64 + s.batches_done as f64 / batches.len() as f64,
                    "loss" => loss,
                    "grad_norm" => grad_norm,
                    "learning_rate" => lr,
                    "features_per_second" => speed,
                    "train_seconds" => s.train_seconds,
                };
                s.window_loss_sum = 0.0;
                s.window_steps = 0;
                run.log.append(record)?;
                if log_lines {
                    let eta = s.train_seconds / step as f64 * (total_steps - step) as f64;
                    eprintln!(
                        "qa-train: step {step}/{total_steps}  loss {loss:.4}  lr {lr:.3e}  {speed:.2} features/s  eta {eta:.0}s"
                    );
                }
            }
            if tc.save_steps > 0 && step % tc.save_steps == 0 && !at_end {
                run.save_checkpoint()?;
            }
        }
        // End of the epoch (or of max_steps): save, then evaluate (HF: evaluation_strategy
        // "epoch"). A run killed during the evaluation resumes here and redoes it.
        let finished = run.state.global_step >= total_steps;
        if finished || run.state.batches_done >= batches.len() {
            if finished {
                run.state.epoch = epochs - 1;
            }
            let already_saved = run.last_checkpoint.as_ref().is_some_and(|d| {
                d.ends_with(format!("{CHECKPOINT_PREFIX}{}", run.state.global_step))
            });
            if !already_saved {
                run.save_checkpoint()?;
            }
            if let Some(set) = &eval_set {
                bar.suspend(|| eprintln!("qa-train: evaluating after epoch {}", epoch + 1));
                let ev = &config.eval;
                let pp = PostprocessConfig {
                    n_best_size: ev.n_best_size,
                    max_answer_length: ev.max_answer_length,
                    version_2_with_negative: ev.version_2_with_negative || set.squad_v2,
                    null_score_diff_threshold: ev.null_score_diff_threshold,
                };
                let evaluation = evaluate_model(&run.model, set, ev.batch_size, &pp, false)?;
                let report = write_outputs(
                    &evaluation,
                    set,
                    &opts
                        .output
                        .join("eval")
                        .join(format!("epoch-{}", epoch + 1)),
                )?;
                bar.suspend(|| {
                    eprintln!(
                        "qa-train: epoch {} eval: {}",
                        epoch + 1,
                        serde_json::Value::Object(report.metrics.clone())
                    )
                });
                run.log.append(record! {
                    "step" => run.state.global_step,
                    "epoch" => (epoch + 1) as f64,
                    "eval" => report.metrics,
                    "eval_features_per_second" => report.features_per_second,
                })?;
                last_eval = Some(evaluation.metrics);
            }
            run.state.epoch += 1;
            run.state.batches_done = 0;
        }
    }
    bar.finish_and_clear();

    let s = &run.state;
    let summary = TrainSummary {
        steps: s.global_step,
        epochs,
        features: feats.len(),
        train_loss: s.loss_sum / s.global_step.max(1) as f64,
        train_seconds: s.train_seconds,
        train_features_per_second: s.features_seen as f64 / s.train_seconds.max(1e-9),
        resumed_from_step,
        model: opts.output.join("model"),
        eval: last_eval,
        peak_rss_mib: peak_rss_mib(),
    };
    run.log.append(record! {
        "step" => s.global_step,
        "done" => true,
        "train_loss" => summary.train_loss,
        "train_seconds" => summary.train_seconds,
        "train_features_per_second" => summary.train_features_per_second,
    })?;
    let yaml = config.to_yaml();
    let state_copy = run.state.clone();
    save_with(
        &summary.model,
        &run.bert,
        &run.params,
        Some(&run.tokenizer_src),
        |tmp| {
            state_copy.write(tmp).map_err(to_model_error(tmp))?;
            std::fs::write(tmp.join(CONFIG_FILE), &yaml).map_err(|e| qa_model::ModelError::Io {
                path: tmp.join(CONFIG_FILE),
                source: e,
            })
        },
    )?;
    if let Err(e) = plot::training_curve(&run.log.records, &opts.output.join("training_curve.svg"))
    {
        eprintln!("qa-train: warning: no training curve: {e}");
    }
    squad_core::fsutil::write_atomic_bytes(
        &opts.output.join("train_summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("json")
            .as_bytes(),
    )?;
    Ok(summary)
}

/// One optimizer step on one batch with dropout off and no schedule: for parity checks
/// against torch. Returns (loss, grad norm before clipping).
pub fn single_step(
    model: &BertForQuestionAnswering,
    params: &Params,
    optimizer: &mut AdamW,
    batch: &[&Feature],
    pad_to: Option<usize>,
    lr: f64,
    max_grad_norm: f64,
) -> Result<(f64, f64), TrainError> {
    let b = make_batch(batch, pad_to, &Device::Cpu)?;
    let (start, end) = model.forward(&b, None)?;
    let (starts, ends) = labels(batch);
    let (loss, _, _) = qa_loss(&start, &end, &starts, &ends)?;
    let mut grads = host_grads(&loss.backward()?, params)?;
    let norm = clip_grad_norm(&mut grads, max_grad_norm);
    optimizer.step(&params.vars, &grads, lr, decays)?;
    Ok((loss.to_scalar::<f32>()? as f64, norm))
}

/// Flat values of a tensor at `indices` (for comparing against sampled reference tensors).
pub fn gather_flat(t: &Tensor, indices: &[usize]) -> Result<Vec<f32>, TrainError> {
    let flat: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok(indices.iter().map(|&i| flat[i]).collect())
}
