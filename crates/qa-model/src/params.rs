//! The model's tensors by canonical name (`bert.`-prefixed encoder, `qa_outputs.*`; each
//! layer's Q, K and V fused, `crate::schema`), as candle `Var`s so the trainer can update
//! them. Loading accepts names with or without the `bert.` prefix and legacy LayerNorm
//! `gamma`/`beta`, ignores `pooler.*`, `embeddings.position_ids` and pre-training heads
//! (`cls.*`), and gives a base encoder a fresh, seeded QA head. Saving writes HF's names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::schema::{checkpoint_shapes, fuse_qkv, memory_name, split_qkv};

#[derive(Debug, Clone)]
pub struct Params {
    pub vars: BTreeMap<String, Var>,
}

/// What loading found besides the expected tensors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The checkpoint had no `qa_outputs`: the head was freshly initialised (untrained).
    pub fresh_head: bool,
    /// Tensors that are neither expected nor known to be safely ignorable.
    pub unexpected: Vec<String>,
}

/// Canonical name of a checkpoint tensor, or None for tensors the QA model never uses.
pub fn canonical_name(name: &str) -> Option<String> {
    let name = name.strip_prefix("model.").unwrap_or(name);
    if name.ends_with("position_ids") || name.contains("pooler.") || name.starts_with("cls.") {
        return None;
    }
    let mut n = name.to_string();
    if n.contains("LayerNorm.") {
        n = n
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias");
    }
    if !n.starts_with("bert.") && !n.starts_with("qa_outputs.") {
        n = format!("bert.{n}");
    }
    Some(n)
}

/// Weight matrices and embeddings get decoupled weight decay; biases and LayerNorm weights
/// do not (HF Trainer's parameter groups).
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("LayerNorm")
}

fn normal_tensor(
    rng: &mut ChaCha8Rng,
    std: f64,
    shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let dist = Normal::new(0f32, std as f32).expect("std > 0");
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| dist.sample(rng)).collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

impl Params {
    /// sha256 (hex) of every parameter's name and f32 bytes in name order: equal exactly
    /// when the parameters are.
    pub fn sha256(&self) -> candle_core::Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (name, var) in &self.vars {
            h.update(name.as_bytes());
            let values: Vec<f32> = var
                .as_tensor()
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            for v in values {
                h.update(v.to_le_bytes());
            }
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The tensor of parameter `name`.
    pub fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        let var = self
            .vars
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
        Ok(var.as_tensor().clone())
    }

    /// Every parameter of `config`'s model is here with its shape (`schema`), and no other.
    pub fn check(&self, config: &BertConfig) -> candle_core::Result<()> {
        let expected = crate::schema::parameter_shapes(config);
        for (name, shape) in &expected {
            let var = self
                .vars
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
            if var.dims() != shape.as_slice() {
                candle_core::bail!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    var.dims()
                );
            }
        }
        if self.vars.len() != expected.len() {
            candle_core::bail!(
                "{} tensors, the model has {}",
                self.vars.len(),
                expected.len()
            );
        }
        Ok(())
    }

    /// A randomly initialised model as HF does it (normal(0, initializer_range) weights and
    /// embeddings, zero biases, LayerNorm 1/0), from a seeded host RNG.
    pub fn random(config: &BertConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in checkpoint_shapes(config) {
            let t = if name.contains("LayerNorm.weight") {
                Tensor::ones(shape.as_slice(), DType::F32, device)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, device)?
            } else {
                normal_tensor(&mut rng, config.initializer_range, &shape, device)?
            };
            tensors.insert(name, t);
        }
        let params = Params::from_tensors(tensors)?;
        // HF zeroes the padding row of the word embeddings (`padding_idx`).
        let word = &params.vars["bert.embeddings.word_embeddings.weight"];
        let pad = config.pad_token_id as usize;
        if pad < config.vocab_size {
            let table = word.as_tensor().slice_assign(
                &[pad..pad + 1, 0..config.hidden_size],
                &Tensor::zeros((1, config.hidden_size), DType::F32, device)?,
            )?;
            word.set(&table)?;
        }
        Ok(params)
    }

    /// In-memory parameters from checkpoint tensors (HF names): Q, K and V fused.
    fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Self> {
        let vars = fuse_qkv(tensors)?
            .into_iter()
            .map(|(name, t)| Ok((name, Var::from_tensor(&t)?)))
            .collect::<Result<_>>()?;
        Ok(Params { vars })
    }

    /// Loads `model.safetensors` (or `pytorch_model.bin`) from `dir` and checks it against
    /// `config`. A missing QA head is initialised from `seed`.
    pub fn load(
        dir: &Path,
        config: &BertConfig,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let (file, tensors) = read_weights(dir, device)?;
        let expected: HashMap<String, Vec<usize>> = checkpoint_shapes(config).into_iter().collect();
        let mut report = LoadReport::default();
        let mut found = HashMap::new();
        for (name, tensor) in tensors {
            let Some(canonical) = canonical_name(&name) else {
                continue;
            };
            let Some(shape) = expected.get(&canonical) else {
                report.unexpected.push(name);
                continue;
            };
            if tensor.dims() != shape.as_slice() {
                return Err(ModelError::Weights {
                    path: file.clone(),
                    message: format!(
                        "tensor {name} has shape {:?}, config.json implies {shape:?}",
                        tensor.dims()
                    ),
                });
            }
            found.insert(canonical, tensor.to_dtype(DType::F32)?.to_device(device)?);
        }
        report.fresh_head = add_fresh_head(&mut found, config, seed, device)?;
        let mut missing: Vec<&String> = expected
            .keys()
            .filter(|n| !found.contains_key(*n))
            .collect();
        missing.sort();
        if let Some(first) = missing.first() {
            return Err(ModelError::Weights {
                path: file,
                message: format!("missing tensor {first} ({} missing in all)", missing.len()),
            });
        }
        report.unexpected.sort();
        Ok((Params::from_tensors(found)?, report))
    }

    /// Replaces tensors with those of a safetensors file (checkpoint names, same shapes), e.g.
    /// a QA head from elsewhere. Returns how many were replaced.
    pub fn overwrite_from(&mut self, path: &Path, device: &Device) -> Result<usize> {
        let weights = |message: String| ModelError::Weights {
            path: path.to_path_buf(),
            message,
        };
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|e| weights(e.to_string()))?;
        let current = self.checkpoint_tensors()?;
        for (name, t) in &tensors {
            let now = current
                .get(name)
                .ok_or_else(|| weights(format!("unknown tensor {name}")))?;
            if now.dims() != t.dims() {
                return Err(weights(format!(
                    "tensor {name} has shape {:?}, model {:?}",
                    t.dims(),
                    now.dims()
                )));
            }
        }
        // Untouched tensors are the variables' own storage: set only what the file changes.
        let touched: HashSet<String> = tensors.keys().map(|n| memory_name(n)).collect();
        let mut merged = current;
        merged.extend(tensors.iter().map(|(n, t)| (n.clone(), t.clone())));
        for (name, t) in fuse_qkv(merged)? {
            if touched.contains(&name) {
                self.vars[&name].set(&t.to_dtype(DType::F32)?)?;
            }
        }
        Ok(tensors.len())
    }

    /// All tensors by checkpoint (HF) name: what `save` writes, Q, K and V apart.
    pub fn checkpoint_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, var) in &self.vars {
            out.extend(split_qkv(name, var.as_tensor())?);
        }
        Ok(out)
    }

    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.checkpoint_tensors()?, path).map_err(|e| {
            ModelError::WriteWeights {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })
    }
}

