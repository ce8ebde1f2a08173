//! HF `BertConfig`, read straight from a checkpoint's `config.json`. The whole JSON object is
//! kept so that saving writes back every field we do not interpret.

use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// Its word-embedding row gets no gradient (torch `padding_idx`).
    #[serde(default)]
    pub pad_token_id: u32,
    /// The whole `config.json`, written back on save.
    #[serde(skip)]
    pub raw: serde_json::Map<String, serde_json::Value>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init_range() -> f64 {
    0.02
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn from_json(path: &Path, text: &str) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let raw: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut cfg: BertConfig = serde_json::from_value(serde_json::Value::Object(raw.clone()))
            .map_err(|e| bad(e.to_string()))?;
        cfg.raw = raw;
        if cfg.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act {:?} is not supported (only \"gelu\", erf)",
                cfg.hidden_act
            )));
        }
        if cfg.position_embedding_type != "absolute" {
            return Err(bad(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                cfg.position_embedding_type
            )));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, "read", e))?;
        Self::from_json(path, &text)
    }

    /// The `config.json` of a saved QA checkpoint.
    pub fn to_qa_json(&self) -> String {
        let mut raw = self.raw.clone();
        raw.insert(
            "architectures".into(),
            serde_json::json!(["BertForQuestionAnswering"]),
        );
        raw.insert("model_type".into(), serde_json::json!("bert"));
        serde_json::to_string_pretty(&serde_json::Value::Object(raw)).expect("json")
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A small config for tests (random weights).
    pub fn tiny(vocab_size: usize) -> Self {
        let text = serde_json::json!({
            "vocab_size": vocab_size, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 64,
            "model_type": "bert"
        })
        .to_string();
        Self::from_json(Path::new("<tiny>"), &text).expect("valid")
    }
}
