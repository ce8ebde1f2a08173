//! The pipeline config: one YAML file describes a whole run (data, model, features, training,
//! evaluation). Every field has a default, so a YAML file only states what differs; unknown
//! keys are errors (a typo must not silently fall back to a default). Each stage takes
//! `--config FILE`, applies its command-line overrides, and saves the resolved config beside
//! its outputs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The arithmetic of the model's GEMMs (`train.precision`, `eval.precision`).
pub use qa_kernels::Precision;

/// The config's sections (its mapping-valued top-level keys): the Makefile stamps each one
/// (`config_stamp`), so a stage reruns only when a section it reads changes.
pub const SECTIONS: [&str; 5] = ["data", "model", "features", "train", "eval"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name of the run; outputs go to `runs/<name>/`.
    pub name: String,
    /// Where qa-train and qa-eval run the model: `cpu`, `cuda` or `cuda:N` (a GPU needs the
    /// CUDA build, `make build-cuda`). `--device` overrides it.
    pub device: String,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub features: FeaturesConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "default".into(),
            device: "cpu".into(),
            data: DataConfig::default(),
            model: ModelConfig::default(),
            features: FeaturesConfig::default(),
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

/// Which SQuAD files to read and which questions to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training file (SQuAD JSON, plain or gzip). `make data` provides
    /// `data/squad/<name>.json.gz` from the mirror or the official URL.
    pub train_file: PathBuf,
    /// Evaluation file.
    pub dev_file: PathBuf,
    /// Keep only the first N training questions, in file order (null: all).
    pub train_limit: Option<usize>,
    /// Keep only the first N evaluation questions, in file order (null: all).
    pub dev_limit: Option<usize>,
    /// Keep only these training articles, by 0-based position in the file (null: all).
    pub train_articles: Option<ArticleRange>,
    /// Keep only these evaluation articles.
    pub dev_articles: Option<ArticleRange>,
    /// Drop invalid questions (with a count) instead of failing.
    pub lenient: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            train_file: "data/squad/train-v1.1.json.gz".into(),
            dev_file: "data/squad/dev-v1.1.json.gz".into(),
            train_limit: None,
            dev_limit: None,
            train_articles: None,
            dev_articles: None,
            lenient: false,
        }
    }
}

/// A half-open range of article positions, written `START..END` (END exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArticleRange {
    pub start: usize,
    pub end: usize,
}

impl ArticleRange {
    pub fn contains(&self, article: usize) -> bool {
        (self.start..self.end).contains(&article)
    }
}

impl fmt::Display for ArticleRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl FromStr for ArticleRange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("article range `{s}`: expected START..END, e.g. 0..20");
        let (a, b) = s.split_once("..").ok_or_else(bad)?;
        let start = a.trim().parse().map_err(|_| bad())?;
        let end = b.trim().parse().map_err(|_| bad())?;
        if end <= start {
            return Err(format!(
                "article range `{s}` is empty (END must be > START)"
            ));
        }
        Ok(ArticleRange { start, end })
    }
}

impl Serialize for ArticleRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ArticleRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Local checkpoint directory or Hugging Face hub id (e.g. `bert-base-uncased`).
    pub name_or_path: String,
    /// Tokenizer directory or `tokenizer.json`; null: the model's own.
    pub tokenizer: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name_or_path: "data/models/all-MiniLM-L6-v2".into(),
            tokenizer: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Tokens per window, question and special tokens included.
    pub max_length: usize,
    /// Tokens shared by consecutive windows of a long context.
    pub stride: usize,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        FeaturesConfig {
            max_length: 384,
            stride: 128,
        }
    }
}

/// Training hyper-parameters; defaults are HF Trainer's as used by the notebook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub learning_rate: f64,
    /// Features per optimizer micro-batch.
    pub batch_size: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps (null: run all epochs).
    pub max_steps: Option<usize>,
    /// Decoupled AdamW weight decay, applied to weight matrices and embeddings only.
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Linear warm-up steps (wins over `warmup_ratio` when > 0).
    pub warmup_steps: usize,
    /// Linear warm-up as a fraction of all optimizer steps.
    pub warmup_ratio: f64,
    /// Global-norm gradient clipping (0: off).
    pub max_grad_norm: f64,
    pub gradient_accumulation_steps: usize,
    /// Seed for initialisation, dropout masks and data order.
    pub seed: u64,
    /// Pad every batch to `features.max_length` instead of its longest sequence.
    pub pad_to_max_length: bool,
    /// Batch features of similar length together (HF `group_by_length`: megabatches of 50
    /// batches sorted by length). On by default, unlike HF: on the seed pipeline it cut the
    /// padded tokens by a third (training 3.8 -> 6.3 features/s on 2 cores) and EM/F1 on the
    /// first 1,000 dev questions came out 5.7 / 9.69 against 4.8 / 8.55 without.
    pub group_by_length: bool,
    /// Save a checkpoint every N optimizer steps (0: only at the end).
    pub save_steps: usize,
    /// Keep at most this many step checkpoints.
    pub save_total_limit: usize,
    /// Log loss/lr/grad-norm every N optimizer steps.
    pub logging_steps: usize,
    /// Dropout as the model's config.json sets it (false: off, for parity checks).
    pub dropout: bool,
    /// Replay a recorded order instead of shuffling: a JSON list of feature indices, one
    /// permutation per epoch (e.g. the oracle's `train_order.json` from HF Trainer).
    pub data_order: Option<PathBuf>,
    /// GEMMs in f32, or with bf16 inputs and f32 sums (AVX512-BF16 CPUs; `--precision`).
    /// Master weights, optimizer moments and checkpoints stay f32; may change on resume.
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: 2e-5,
            batch_size: 8,
            epochs: 1,
            max_steps: None,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            gradient_accumulation_steps: 1,
            seed: 42,
            pad_to_max_length: false,
            group_by_length: true,
            save_steps: 500,
            save_total_limit: 2,
            logging_steps: 10,
            dropout: true,
            data_order: None,
            precision: Precision::F32,
        }
    }
}

