//! `qa-features`: examples → model features exactly as HF `run_qa.py`
//! (`prepare_train_features` / `prepare_validation_features`): `[CLS] question [SEP]
//! context-window [SEP]`, windows of `max_length` tokens overlapping by `stride`, only the
//! context truncated, offsets in characters.
//!
//! Questions that leave no room for a window (question tokens + 3 + stride >= max_length,
//! with a context that does not fit whole), where HF raises: in train they are skipped and
//! counted; in eval the question is cut to its first [`MAX_QUERY_TOKENS`] tokens (BERT's
//! original `max_query_length`), counted, and an error names the question if even that
//! does not fit.

pub mod parity;
pub mod tokenizer;
pub mod windows;

use rayon::prelude::*;
use squad_core::features::FeatureSplit;
use squad_core::shard::Shard;
use squad_core::{Example, Feature};

pub use tokenizer::{QaTokenizer, Tokens};
use windows::{label_window, window_ranges, Label};

pub const MAX_QUERY_TOKENS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error(transparent)]
    Core(#[from] squad_core::Error),
    #[error("stride {stride} leaves no room: it must be smaller than max_length - 3 = {}", max_length.saturating_sub(3))]
    StrideTooLarge { max_length: usize, stride: usize },
    #[error(
        "question {id:?}: even cut to {MAX_QUERY_TOKENS} tokens it leaves a context window of {window} tokens, not more than stride {stride}; use a larger --max-length or a smaller --stride"
    )]
    NoRoom {
        id: String,
        window: usize,
        stride: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub max_length: usize,
    pub stride: usize,
}

/// What happened while building features.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub examples: usize,
    pub features: usize,
    /// Train: questions without room for a window (HF raises).
    pub skipped_questions: Vec<String>,
    /// Eval: questions cut to MAX_QUERY_TOKENS tokens to make room.
    pub truncated_questions: Vec<String>,
    /// Train windows labelled CLS (answer not inside, or unanswerable).
    pub cls_labelled: usize,
    /// Train windows whose label differs from HF's (see `windows::label_window`).
    pub hf_edge_case_labels: Vec<(String, u32)>,
}

pub use squad_core::text::python_lstrip;

/// One example's features, and what the report counts about it.
#[derive(Debug, Default)]
struct ExampleFeatures {
    features: Vec<Feature>,
    /// Per feature: its train label differs from HF's (see `windows::label_window`).
    hf_edge_cases: Vec<bool>,
    /// Train: the id of a question skipped for lack of room.
    skipped: Option<String>,
    /// Eval: the id of a question cut to MAX_QUERY_TOKENS tokens to make room.
    truncated: Option<String>,
}

/// The features of one example, or None when there is no room (the caller decides).
fn example_features(
    tok: &QaTokenizer,
    settings: Settings,
    split: FeatureSplit,
    example_index: usize,
    example: &Example,
    question: &Tokens,
    context: &Tokens,
) -> Option<ExampleFeatures> {
    let Settings { max_length, stride } = settings;
    let n = context.len();
    let fits_whole = question.len() + n + 3 <= max_length;
    let window = max_length.saturating_sub(question.len() + 3);
    if !fits_whole && window <= stride {
        return None;
    }
    let answer = (!example.is_impossible)
        .then(|| {
            let start = *example.answer_starts.first()? as usize;
            Some((start, start + example.answer_texts[0].chars().count()))
        })
        .flatten();
    let prefix = question.len() + 2;
    let mut features = Vec::new();
    let mut edge_cases = Vec::new();
    for (w, range) in window_ranges(n, window, stride).into_iter().enumerate() {
        let len = prefix + range.len() + 1;
        let mut input_ids = Vec::with_capacity(len);
        input_ids.push(tok.cls_id as i32);
        input_ids.extend(question.ids.iter().map(|&i| i as i32));
        input_ids.push(tok.sep_id as i32);
        input_ids.extend(context.ids[range.clone()].iter().map(|&i| i as i32));
        input_ids.push(tok.sep_id as i32);
        let mut token_type_ids = vec![0; prefix];
        token_type_ids.resize(len, 1);
        let window_offsets = &context.offsets[range];
        let (labels, offsets) = match split {
            FeatureSplit::Train => {
                let (label, edge) = label_window(window_offsets, answer);
                edge_cases.push(edge);
                let pos = match label {
                    Label::Span { start, end } => ((prefix + start) as i32, (prefix + end) as i32),
                    Label::Cls => (0, 0),
                };
                (Some(pos), None)
            }
            FeatureSplit::Eval => {
                edge_cases.push(false);
                let mut offs = vec![(-1, -1); prefix];
                offs.extend(window_offsets.iter().map(|&(s, e)| (s as i32, e as i32)));
                offs.push((-1, -1));
                (None, Some(offs))
            }
        };
        features.push(Feature {
            example_id: example.id.clone(),
            example_index: example_index as u32,
            window_index: w as u32,
            input_ids,
            token_type_ids,
            labels,
            offsets,
        });
    }
    Some(ExampleFeatures {
        features,
        hf_edge_cases: edge_cases,
        ..ExampleFeatures::default()
    })
}

