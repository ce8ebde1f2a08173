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

use spans::{best_spans, best_spans_or_null, WindowLogits};

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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InferSettings {
    pub max_length: usize,
    pub stride: usize,
    pub max_answer_length: usize,
    pub top_k: usize,
    /// SQuAD v2.0: answer "" when the null span (`[CLS]`) beats the best span, by qa-eval's
    /// rule (see `spans::best_spans_or_null`).
    pub handle_impossible_answer: bool,
}

impl Default for InferSettings {
    fn default() -> Self {
        InferSettings {
            max_length: 384,
            stride: 128,
            max_answer_length: 30,
            top_k: 1,
            handle_impossible_answer: false,
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

/// One window's start and end logits, trimmed to the window's own length.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

/// A question tokenized and cut into windows, waiting for the logits of its windows. The
/// three steps of an answer are apart so that a server can batch windows of many questions
/// into one forward: `Inferencer::prepare`, `Inferencer::logits`, `Prepared::answers`.
pub struct Prepared {
    pub windows: Vec<Feature>,
    context: String,
    settings: InferSettings,
}

impl Prepared {
    /// The `top_k` best answers, best first, from the logits of `self.windows` (same order).
    pub fn answers(&self, logits: &[Logits]) -> Vec<Answer> {
        let offsets: Vec<Vec<Option<(usize, usize)>>> =
            self.windows.iter().map(char_offsets).collect();
        let windows: Vec<WindowLogits> = logits
            .iter()
            .zip(&offsets)
            .map(|(l, offsets)| WindowLogits {
                start: &l.start,
                end: &l.end,
                offsets,
            })
            .collect();
        let s = self.settings;
        let spans = if s.handle_impossible_answer {
            best_spans_or_null(&windows, s.max_answer_length, s.top_k)
        } else {
            best_spans(&windows, s.max_answer_length, s.top_k)
        };
        let context = &self.context;
        let chars: Vec<(usize, char)> = context.char_indices().collect();
        let byte_at = |c: usize| chars.get(c).map_or(context.len(), |&(b, _)| b);
        spans
            .into_iter()
            .map(|span| Answer {
                answer: context[byte_at(span.start)..byte_at(span.end)].to_string(),
                start: span.start,
                end: span.end,
                score: span.probability,
            })
            .collect()
    }
}

fn char_offsets(window: &Feature) -> Vec<Option<(usize, usize)>> {
    window
        .offsets
        .as_ref()
        .expect("eval features have offsets")
        .iter()
        .map(|&(a, b)| (a >= 0).then_some((a as usize, b as usize)))
        .collect()
}

pub struct Inferencer {
    pub checkpoint: Checkpoint,
    pub tokenizer: QaTokenizer,
    pub settings: InferSettings,
    device: Device,
}

impl Inferencer {
    /// Loads the checkpoint and its tokenizer (from the checkpoint directory), to run as
    /// `plan` says (an inference plan: its device and precision).
    pub fn load(model: &str, settings: InferSettings, plan: &RunPlan) -> Result<Self, InferError> {
        let checkpoint = Checkpoint::load(model, 0, plan)?;
        let device = plan.device.clone();
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

    /// `TOOL: warning: ...` when the checkpoint had no QA head and got a random one.
    pub fn untrained_head_warning(&self, tool: &str, model: &str) -> Option<String> {
        self.checkpoint.report.fresh_head.then(|| format!(
            "{tool}: warning: {model} has no QA head (qa_outputs); using an untrained, randomly initialised one: answers are meaningless until the model is fine-tuned"
        ))
    }

    /// The `top_k` best answers, best first, with the settings the inferencer was loaded with.
    pub fn answer(&self, question: &str, context: &str) -> Result<Vec<Answer>, InferError> {
        let prepared = self.prepare(question, context, self.settings)?;
        let windows: Vec<&Feature> = prepared.windows.iter().collect();
        Ok(prepared.answers(&self.logits(&windows)?))
    }

    /// Tokenizes a question and its context and cuts them into windows, as in evaluation.
    pub fn prepare(
        &self,
        question: &str,
        context: &str,
        settings: InferSettings,
    ) -> Result<Prepared, InferError> {
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
        let windowing = Settings {
            max_length: settings.max_length,
            stride: settings.stride,
        };
        let (windows, _) =
            build_features(&self.tokenizer, &[example], windowing, FeatureSplit::Eval)?;
        Ok(Prepared {
            windows,
            context: context.to_string(),
            settings,
        })
    }

    /// One forward over `windows` (padded to the longest): each window's logits.
    pub fn logits(&self, windows: &[&Feature]) -> Result<Vec<Logits>, InferError> {
        let batch = make_batch(windows, None, &self.device)?;
        let (start, end) = self.checkpoint.model.forward(&batch, None)?;
        let (start, end): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (start.to_vec2()?, end.to_vec2()?);
        Ok(windows
            .iter()
            .zip(start.into_iter().zip(end))
            .map(|(w, (mut start, mut end))| {
                start.truncate(w.len());
                end.truncate(w.len());
                Logits { start, end }
            })
            .collect())
    }
}
