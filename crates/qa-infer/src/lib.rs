//! `qa-infer`: answer a question about a context with a QA checkpoint. Long contexts are cut
//! into windows as in training; the best spans come from all windows with a probability that
//! is comparable across them (see `spans`), and answers are exact substrings of the context
//! with character offsets.

pub mod spans;

use std::path::Path;

use candle_core::Device;
use qa_features::{build_features, QaTokenizer, Settings};
use qa_model::{make_batch, Checkpoint, RunPlan};
use serde::Serialize;
use squad_core::features::FeatureSplit;
use squad_core::{Example, Feature};

use spans::{best_spans, WindowLogits};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Model(#[from] qa_model::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] qa_features::tokenizer::TokenizerError),
    #[error(transparent)]
    Features(#[from] qa_features::FeaturesError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: tokenizer vocabulary has {tokenizer} entries but the model's has {model}", path.display())]
    VocabMismatch {
        path: std::path::PathBuf,
        tokenizer: usize,
        model: usize,
    },
    #[error("empty {0}")]
    Empty(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct InferSettings {
    pub max_length: usize,
    pub stride: usize,
    pub max_answer_length: usize,
    pub top_k: usize,
}

impl Default for InferSettings {
    fn default() -> Self {
        InferSettings {
            max_length: 384,
            stride: 128,
            max_answer_length: 30,
            top_k: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Answer {
    pub answer: String,
    /// Character offsets into the context, end exclusive: `context[start..end] == answer`.
    pub start: usize,
    pub end: usize,
    /// Probability of this span among all valid spans of all windows.
    pub score: f64,
}

pub struct Inferencer {
    pub checkpoint: Checkpoint,
    pub tokenizer: QaTokenizer,
    pub settings: InferSettings,
    device: Device,
}

impl Inferencer {
    /// Loads the checkpoint and its tokenizer (from the checkpoint directory).
    pub fn load(model: &str, settings: InferSettings, device: Device) -> Result<Self, InferError> {
        let checkpoint = Checkpoint::load(model, 0, &RunPlan::inference(device.clone()))?;
        let tokenizer = QaTokenizer::load(&checkpoint.dir)?;
        let vocab = tokenizer.tokenizer.get_vocab_size(true);
        if vocab != checkpoint.config.vocab_size {
            return Err(InferError::VocabMismatch {
                path: tokenizer.file.clone(),
                tokenizer: vocab,
                model: checkpoint.config.vocab_size,
            });
        }
        Ok(Inferencer {
            checkpoint,
            tokenizer,
            settings,
            device,
        })
    }

    pub fn model_dir(&self) -> &Path {
        &self.checkpoint.dir
    }

    /// The `top_k` best answers, best first.
    pub fn answer(&self, question: &str, context: &str) -> Result<Vec<Answer>, InferError> {
        if question.trim().is_empty() {
            return Err(InferError::Empty("question"));
        }
        if context.trim().is_empty() {
            return Err(InferError::Empty("context"));
        }
        let example = Example {
            id: String::new(),
            title: String::new(),
            context: context.to_string(),
            question: question.to_string(),
            answer_texts: vec![],
            answer_starts: vec![],
            is_impossible: false,
            article_index: 0,
            paragraph_index: 0,
        };
        let s = self.settings;
        let settings = Settings {
            max_length: s.max_length,
            stride: s.stride,
        };
        let (features, _) =
            build_features(&self.tokenizer, &[example], settings, FeatureSplit::Eval)?;
        let refs: Vec<&Feature> = features.iter().collect();
        let batch = make_batch(&refs, None, &self.device)?;
        let (start, end) = self.checkpoint.model.forward(&batch, None)?;
        let (start, end): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (start.to_vec2()?, end.to_vec2()?);
        let offsets: Vec<Vec<Option<(usize, usize)>>> = features
            .iter()
            .map(|f| {
                f.offsets
                    .as_ref()
                    .expect("eval features have offsets")
                    .iter()
                    .map(|&(a, b)| (a >= 0).then_some((a as usize, b as usize)))
                    .collect()
            })
            .collect();
        let windows: Vec<WindowLogits> = features
            .iter()
            .enumerate()
            .map(|(k, f)| WindowLogits {
                start: &start[k][..f.len()],
                end: &end[k][..f.len()],
                offsets: &offsets[k],
            })
            .collect();
        let chars: Vec<(usize, char)> = context.char_indices().collect();
        let byte_at = |c: usize| chars.get(c).map_or(context.len(), |&(b, _)| b);
        Ok(best_spans(&windows, s.max_answer_length, s.top_k)
            .into_iter()
            .map(|span| Answer {
                answer: context[byte_at(span.start)..byte_at(span.end)].to_string(),
                start: span.start,
                end: span.end,
                score: span.probability,
            })
            .collect())
    }
}
