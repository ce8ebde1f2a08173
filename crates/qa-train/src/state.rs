//! What a checkpoint holds besides the model, so that `--resume` continues bit-exactly:
//! `trainer_state.json` (step, data position, RNG state, running sums) and
//! `optimizer.safetensors` (AdamW moments).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Device;
use qa_model::checkpoint::{SafetensorsError, VerifyError};
use qa_model::schema::{fuse_qkv, split_qkv};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamW, Moments};
use crate::TrainError;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "training_config.yaml";
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub global_step: usize,
    pub total_steps: usize,
    /// Epoch in progress (0-based) and the micro-batches of it already consumed.
    pub epoch: usize,
    pub batches_done: usize,
    pub features_sha256: String,
    /// Sum of step losses so far (the run's mean training loss at the end).
    pub loss_sum: f64,
    /// Current logging window: summed step losses and their count.
    pub window_loss_sum: f64,
    pub window_steps: usize,
    pub features_seen: usize,
    pub train_seconds: f64,
    /// Where the run ran (`cpu`, `cuda:0`); empty in checkpoints from before devices.
    #[serde(default)]
    pub device: String,
    /// Processes the run's global batch was split across (1 in checkpoints from before MPI).
    #[serde(default = "one")]
    pub world_size: usize,
    /// How its dropout masks were drawn (`DROPOUT_MASKS`; empty in checkpoints from before
    /// masks followed global-batch positions).
    #[serde(default)]
    pub dropout_masks: String,
}

/// The dropout masks of this version: a function of each feature's global-batch position.
pub const DROPOUT_MASKS: &str = "philox-global-rows";

fn one() -> usize {
    1
}

impl TrainerState {
    /// The state of a run about to take its first step.
    pub fn new(total_steps: usize, features_sha256: &str) -> Self {
        TrainerState {
            global_step: 0,
            total_steps,
            epoch: 0,
            batches_done: 0,
            features_sha256: features_sha256.into(),
            loss_sum: 0.0,
            window_loss_sum: 0.0,
            window_steps: 0,
            features_seen: 0,
            train_seconds: 0.0,
            device: String::new(),
            world_size: 1,
            dropout_masks: DROPOUT_MASKS.into(),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self).expect("json"))
            .map_err(|e| squad_core::Error::write(&path, e))?;
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| squad_core::Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Resume {
            path,
            message: e.to_string(),
        })
    }
}

/// `optimizer.safetensors`: each parameter's AdamW moments, flat, under HF's tensor names
/// (`exp_avg.NAME`, `exp_avg_sq.NAME`; the fused QKV moments split as their weights are).
pub fn write_optimizer(opt: &AdamW, dir: &Path) -> Result<(), TrainError> {
    let mut tensors = HashMap::new();
    for (name, moments) in &opt.moments {
        let (m, v) = moments.to_cpu()?;
        for (part, m) in split_qkv(name, &m)? {
            tensors.insert(format!("exp_avg.{part}"), m);
        }
        for (part, v) in split_qkv(name, &v)? {
            tensors.insert(format!("exp_avg_sq.{part}"), v);
        }
    }
    let path = dir.join(OPTIMIZER_FILE);
    candle_core::safetensors::save(&tensors, &path).map_err(|e| TrainError::Write {
        path,
        message: e.to_string(),
    })
}

/// Loads a checkpoint's AdamW state into `opt` (built for the run's parameters), placed where
/// they live, with `steps` steps taken.
pub fn read_optimizer(
    opt: &mut AdamW,
    steps: u64,
    dir: &Path,
    device: &Device,
) -> Result<(), TrainError> {
    let path = dir.join(OPTIMIZER_FILE);
    let unreadable = |message: String| TrainError::Resume {
        path: path.clone(),
        message,
    };
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| unreadable(e.to_string()))?;
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    for (key, t) in tensors {
        if let Some(name) = key.strip_prefix("exp_avg_sq.") {
            second.insert(name.to_string(), t);
        } else if let Some(name) = key.strip_prefix("exp_avg.") {
            first.insert(name.to_string(), t);
        }
    }
    let (mut first, mut second) = (fuse_qkv(first)?, fuse_qkv(second)?);
    let names: BTreeSet<String> = first.keys().chain(second.keys()).cloned().collect();
    opt.steps = steps;
    for name in names {
        let (Some(m), Some(v)) = (first.remove(&name), second.remove(&name)) else {
            return Err(unreadable(format!("{name}: exp_avg or exp_avg_sq missing")));
        };
        opt.moments
            .insert(name, Moments::from_tensors(&m, &v, device)?);
    }
    Ok(())
}

/// Step checkpoints under `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()?;
            e.path().join(STATE_FILE).exists().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// What `verify_checkpoint` found damaged in a step checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointDamage {
    /// The model's files (checksums, `config.json`, weights).
    #[error(transparent)]
    Model(#[from] VerifyError),
    #[error(transparent)]
    UnreadableTrainerState(TrainError),
    #[error(transparent)]
    BadOptimizerHeader(SafetensorsError),
    #[error(transparent)]
    UnreadableTrainingConfig(squad_core::Error),
}

