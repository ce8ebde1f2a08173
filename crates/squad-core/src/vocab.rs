//! A tokenizer's identity for compatibility checks: the sha256 of its vocabulary (tokens in
//! id order). File bytes are no good for this: transformers rewrites `tokenizer.json` when it
//! saves a checkpoint, with the same vocabulary.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::sha256_hex;

/// The tokenizer file of a checkpoint directory (`tokenizer.json`, else `vocab.txt`), or
/// `path` itself when it is a file.
pub fn tokenizer_file(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    ["tokenizer.json", "vocab.txt"]
        .iter()
        .map(|f| path.join(f))
        .find(|p| p.exists())
}

/// sha256 of the vocabulary of a `tokenizer.json` (WordPiece `model.vocab`) or `vocab.txt`.
pub fn vocab_sha256(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let tokens: Vec<String> = if file.extension().is_some_and(|e| e == "json") {
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: file.into(),
            message: e.to_string(),
        })?;
        let vocab = json["model"]["vocab"]
            .as_object()
            .ok_or_else(|| Error::Config {
                path: file.into(),
                message: "no model.vocab map (not a WordPiece tokenizer)".into(),
            })?;
        let mut by_id: Vec<(u64, &String)> = vocab
            .iter()
            .map(|(token, id)| (id.as_u64().unwrap_or(u64::MAX), token))
            .collect();
        by_id.sort();
        by_id.into_iter().map(|(_, t)| t.clone()).collect()
    } else {
        text.lines().map(str::to_string).collect()
    };
    let mut joined = tokens.join("\n");
    joined.push('\n');
    Ok(sha256_hex(joined.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_txt_of_the_same_vocab_agree_and_order_matters() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("vocab.txt");
        std::fs::write(&txt, "[PAD]\n[UNK]\nhello\n").unwrap();
        let json = dir.path().join("tokenizer.json");
        std::fs::write(
            &json,
            r#"{"model": {"type": "WordPiece", "vocab": {"hello": 2, "[PAD]": 0, "[UNK]": 1}}}"#,
        )
        .unwrap();
        assert_eq!(vocab_sha256(&txt).unwrap(), vocab_sha256(&json).unwrap());
        std::fs::write(&txt, "[UNK]\n[PAD]\nhello\n").unwrap();
        assert_ne!(vocab_sha256(&txt).unwrap(), vocab_sha256(&json).unwrap());
        assert_eq!(tokenizer_file(dir.path()).unwrap(), json);
    }
}