/// The tensors of `dir/model.safetensors`, else `dir/pytorch_model.bin`, and which file.
fn read_weights(dir: &Path, device: &Device) -> Result<(PathBuf, Vec<(String, Tensor)>)> {
    let safetensors = dir.join("model.safetensors");
    let pickle = dir.join("pytorch_model.bin");
    let unreadable = |path: &Path, e: candle_core::Error| ModelError::Weights {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if safetensors.exists() {
        let t = candle_core::safetensors::load(&safetensors, device)
            .map_err(|e| unreadable(&safetensors, e))?;
        Ok((safetensors, t.into_iter().collect()))
    } else if pickle.exists() {
        let t = candle_core::pickle::read_all(&pickle).map_err(|e| unreadable(&pickle, e))?;
        Ok((pickle, t))
    } else {
        Err(ModelError::Checkpoint {
            path: dir.to_path_buf(),
            message: "no model.safetensors or pytorch_model.bin".into(),
        })
    }
}

/// A base encoder (no `qa_outputs` at all) gets a fresh head: normal(0, initializer_range)
/// weights from `seed`, zero bias. Returns whether it did.
fn add_fresh_head(
    tensors: &mut HashMap<String, Tensor>,
    config: &BertConfig,
    seed: u64,
    device: &Device,
) -> Result<bool> {
    let has_head = ["qa_outputs.weight", "qa_outputs.bias"].map(|n| tensors.contains_key(n));
    if has_head != [false, false] {
        return Ok(false);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = normal_tensor(
        &mut rng,
        config.initializer_range,
        &[2, config.hidden_size],
        device,
    )?;
    tensors.insert("qa_outputs.weight".into(), w);
    tensors.insert(
        "qa_outputs.bias".into(),
        Tensor::zeros(2, DType::F32, device)?,
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonicalised() {
        assert_eq!(
            canonical_name("embeddings.word_embeddings.weight").unwrap(),
            "bert.embeddings.word_embeddings.weight"
        );
        assert_eq!(
            canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma").unwrap(),
            "bert.encoder.layer.0.output.LayerNorm.weight"
        );
        assert_eq!(
            canonical_name("encoder.layer.1.attention.output.LayerNorm.beta").unwrap(),
            "bert.encoder.layer.1.attention.output.LayerNorm.bias"
        );
        assert_eq!(
            canonical_name("qa_outputs.bias").unwrap(),
            "qa_outputs.bias"
        );
        for ignored in [
            "pooler.dense.weight",
            "bert.pooler.dense.bias",
            "embeddings.position_ids",
            "cls.predictions.bias",
        ] {
            assert_eq!(canonical_name(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn weight_decay_groups_match_hf() {
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(decays("qa_outputs.weight"));
        assert!(!decays("qa_outputs.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
    }
}
