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

fn looks_like_hub_id(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['/', '.', '~'])
        && name.matches('/').count() <= 1
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// A local checkpoint directory for `name_or_path`, downloading a hub id when needed.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    let path = Path::new(name_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let err = |message: String| ModelError::Resolve {
        name: name_or_path.into(),
        message,
    };
    if path.exists() {
        return Err(err("is a file; give the checkpoint directory".into()));
    }
    if !looks_like_hub_id(name_or_path) {
        return Err(err("no such directory".into()));
    }
    let offline_hint = "run `make model` for the offline default (data/models/all-MiniLM-L6-v2) or give a local checkpoint directory";
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v == "1") {
        return Err(err(format!(
            "not a local directory, and HF_HUB_OFFLINE=1; {offline_hint}"
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(false)
        .build()
        .map_err(|e| {
            err(format!(
                "cannot use the Hugging Face hub ({e}); {offline_hint}"
            ))
        })?;
    let repo = api.model(name_or_path.to_string());
    let config = repo.get("config.json").map_err(|e| {
        err(format!(
            "not a local directory and not fetchable from the hub ({e}); {offline_hint}"
        ))
    })?;
    if repo.get("model.safetensors").is_err() {
        repo.get("pytorch_model.bin")
            .map_err(|e| err(format!("no weights on the hub: {e}")))?;
    }
    for f in TOKENIZER_FILES {
        let _ = repo.get(f); // optional
    }
    Ok(config
        .parent()
        .expect("file in a snapshot dir")
        .to_path_buf())
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
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths() {
        assert!(looks_like_hub_id("bert-base-uncased"));
        assert!(looks_like_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!looks_like_hub_id("./runs/x/model"));
        assert!(!looks_like_hub_id("/abs/dir"));
        assert!(!looks_like_hub_id("a/b/c"));
    }
}
