//! HF `utils_qa.postprocess_qa_predictions`, step for step: per example, over all its
//! windows, the top `n_best_size` start and end indices (all positions of the logit row,
//! padding included), spans inside the context with end >= start and at most
//! `max_answer_length` tokens, score = start + end logit (f32, as numpy), the `n_best_size`
//! best kept (stable sort), "empty" when nothing survives; v2.0: the null score is the
//! minimum over windows of start[CLS] + end[CLS], and "" is predicted when null - best span
//! > `null_score_diff_threshold`.

use serde::Serialize;

use crate::{Example, Feature};

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

struct Candidate {
    offsets: (usize, usize),
    score: f32,
    start_logit: f32,
    end_logit: f32,
    is_null: bool,
}

/// `logits[i]` = (start, end) rows of `features[i]`, at least as long as the feature.
pub fn postprocess(
    examples: &[Example],
    features: &[Feature],
    logits: &[(Vec<f32>, Vec<f32>)],
    cfg: &PostprocessConfig,
) -> Predictions {
    let mut per_example: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    for (i, f) in features.iter().enumerate() {
        if let Some(v) = per_example.get_mut(f.example_index as usize) {
            v.push(i);
        }
    }
    let mut out = Predictions::default();
    for (ex_index, example) in examples.iter().enumerate() {
        let mut min_null: Option<Candidate> = None;
        let mut prelim: Vec<Candidate> = Vec::new();
        for &fi in &per_example[ex_index] {
            let (start, end) = (&logits[fi].0, &logits[fi].1);
            let offsets = features[fi].offsets.as_deref().unwrap_or(&[]);
            let null_score = start[0] + end[0];
            if min_null.as_ref().is_none_or(|m| m.score > null_score) {
                min_null = Some(Candidate {
                    offsets: (0, 0),
                    score: null_score,
                    start_logit: start[0],
                    end_logit: end[0],
                    is_null: true,
                });
            }
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
        let mut null_score = None;
        if cfg.version_2_with_negative {
            if let Some(m) = &min_null {
                null_score = Some(m.score);
                prelim.push(Candidate { ..*m });
            }
        }
        prelim.sort_by(|a, b| b.score.total_cmp(&a.score)); // stable, like sorted(reverse=True)
        prelim.truncate(cfg.n_best_size);
        if cfg.version_2_with_negative && !prelim.iter().any(|p| p.offsets == (0, 0)) {
            if let Some(m) = min_null {
                prelim.push(m);
            }
        }
        let chars: Vec<char> = example.context.chars().collect();
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
        let entries: Vec<NBest> = nbest
            .iter()
            .zip(&exp)
            .map(|((text, c), e)| NBest {
                text: text.clone(),
                start_logit: c.start_logit,
                end_logit: c.end_logit,
                probability: e / sum,
            })
            .collect();
        let answer = match null_score {
            Some(null) if cfg.version_2_with_negative => {
                let best = entries
                    .iter()
                    .find(|p| !p.text.is_empty())
                    .expect("an \"empty\" entry at least");
                let diff = (null - best.start_logit - best.end_logit) as f64;
                out.null_odds.push((example.id.clone(), diff));
                if diff > cfg.null_score_diff_threshold {
                    String::new()
                } else {
                    best.text.clone()
                }
            }
            _ => entries[0].text.clone(),
        };
        out.answers.push((example.id.clone(), answer));
        out.nbest.push((example.id.clone(), entries));
    }
    out
}
