//! HF `utils_qa.postprocess_qa_predictions`, step for step: per example, over all its
//! windows, the top `n_best_size` start and end indices (all positions of the logit row,
//! padding included), spans inside the context with end >= start and at most
//! `max_answer_length` tokens, score = start + end logit (f32, as numpy), the `n_best_size`
//! best kept (stable sort), "empty" when nothing survives; v2.0: the null score is the
//! minimum over windows of start[CLS] + end[CLS], and "" is predicted when null - best span
//! > `null_score_diff_threshold`.

use serde::Serialize;

use squad_core::{Example, Feature};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostprocessConfig {
    pub n_best_size: usize,
    pub max_answer_length: usize,
    pub version_2_with_negative: bool,
    pub null_score_diff_threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NBest {
    pub text: String,
    pub start_logit: f32,
    pub end_logit: f32,
    pub probability: f32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    /// `(id, answer)` in example order.
    pub answers: Vec<(String, String)>,
    pub nbest: Vec<(String, Vec<NBest>)>,
    /// v2.0: `(id, null score - best span score)`.
    pub null_odds: Vec<(String, f64)>,
}

/// Indices of the `n` largest values, largest first (ties: higher index first, as a reversed
/// ascending argsort).
fn top_indices(values: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(b.cmp(&a)));
    idx.truncate(n);
    idx
}

/// A feature's start and end logits: one per position of its (padded) batch row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Logits {
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    offsets: (usize, usize),
    score: f32,
    start_logit: f32,
    end_logit: f32,
    is_null: bool,
}

/// `logits[i]` are the logits of `features[i]`, rows at least as long as the feature.
pub fn postprocess(
    examples: &[Example],
    features: &[Feature],
    logits: &[Logits],
    cfg: &PostprocessConfig,
) -> Predictions {
    let mut per_example: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    for (i, f) in features.iter().enumerate() {
        if let Some(v) = per_example.get_mut(f.example_index as usize) {
            v.push(i);
        }
    }
    let mut out = Predictions::default();
    for (example, feature_indices) in examples.iter().zip(&per_example) {
        let windows = feature_indices.iter().map(|&i| (&features[i], &logits[i]));
        let (prelim, null_score) = prelim_predictions(windows, cfg);
        let entries = nbest_entries(&example.context, &prelim);
        let answer = match null_score {
            Some(null) => {
                let (answer, null_odds) = answer_or_null(&entries, null, cfg);
                out.null_odds.push((example.id.clone(), null_odds));
                answer
            }
            None => entries[0].text.clone(),
        };
        out.answers.push((example.id.clone(), answer));
        out.nbest.push((example.id.clone(), entries));
    }
    out
}

/// The `n_best_size` best candidates of one example over all its windows, and (v2.0) its
/// null score: the lowest start[CLS] + end[CLS] of its windows, which also joins the
/// candidates.
fn prelim_predictions<'a>(
    windows: impl Iterator<Item = (&'a Feature, &'a Logits)>,
    cfg: &PostprocessConfig,
) -> (Vec<Candidate>, Option<f32>) {
    let mut min_null: Option<Candidate> = None;
    let mut prelim: Vec<Candidate> = Vec::new();
    for (feature, logits) in windows {
        let null = null_candidate(logits);
        if min_null.as_ref().is_none_or(|m| m.score > null.score) {
            min_null = Some(null);
        }
        let offsets = feature.offsets.as_deref().unwrap_or(&[]);
        push_span_candidates(logits, offsets, cfg, &mut prelim);
    }
    let mut null_score = None;
    if cfg.version_2_with_negative {
        if let Some(m) = min_null {
            null_score = Some(m.score);
            prelim.push(m);
        }
    }
    prelim.sort_by(|a, b| b.score.total_cmp(&a.score)); // stable, like sorted(reverse=True)
    prelim.truncate(cfg.n_best_size);
    if cfg.version_2_with_negative && !prelim.iter().any(|p| p.offsets == (0, 0)) {
        if let Some(m) = min_null {
            prelim.push(m);
        }
    }
    (prelim, null_score)
}

fn null_candidate(logits: &Logits) -> Candidate {
    let (start, end) = (logits.start[0], logits.end[0]);
    Candidate {
        offsets: (0, 0),
        score: start + end,
        start_logit: start,
        end_logit: end,
        is_null: true,
    }
}

/// The spans among the top `n_best_size` starts and ends of one window that lie inside the
/// context, end >= start, at most `max_answer_length` tokens.
fn push_span_candidates(
    logits: &Logits,
    offsets: &[(i32, i32)],
    cfg: &PostprocessConfig,
    prelim: &mut Vec<Candidate>,
) {
    let (start, end) = (&logits.start, &logits.end);
    let context_token = |k: usize| {
        offsets
            .get(k)
            .filter(|o| o.0 >= 0)
            .map(|o| (o.0 as usize, o.1 as usize))
    };
    let ends = top_indices(end, cfg.n_best_size);
    for s in top_indices(start, cfg.n_best_size) {
        for &e in &ends {
            let (Some(so), Some(eo)) = (context_token(s), context_token(e)) else {
                continue;
            };
            if e < s || e - s + 1 > cfg.max_answer_length {
                continue;
            }
            prelim.push(Candidate {
                offsets: (so.0, eo.1),
                score: start[s] + end[e],
                start_logit: start[s],
                end_logit: end[e],
                is_null: false,
            });
        }
    }
}

/// The candidates with their context text and softmax probabilities; a single "empty"
/// entry (score 0) goes first when no candidate has a text.
fn nbest_entries(context: &str, prelim: &[Candidate]) -> Vec<NBest> {
    let chars: Vec<char> = context.chars().collect();
    let text_of = |c: &Candidate| -> String {
        if c.is_null {
            return String::new();
        }
        chars[c.offsets.0.min(chars.len())..c.offsets.1.min(chars.len())]
            .iter()
            .collect()
    };
    let mut nbest: Vec<(String, &Candidate)> = prelim.iter().map(|c| (text_of(c), c)).collect();
    let empty = Candidate {
        offsets: (0, 0),
        score: 0.0,
        start_logit: 0.0,
        end_logit: 0.0,
        is_null: false,
    };
    if nbest.is_empty() || (nbest.len() == 1 && nbest[0].0.is_empty()) {
        nbest.insert(0, ("empty".to_string(), &empty));
    }
    let max = nbest
        .iter()
        .map(|(_, c)| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = nbest.iter().map(|(_, c)| (c.score - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    nbest
        .iter()
        .zip(&exp)
        .map(|((text, c), e)| NBest {
            text: text.clone(),
            start_logit: c.start_logit,
            end_logit: c.end_logit,
            probability: e / sum,
        })
        .collect()
}

/// v2.0: "" when the null score beats the best non-null entry by more than the threshold,
/// else that entry's text; with the difference (null score - best span score).
fn answer_or_null(entries: &[NBest], null_score: f32, cfg: &PostprocessConfig) -> (String, f64) {
    let best = entries
        .iter()
        .find(|p| !p.text.is_empty())
        .expect("an \"empty\" entry at least");
    let diff = (null_score - best.start_logit - best.end_logit) as f64;
    if diff > cfg.null_score_diff_threshold {
        (String::new(), diff)
    } else {
        (best.text.clone(), diff)
    }
}