/// Tokenizes every question and every distinct context (in parallel), then builds the
/// windows of each example, in example order.
pub fn build_features(
    tok: &QaTokenizer,
    examples: &[Example],
    settings: Settings,
    split: FeatureSplit,
) -> Result<(Vec<Feature>, Report), FeaturesError> {
    if settings.stride + 3 >= settings.max_length {
        return Err(FeaturesError::StrideTooLarge {
            max_length: settings.max_length,
            stride: settings.stride,
        });
    }
    let tokens = Tokenized::new(tok, examples)?;
    let built: Vec<Result<ExampleFeatures, FeaturesError>> = examples
        .par_iter()
        .enumerate()
        .map(|(i, e)| {
            let (question, context) = tokens.of(i);
            features_or_fallback(tok, settings, split, i, e, question, context)
        })
        .collect();
    let mut features = Vec::with_capacity(examples.len() * 11 / 10);
    let mut report = Report {
        examples: examples.len(),
        ..Report::default()
    };
    for item in built {
        report.add(item?, &mut features);
    }
    report.features = features.len();
    Ok((features, report))
}

/// The tokens of every question, and of every distinct context.
struct Tokenized {
    questions: Vec<Tokens>,
    contexts: Vec<Tokens>,
    /// Per example: its context in `contexts`.
    context_of: Vec<usize>,
}

impl Tokenized {
    fn new(tok: &QaTokenizer, examples: &[Example]) -> Result<Self, FeaturesError> {
        // Consecutive questions usually share their paragraph: tokenize each context once.
        let mut context_of = Vec::with_capacity(examples.len());
        let mut contexts: Vec<&str> = Vec::new();
        for e in examples {
            if contexts.last() != Some(&e.context.as_str()) {
                contexts.push(&e.context);
            }
            context_of.push(contexts.len() - 1);
        }
        let contexts: Vec<Tokens> = contexts
            .par_iter()
            .map(|c| tok.encode(c))
            .collect::<Result<_, _>>()?;
        let questions: Vec<Tokens> = examples
            .par_iter()
            .map(|e| tok.encode(python_lstrip(&e.question)))
            .collect::<Result<_, _>>()?;
        Ok(Tokenized {
            questions,
            contexts,
            context_of,
        })
    }

    /// Question and context tokens of example `i`.
    fn of(&self, i: usize) -> (&Tokens, &Tokens) {
        (&self.questions[i], &self.contexts[self.context_of[i]])
    }
}