/// Post-processing settings, as in HF `run_qa.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub n_best_size: usize,
    pub max_answer_length: usize,
    /// SQuAD v2.0: allow the empty answer.
    pub version_2_with_negative: bool,
    /// Predict "" when null score - best span score exceeds this.
    pub null_score_diff_threshold: f64,
    /// Features per forward pass.
    pub batch_size: usize,
    /// The GEMMs' arithmetic in qa-eval (`--precision`); training evaluates in its own.
    pub precision: Precision,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            n_best_size: 20,
            max_answer_length: 30,
            version_2_with_negative: false,
            null_score_diff_threshold: 0.0,
            batch_size: 32,
            precision: Precision::F32,
        }
    }
}

/// Which half of the data a stage works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
}

impl PipelineConfig {
    pub fn from_yaml_str(path: &Path, text: &str) -> Result<Self> {
        serde_yaml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_yaml_str(path, &text)
    }

    /// `--config FILE` if given, else the defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::from_yaml_file)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("config serialises")
    }

    /// Writes the resolved config atomically (what a stage ran with, beside its outputs).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic_bytes(path, self.to_yaml().as_bytes())
    }

    pub fn split_file(&self, split: Split) -> &Path {
        match split {
            Split::Train => &self.data.train_file,
            Split::Dev => &self.data.dev_file,
        }
    }

    pub fn split_limit(&self, split: Split) -> Option<usize> {
        match split {
            Split::Train => self.data.train_limit,
            Split::Dev => self.data.dev_limit,
        }
    }

    pub fn split_articles(&self, split: Split) -> Option<ArticleRange> {
        match split {
            Split::Train => self.data.train_articles,
            Split::Dev => self.data.dev_articles,
        }
    }

    /// Sets the per-split data fields (command-line overrides).
    pub fn set_split(
        &mut self,
        split: Split,
        file: PathBuf,
        limit: Option<usize>,
        articles: Option<ArticleRange>,
    ) {
        let d = &mut self.data;
        let (f, l, a) = match split {
            Split::Train => (&mut d.train_file, &mut d.train_limit, &mut d.train_articles),
            Split::Dev => (&mut d.dev_file, &mut d.dev_limit, &mut d.dev_articles),
        };
        *f = file;
        *l = limit;
        *a = articles;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_yaml() {
        let cfg = PipelineConfig::default();
        let back = PipelineConfig::from_yaml_str(Path::new("x.yaml"), &cfg.to_yaml()).unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn partial_yaml_keeps_other_defaults() {
        let text = "name: t\ndata:\n  train_limit: 1000\n  dev_articles: 3..7\ntrain:\n  learning_rate: 3.0e-5\n";
        let cfg = PipelineConfig::from_yaml_str(Path::new("t.yaml"), text).unwrap();
        assert_eq!(cfg.data.train_limit, Some(1000));
        assert_eq!(
            cfg.data.dev_articles,
            Some(ArticleRange { start: 3, end: 7 })
        );
        assert_eq!(cfg.train.learning_rate, 3e-5);
        assert_eq!(cfg.train.batch_size, 8);
        assert_eq!(cfg.features.max_length, 384);
    }

    #[test]
    fn unknown_key_is_an_error_with_file_and_line() {
        let text = "name: t\ntrain:\n  learnig_rate: 1.0\n";
        let err = PipelineConfig::from_yaml_str(Path::new("typo.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("typo.yaml") && err.contains("learnig_rate") && err.contains("line 3"),
            "{err}"
        );
    }

    #[test]
    fn sections_are_the_mapping_valued_keys() {
        let value = serde_yaml::to_value(PipelineConfig::default()).unwrap();
        let mut mappings: Vec<&str> = value
            .as_mapping()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_mapping())
            .map(|(k, _)| k.as_str().unwrap())
            .collect();
        mappings.sort_unstable();
        let mut sections = SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(mappings, sections);
    }

    #[test]
    fn article_range_parsing() {
        assert_eq!(
            "2..5".parse::<ArticleRange>().unwrap(),
            ArticleRange { start: 2, end: 5 }
        );
        assert!("5..2".parse::<ArticleRange>().is_err());
        assert!("5".parse::<ArticleRange>().is_err());
    }
}
