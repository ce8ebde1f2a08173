//! What a checkpoint holds besides the model, so that `--resume` continues bit-exactly:
//! `trainer_state.json` (step, data position, RNG state, running sums) and
//! `optimizer.safetensors` (AdamW moments).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use qa_model::DropoutRng;
use serde::{Deserialize, Serialize};

use crate::optim::{AdamW, AdamWConfig, Moments};
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
    /// Dropout stream: ChaCha8 seed (hex) and word position (decimal; u128 overflows JSON).
    pub dropout_seed: String,
    pub dropout_word_pos: String,
    pub features_sha256: String,
    /// Sum of step losses so far (the run's mean training loss at the end).
    pub loss_sum: f64,
    /// Current logging window: summed step losses and their count.
    pub window_loss_sum: f64,
    pub window_steps: usize,
    pub features_seen: usize,
    pub train_seconds: f64,
}

impl TrainerState {
    pub fn set_dropout(&mut self, rng: &DropoutRng) {
        let (seed, pos) = rng.state();
        self.dropout_seed = seed.iter().map(|b| format!("{b:02x}")).collect();
        self.dropout_word_pos = pos.to_string();
    }

    pub fn dropout(&self, path: &Path) -> Result<DropoutRng, TrainError> {
        let bad = || TrainError::Resume {
            path: path.into(),
            message: "bad dropout RNG state".into(),
        };
        let bytes: Vec<u8> = (0..self.dropout_seed.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(self.dropout_seed.get(i..i + 2).unwrap_or("x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        let pos: u128 = self.dropout_word_pos.parse().map_err(|_| bad())?;
        Ok(DropoutRng::from_state(seed, pos))
    }

    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self).expect("json"))
            .map_err(|e| squad_core::Error::io(&path, e))?;
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

pub fn write_optimizer(opt: &AdamW, dir: &Path) -> Result<(), TrainError> {
    let mut tensors = HashMap::new();
    for (name, m) in &opt.moments {
        let n = m.m.len();
        tensors.insert(
            format!("exp_avg.{name}"),
            Tensor::from_slice(&m.m, n, &Device::Cpu)?,
        );
        tensors.insert(
            format!("exp_avg_sq.{name}"),
            Tensor::from_slice(&m.v, n, &Device::Cpu)?,
        );
    }
    let path = dir.join(OPTIMIZER_FILE);
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}

pub fn read_optimizer(config: AdamWConfig, steps: u64, dir: &Path) -> Result<AdamW, TrainError> {
    let path = dir.join(OPTIMIZER_FILE);
    let tensors =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| TrainError::Resume {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let mut moments: BTreeMap<String, Moments> = BTreeMap::new();
    for (key, t) in tensors {
        let values: Vec<f32> = t.to_vec1()?;
        if let Some(name) = key.strip_prefix("exp_avg_sq.") {
            moments.entry(name.into()).or_insert_with(empty).v = values;
        } else if let Some(name) = key.strip_prefix("exp_avg.") {
            moments.entry(name.into()).or_insert_with(empty).m = values;
        }
    }
    let mut opt = AdamW::new(config);
    opt.steps = steps;
    opt.moments = moments;
    Ok(opt)
}

fn empty() -> Moments {
    Moments {
        m: vec![],
        v: vec![],
    }
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