/// The features of example `i`. Without room for a window: in train none (the question
/// is skipped), in eval those of the question cut to MAX_QUERY_TOKENS tokens, or an error
/// when even that leaves no room.
fn features_or_fallback(
    tok: &QaTokenizer,
    settings: Settings,
    split: FeatureSplit,
    i: usize,
    e: &Example,
    question: &Tokens,
    context: &Tokens,
) -> Result<ExampleFeatures, FeaturesError> {
    if let Some(built) = example_features(tok, settings, split, i, e, question, context) {
        return Ok(built);
    }
    match split {
        FeatureSplit::Train => Ok(ExampleFeatures {
            skipped: Some(e.id.clone()),
            ..ExampleFeatures::default()
        }),
        FeatureSplit::Eval => {
            let cut = question.truncated(MAX_QUERY_TOKENS);
            example_features(tok, settings, split, i, e, &cut, context)
                .map(|built| ExampleFeatures {
                    truncated: Some(e.id.clone()),
                    ..built
                })
                .ok_or_else(|| FeaturesError::NoRoom {
                    id: e.id.clone(),
                    window: settings.max_length.saturating_sub(cut.len() + 3),
                    stride: settings.stride,
                })
        }
    }
}

impl Report {
    /// Counts one example's features into the report and moves them to `features`.
    fn add(&mut self, built: ExampleFeatures, features: &mut Vec<Feature>) {
        self.skipped_questions.extend(built.skipped);
        self.truncated_questions.extend(built.truncated);
        for (f, edge) in built.features.into_iter().zip(built.hf_edge_cases) {
            if edge {
                self.hf_edge_case_labels
                    .push((f.example_id.clone(), f.window_index));
            }
            if f.labels == Some((0, 0)) {
                self.cls_labelled += 1;
            }
            features.push(f);
        }
    }
}

/// Reads an examples file, builds the features of all its examples or of one `shard` of
/// them, and writes them (atomically) to `output` with the metadata later stages check:
/// settings, tokenizer and examples sha256, the source's sha256, the shard, and the report's
/// counts. A shard's features keep `example_index` as positions in the whole file, so they
/// are evaluated against the same examples file.
pub fn make_features_file(
    examples_path: &std::path::Path,
    tok: &QaTokenizer,
    settings: Settings,
    split: FeatureSplit,
    shard: Option<Shard>,
    output: &std::path::Path,
) -> Result<Report, FeaturesError> {
    use squad_core::features::{self, meta};
    let (mut examples, examples_meta) = squad_core::examples::read(examples_path)?;
    if let Some(s) = shard {
        examples = s.select(examples);
    }
    let (mut feats, report) = build_features(tok, &examples, settings, split)?;
    let mut md = squad_core::parquet_io::Metadata::new();
    if let Some(s) = shard {
        for f in &mut feats {
            f.example_index = s.global(f.example_index as usize) as u32;
        }
        md.insert(meta::SHARD.into(), s.to_string());
    }
    md.insert(meta::MAX_LENGTH.into(), settings.max_length.to_string());
    md.insert(meta::STRIDE.into(), settings.stride.to_string());
    md.insert(meta::TOKENIZER_SHA256.into(), tok.sha256.clone());
    md.insert(
        meta::TOKENIZER_VOCAB_SHA256.into(),
        tok.vocab_sha256.clone(),
    );
    md.insert(
        meta::EXAMPLES_SHA256.into(),
        squad_core::fsutil::sha256_file(examples_path)?,
    );
    if let Some(sha) = examples_meta.get(squad_core::examples::meta::SOURCE_SHA256) {
        md.insert(meta::SOURCE_SHA256.into(), sha.clone());
    }
    md.insert(
        meta::SKIPPED_QUESTIONS.into(),
        report.skipped_questions.len().to_string(),
    );
    md.insert(
        meta::TRUNCATED_QUESTIONS.into(),
        report.truncated_questions.len().to_string(),
    );
    md.insert(
        meta::HF_EDGE_CASE_LABELS.into(),
        report.hf_edge_case_labels.len().to_string(),
    );
    features::write(output, &feats, split, &md)?;
    Ok(report)
}
