//! Checkpoint directories in the HF layout: `config.json` + `model.safetensors` (+ tokenizer
//! files). A model argument is a local directory or a Hugging Face hub id fetched with
//! `hf-hub` when online.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::bert::BertForQuestionAnswering;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::params::{LoadReport, Params};

/// Tokenizer files copied into a saved checkpoint when the source has them.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: BertConfig,
    pub params: Params,
    pub model: BertForQuestionAnswering,
    pub report: LoadReport,
}

/// `cpu` now; `cuda` needs a build with candle's CUDA support, which this one lacks.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        other => Err(ModelError::Resolve {
            name: other.into(),
            message: "unknown or unsupported device (this build supports: cpu)".into(),
        }),
    }
}

/// A local checkpoint directory for `name_or_path`, downloading a hub id when needed.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    Ok(squad_core::hub::resolve(
        name_or_path,
        &[
            &["config.json"],
            &["model.safetensors", "pytorch_model.bin"],
        ],
        &TOKENIZER_FILES,
    )?)
}

impl Checkpoint {
    /// Loads `name_or_path`; a base encoder gets a fresh QA head from `seed` (see `report`).
    pub fn load(name_or_path: &str, seed: u64, device: &Device) -> Result<Self> {
        let dir = resolve(name_or_path)?;
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::Checkpoint {
                path: dir,
                message: "no config.json".into(),
            });
        }
        let config = BertConfig::from_file(&config_path)?;
        let (params, report) = Params::load(&dir, &config, seed, device)?;
        let model = BertForQuestionAnswering::new(config.clone(), &params)?;
        Ok(Checkpoint {
            dir,
            config,
            params,
            model,
            report,
        })
    }
}

impl Checkpoint {
    /// A randomly initialised model (HF's init, seeded) with the architecture of
    /// `dir/config.json`: for training from scratch and for memory benchmarks.
    pub fn random(dir: &Path, seed: u64, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let params = Params::random(&config, seed, device)?;
        let model = BertForQuestionAnswering::new(config.clone(), &params)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            params,
            model,
            report: LoadReport {
                fresh_head: true,
                unexpected: vec![],
            },
        })
    }
}

/// Writes an HF checkpoint directory that `BertForQuestionAnswering.from_pretrained` loads
/// with no missing or unexpected keys, atomically: built in a temp dir beside `out`, then
/// renamed over it. Tokenizer files are copied from `tokenizer_src` when present.
pub fn save(
    out: &Path,
    config: &BertConfig,
    params: &Params,
    tokenizer_src: Option<&Path>,
) -> Result<()> {
    save_with(out, config, params, tokenizer_src, |_| Ok(()))
}

/// `save`, with `extra` writing more files (trainer state, ...) into the staging directory
/// before it is renamed into place.
pub fn save_with(
    out: &Path,
    config: &BertConfig,
    params: &Params,
    tokenizer_src: Option<&Path>,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-ckpt-")
        .tempdir_in(&parent)
        .map_err(|e| io(&parent, e))?;
    std::fs::write(tmp.path().join("config.json"), config.to_qa_json())
        .map_err(|e| io(tmp.path(), e))?;
    params.save_safetensors(&tmp.path().join("model.safetensors"))?;
    if let Some(src) = tokenizer_src {
        for f in TOKENIZER_FILES {
            let from = src.join(f);
            if from.exists() {
                std::fs::copy(&from, tmp.path().join(f)).map_err(|e| io(&from, e))?;
            }
        }
    }
    extra(tmp.path())?;
    let staged = tmp.keep();
    #[cfg(unix)]
    {
        // Temp dirs and safetensors files are created private; outputs get the usual modes.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755));
        for entry in std::fs::read_dir(&staged).into_iter().flatten().flatten() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
        }
    }
    let old = parent.join(format!(
        ".old-{}-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    if out.exists() {
        std::fs::rename(out, &old).map_err(|e| io(out, e))?;
    }
    std::fs::rename(&staged, out).map_err(|e| io(out, e))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}