/// Why a step checkpoint cannot be resumed from, if it cannot: the model checks of
/// `qa_model::checkpoint::verify` (recorded checksums, headers, shapes), then the trainer
/// state, the optimizer's header and the training config.
pub fn verify_checkpoint(dir: &Path) -> Result<(), CheckpointDamage> {
    qa_model::checkpoint::verify(dir)?;
    TrainerState::read(dir).map_err(CheckpointDamage::UnreadableTrainerState)?;
    qa_model::checkpoint::safetensors_shapes(&dir.join(OPTIMIZER_FILE))
        .map_err(CheckpointDamage::BadOptimizerHeader)?;
    squad_core::PipelineConfig::from_yaml_file(&dir.join(CONFIG_FILE))
        .map_err(CheckpointDamage::UnreadableTrainingConfig)?;
    Ok(())
}

/// The newest intact checkpoint under `dir` (None when there is no checkpoint at all). Each
/// damaged newer one gets one warning line and is renamed `damaged-checkpoint-N` (kept for
/// inspection, out of the way of the run that redoes its steps). All damaged is an error.
pub fn newest_intact_checkpoint(dir: &Path) -> Result<Option<(usize, PathBuf)>, TrainError> {
    let mut all = list_checkpoints(dir);
    let mut damaged: Vec<(PathBuf, CheckpointDamage, PathBuf)> = vec![];
    while let Some((step, path)) = all.pop() {
        match verify_checkpoint(&path) {
            Ok(()) => {
                for (bad, why, moved) in &damaged {
                    eprintln!(
                        "qa-train: warning: {} is damaged ({why}); moved to {}, resuming from {} instead",
                        bad.display(),
                        moved.display(),
                        path.display()
                    );
                }
                return Ok(Some((step, path)));
            }
            Err(why) => {
                let moved = set_aside(&path)?;
                damaged.push((path, why, moved));
            }
        }
    }
    match damaged.first() {
        None => Ok(None),
        Some((bad, why, moved)) => Err(TrainError::Resume {
            path: bad.clone(),
            message: format!(
                "damaged ({why}; moved to {}) and no older checkpoint is intact; use --overwrite to start over",
                moved.display()
            ),
        }),
    }
}

/// Renames a damaged checkpoint to the first free `damaged-checkpoint-N[.k]` beside it.
fn set_aside(path: &Path) -> Result<PathBuf, TrainError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut target = path.with_file_name(format!("damaged-{name}"));
    let mut k = 1;
    while target.exists() {
        target = path.with_file_name(format!("damaged-{name}.{k}"));
        k += 1;
    }
    std::fs::rename(path, &target).map_err(|e| squad_core::Error::write(path, e))?;
    Ok(target)
}

/// Deletes all but the newest `keep` (at least 1) step checkpoints. Each is renamed
/// `.deleting-checkpoint-N` before it is deleted, so a run killed mid-delete leaves no half
/// checkpoint that looks like a checkpoint; such leftovers go at the next prune.
pub fn prune_checkpoints(dir: &Path, keep: usize) {
    let all = list_checkpoints(dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let name = old.file_name().unwrap_or_default().to_string_lossy();
        let doomed = old.with_file_name(format!("{DELETING_PREFIX}{name}"));
        if std::fs::rename(old, &doomed).is_ok() {
            let _ = std::fs::remove_dir_all(&doomed);
        }
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(DELETING_PREFIX)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

const DELETING_PREFIX: &str = ".deleting-";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamWConfig, Grads};
    use qa_model::{BertConfig, Params, RunPlan};

    /// The optimizer file keeps HF's tensor names (query, key and value apart, as written
    /// before Q/K/V were fused in memory) and reads back into the fused moments exactly.
    #[test]
    fn optimizer_state_round_trips_under_hf_names() {
        let config = BertConfig::tiny(30);
        let params = Params::random(&config, 1, &Device::Cpu).unwrap();
        let plan = RunPlan::cpu_train();
        let adam = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut opt = AdamW::new(adam, &params, &plan);
        let grads = params
            .vars
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    (0..v.elem_count()).map(|i| (i % 7) as f32 - 3.0).collect(),
                )
            })
            .collect();
        opt.step(&params, &Grads::Host(grads), 1e-3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_optimizer(&opt, dir.path()).unwrap();
        let saved =
            candle_core::safetensors::load(dir.path().join(OPTIMIZER_FILE), &Device::Cpu).unwrap();
        assert!(saved.contains_key("exp_avg.bert.encoder.layer.0.attention.self.key.weight"));
        assert!(saved.contains_key("exp_avg_sq.bert.encoder.layer.0.attention.self.value.bias"));
        assert!(
            !saved.keys().any(|k| k.contains("qkv")),
            "no in-memory names on disk"
        );
        let mut back = AdamW::new(adam, &params, &plan);
        read_optimizer(&mut back, 1, dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.steps, 1);
        assert_eq!(back.moments.len(), opt.moments.len());
        for (name, m) in &opt.moments {
            let (a, b) = (m.to_cpu().unwrap(), back.moments[name].to_cpu().unwrap());
            let flat = |t: &candle_core::Tensor| t.to_vec1::<f32>().unwrap();
            assert_eq!(flat(&a.0), flat(&b.0), "{name} exp_avg");
            assert_eq!(flat(&a.1), flat(&b.1), "{name} exp_avg_sq");
        }
    }
}
