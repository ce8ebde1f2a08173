//! Loading the tokenizer a checkpoint ships: `tokenizer.json` when there is one, else
//! `vocab.txt` with BERT's normalisation (lowercasing from `tokenizer_config.json`). Any
//! truncation or padding baked into the file is removed (all-MiniLM-L6-v2 ships both at 128):
//! windows are built by `crate::windows`.

use std::path::{Path, PathBuf};

use squad_core::fsutil::sha256_file;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: no tokenizer.json or vocab.txt here", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot load tokenizer: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("{}: the vocabulary has no {token} token", path.display())]
    MissingSpecial { path: PathBuf, token: &'static str },
    #[error(transparent)]
    Core(#[from] squad_core::Error),
}

/// A BERT tokenizer with what window building needs.
pub struct QaTokenizer {
    pub tokenizer: Tokenizer,
    pub cls_id: u32,
    pub sep_id: u32,
    /// The file it was loaded from (tokenizer.json or vocab.txt), its sha256 and the sha256
    /// of its vocabulary.
    pub file: PathBuf,
    pub sha256: String,
    pub vocab_sha256: String,
}

/// One tokenized text: ids and **character** offsets into that text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn truncated(&self, n: usize) -> Tokens {
        Tokens {
            ids: self.ids[..n.min(self.len())].to_vec(),
            offsets: self.offsets[..n.min(self.len())].to_vec(),
        }
    }
}

impl QaTokenizer {
    /// `path`: a `tokenizer.json`/`vocab.txt` file or a checkpoint directory.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let file = resolve(path)?;
        let load_err = |message: String| TokenizerError::Load {
            path: file.clone(),
            message,
        };
        let mut tokenizer = if file.extension().is_some_and(|e| e == "json") {
            Tokenizer::from_file(&file).map_err(|e| load_err(e.to_string()))?
        } else {
            from_vocab(&file).map_err(|e| load_err(e.to_string()))?
        };
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_err(e.to_string()))?;
        tokenizer.with_padding(None);
        let special = |token: &'static str| {
            tokenizer
                .token_to_id(token)
                .ok_or(TokenizerError::MissingSpecial {
                    path: file.clone(),
                    token,
                })
        };
        let (cls_id, sep_id) = (special("[CLS]")?, special("[SEP]")?);
        let sha256 = sha256_file(&file)?;
        let vocab_sha256 = squad_core::vocab::vocab_sha256(&file)?;
        Ok(QaTokenizer {
            tokenizer,
            cls_id,
            sep_id,
            file,
            sha256,
            vocab_sha256,
        })
    }

    /// Tokens of `text` without special tokens, offsets in chars.
    pub fn encode(&self, text: &str) -> Result<Tokens, TokenizerError> {
        let enc = self
            .tokenizer
            .encode_char_offsets(text, false)
            .map_err(|e| TokenizerError::Load {
                path: self.file.clone(),
                message: e.to_string(),
            })?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }
}

/// The tokenizer file for `path`: the file itself, a checkpoint directory's tokenizer.json or
/// vocab.txt, or those of a hub id (e.g. `bert-base-uncased`, fetched when online).
fn resolve(path: &Path) -> Result<PathBuf, TokenizerError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let name = path.to_string_lossy();
    let path = &if !path.exists() && squad_core::hub::looks_like_hub_id(&name) {
        squad_core::hub::resolve(
            &name,
            &[&["tokenizer.json", "vocab.txt"]],
            &["tokenizer_config.json"],
        )?
    } else {
        path.to_path_buf()
    };
    if path.is_dir() {
        for name in ["tokenizer.json", "vocab.txt"] {
            let candidate = path.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(TokenizerError::NotFound {
        path: path.to_path_buf(),
    })
}

/// BERT WordPiece from `vocab.txt`, lowercasing as `tokenizer_config.json` says (default on).
fn from_vocab(vocab: &Path) -> tokenizers::Result<Tokenizer> {
    let lowercase = vocab
        .parent()
        .map(|dir| dir.join("tokenizer_config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|cfg| cfg.get("do_lower_case").and_then(|v| v.as_bool()))
        .unwrap_or(true);
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    Ok(tokenizer)
}
