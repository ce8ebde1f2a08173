//! Model and tokenizer names: a local directory, or a Hugging Face hub id (e.g.
//! `bert-base-uncased`) fetched with hf-hub into its cache when online.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the offline default comes from, for error messages.
pub const OFFLINE_HINT: &str = "run `make model` for the offline default (data/models/all-MiniLM-L6-v2) or give a local checkpoint directory";

pub fn looks_like_hub_id(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['/', '.', '~'])
        && name.matches('/').count() <= 1
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// A local directory for `name_or_path`: the directory itself, or the hub snapshot holding
/// one file of each `required` group (first that exists wins) plus whichever `optional`
/// files the repo has.
pub fn resolve(name_or_path: &str, required: &[&[&str]], optional: &[&str]) -> Result<PathBuf> {
    let path = Path::new(name_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let err = |message: String| Error::Resolve {
        name: name_or_path.into(),
        message,
    };
    if path.exists() {
        return Err(err("is a file; give the checkpoint directory".into()));
    }
    if !looks_like_hub_id(name_or_path) {
        return Err(err("no such directory".into()));
    }
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v == "1") {
        return Err(err(format!(
            "not a local directory, and HF_HUB_OFFLINE=1; {OFFLINE_HINT}"
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(false)
        .build()
        .map_err(|e| {
            err(format!(
                "cannot use the Hugging Face hub ({e}); {OFFLINE_HINT}"
            ))
        })?;
    let repo = api.model(name_or_path.to_string());
    let mut snapshot = None;
    for group in required {
        let mut last_error = String::new();
        let found = group.iter().find_map(|f| match repo.get(f) {
            Ok(p) => Some(p),
            Err(e) => {
                last_error = e.to_string();
                None
            }
        });
        let file = found.ok_or_else(|| {
            err(format!(
                "not a local directory, and the hub has no {} ({last_error}); {OFFLINE_HINT}",
                group.join(" or ")
            ))
        })?;
        snapshot = file.parent().map(Path::to_path_buf);
    }
    for f in optional {
        let _ = repo.get(f);
    }
    snapshot.ok_or_else(|| err("nothing to fetch".into()))
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
