//! Checkpoint directories in the HF layout: `config.json` + `model.safetensors` (+ tokenizer
//! files). A model argument is a local directory or a Hugging Face hub id fetched with
//! `hf-hub` when online.

use std::path::{Path, PathBuf};

use crate::bert::BertForQuestionAnswering;
use crate::config::BertConfig;
use crate::error::{ModelError, Result};
use crate::params::{LoadReport, Params};
use crate::plan::RunPlan;

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

pub use crate::device::device;

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
    /// Loads `name_or_path` onto the plan's device, the model running as `plan` says; a base
    /// encoder gets a fresh QA head from `seed` (see `report`).
    pub fn load(name_or_path: &str, seed: u64, plan: &RunPlan) -> Result<Self> {
        let dir = resolve(name_or_path)?;
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::Checkpoint {
                path: dir,
                message: "no config.json".into(),
            });
        }
        let config = BertConfig::from_file(&config_path)?;
        let (params, report) = Params::load(&dir, &config, seed, &plan.device)?;
        let model = BertForQuestionAnswering::new(config.clone(), &params, plan)?;
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
    pub fn random(dir: &Path, seed: u64, plan: &RunPlan) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let params = Params::random(&config, seed, &plan.device)?;
        let model = BertForQuestionAnswering::new(config.clone(), &params, plan)?;
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
/// before it is renamed into place. `extra` fails with the caller's error type.
pub fn save_with<E: From<ModelError>>(
    out: &Path,
    config: &BertConfig,
    params: &Params,
    tokenizer_src: Option<&Path>,
    extra: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = stage(&parent, config, params, tokenizer_src)?;
    extra(staging.path())?;
    write_checksums(staging.path())?;
    replace_with(out, &parent, staging)?;
    Ok(())
}

/// A temp dir in `parent` holding `config.json`, the weights and the tokenizer files.
fn stage(
    parent: &Path,
    config: &BertConfig,
    params: &Params,
    tokenizer_src: Option<&Path>,
) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, "create", e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-ckpt-")
        .tempdir_in(parent)
        .map_err(|e| ModelError::io(parent, "create a directory in", e))?;
    let config_path = tmp.path().join("config.json");
    std::fs::write(&config_path, config.to_qa_json())
        .map_err(|e| ModelError::io(&config_path, "write", e))?;
    params.save_safetensors(&tmp.path().join("model.safetensors"))?;
    if let Some(src) = tokenizer_src {
        for f in TOKENIZER_FILES {
            let from = src.join(f);
            if from.exists() {
                std::fs::copy(&from, tmp.path().join(f))
                    .map_err(|e| ModelError::io(&from, "copy", e))?;
            }
        }
    }
    Ok(tmp)
}

/// Renames the complete `staging` dir to `out` (in `parent`), replacing what was there.
fn replace_with(out: &Path, parent: &Path, staging: tempfile::TempDir) -> Result<()> {
    let staged = staging.keep();
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
        std::fs::rename(out, &old).map_err(|e| ModelError::io(out, "move aside", e))?;
    }
    std::fs::rename(&staged, out).map_err(|e| ModelError::io(out, "rename into", e))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// `sha256sum`-style list of a checkpoint's files (`sha256sum -c checksums.sha256` checks it),
/// written when the checkpoint is saved so that damage found later is certain and cheap.
pub const CHECKSUMS_FILE: &str = "checksums.sha256";

fn write_checksums(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, "list", e))?
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != CHECKSUMS_FILE)
        .collect();
    names.sort();
    let mut text = String::new();
    for name in names {
        let sum = squad_core::fsutil::sha256_file(&dir.join(&name))?;
        text.push_str(&format!("{sum}  {name}\n"));
    }
    let path = dir.join(CHECKSUMS_FILE);
    std::fs::write(&path, text).map_err(|e| ModelError::io(&path, "write", e))
}

/// What `verify` found damaged in a checkpoint directory. The texts name the file (and the
/// tensor) first, as the warning of a resumed run quotes them.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{sums}: {0}", sums = CHECKSUMS_FILE)]
    UnreadableChecksums(std::io::Error),
    #[error("{sums}: bad line {0:?}", sums = CHECKSUMS_FILE)]
    BadChecksumLine(String),
    /// A file the checksums list cannot be read (missing, unreadable).
    #[error(transparent)]
    UnreadableFile(squad_core::Error),
    #[error("{file}: sha256 differs from the one recorded at save time")]
    ChecksumMismatch { file: String },
    /// `config.json` is missing or does not parse.
    #[error(transparent)]
    Config(ModelError),
    #[error(transparent)]
    Weights(#[from] SafetensorsError),
    #[error("model.safetensors: {tensor} has shape {found:?}, config.json implies {expected:?}")]
    ShapeMismatch {
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("model.safetensors: no tensor {tensor}")]
    MissingTensor { tensor: String },
}

/// A safetensors file that cannot be read or whose header (or its sizes, checked against
/// the file's length) does not parse.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{file}: {source}")]
    Unreadable {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    BadHeader {
        file: String,
        source: safetensors::SafeTensorError,
    },
}

/// Why a saved checkpoint directory cannot be used, if it cannot: a file that differs from the
/// checksum recorded at save time (when there is one), an unreadable `config.json`, or a
/// `model.safetensors` whose header does not parse or whose tensors do not have the shapes
/// `config.json` implies. Reads every listed file whole for its checksum, and the weights
/// whole again for safetensors' checks (which compare the header with the file's length).
pub fn verify(dir: &Path) -> std::result::Result<(), VerifyError> {
    verify_checksums(dir)?;
    let config = BertConfig::from_file(&dir.join("config.json")).map_err(VerifyError::Config)?;
    let found = safetensors_shapes(&dir.join("model.safetensors"))?;
    for (tensor, expected) in crate::schema::checkpoint_shapes(&config) {
        match found.get(&tensor) {
            Some(s) if *s == expected => {}
            Some(s) => {
                return Err(VerifyError::ShapeMismatch {
                    found: s.clone(),
                    tensor,
                    expected,
                })
            }
            None => return Err(VerifyError::MissingTensor { tensor }),
        }
    }
    Ok(())
}

/// Compares the files of `dir` with the sums in its `checksums.sha256`, if it has one.
fn verify_checksums(dir: &Path) -> std::result::Result<(), VerifyError> {
    let sums = dir.join(CHECKSUMS_FILE);
    if !sums.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&sums).map_err(VerifyError::UnreadableChecksums)?;
    for line in text.lines() {
        let (want, name) = line
            .split_once("  ")
            .ok_or_else(|| VerifyError::BadChecksumLine(line.into()))?;
        let got = squad_core::fsutil::sha256_file(&dir.join(name))
            .map_err(VerifyError::UnreadableFile)?;
        if got != want {
            return Err(VerifyError::ChecksumMismatch { file: name.into() });
        }
    }
    Ok(())
}

/// Tensor names and shapes from a safetensors file's header (the file is read whole).
pub fn safetensors_shapes(
    path: &Path,
) -> std::result::Result<std::collections::HashMap<String, Vec<usize>>, SafetensorsError> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(source) => return Err(SafetensorsError::Unreadable { file, source }),
    };
    let tensors = match safetensors::SafeTensors::deserialize(&bytes) {
        Ok(tensors) => tensors,
        Err(source) => return Err(SafetensorsError::BadHeader { file, source }),
    };
    Ok(tensors
        .tensors()
        .into_iter()
        .map(|(n, view)| (n, view.shape().to_vec()))
        .collect())
}
