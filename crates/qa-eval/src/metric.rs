//! The official SQuAD evaluation (`evaluate-v1.1.py`, `evaluate-v2.0.py`), rule for rule:
//! normalisation lowercases, drops ASCII punctuation (`string.punctuation` only: ’ and —
//! survive), drops the words a/an/the, and collapses whitespace; EM and token F1 take the max
//! over gold answers. v1.1 scores a missing prediction 0; v2.0 skips it, maps empty gold
//! answers to the single no-answer "", and with no-answer probabilities finds the best
//! thresholds.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use squad_core::text::python_split;

/// A question's gold answers (none for a v2.0 unanswerable question).
#[derive(Debug, Clone, PartialEq)]
pub struct Gold {
    pub id: String,
    pub answers: Vec<String>,
}

static ARTICLES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("regex"));
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !ASCII_PUNCTUATION.contains(*c))
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punct, " ");
    python_split(&no_articles).collect::<Vec<_>>().join(" ")
}

fn tokens(s: &str) -> Vec<String> {
    python_split(&normalize_answer(s))
        .map(str::to_owned)
        .collect()
}

fn overlap(a: &[String], b: &[String]) -> usize {
    let mut counts: HashMap<&str, isize> = HashMap::new();
    for t in a {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in b {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    same
}

fn f1_from(pred: &[String], gold: &[String]) -> f64 {
    let same = overlap(pred, gold);
    if same == 0 {
        return 0.0;
    }
    let p = same as f64 / pred.len() as f64;
    let r = same as f64 / gold.len() as f64;
    2.0 * p * r / (p + r)
}

pub fn exact_match(pred: &str, gold: &str) -> bool {
    normalize_answer(pred) == normalize_answer(gold)
}

/// v1.1 token F1.
pub fn f1_v1(pred: &str, gold: &str) -> f64 {
    f1_from(&tokens(pred), &tokens(gold))
}

/// v2.0 token F1: 1/0 when either side has no tokens, by whether both have none.
pub fn f1_v2(pred: &str, gold: &str) -> f64 {
    let (p, g) = (tokens(pred), tokens(gold));
    if p.is_empty() || g.is_empty() {
        return f64::from(u8::from(p == g));
    }
    f1_from(&p, &g)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct V1Scores {
    pub exact_match: f64,
    pub f1: f64,
    /// Questions without a prediction (scored 0).
    #[serde(skip)]
    pub missing: Vec<String>,
}

/// Official v1.1: the mean over all `gold` questions (missing predictions score 0), x 100.
pub fn evaluate_v1(gold: &[Gold], predictions: &HashMap<String, String>) -> V1Scores {
    let (mut em, mut f1) = (0.0, 0.0);
    let mut missing = Vec::new();
    for q in gold {
        let Some(pred) = predictions.get(&q.id) else {
            missing.push(q.id.clone());
            continue;
        };
        em += q
            .answers
            .iter()
            .map(|g| f64::from(u8::from(exact_match(pred, g))))
            .fold(0.0, f64::max);
        f1 += q.answers.iter().map(|g| f1_v1(pred, g)).fold(0.0, f64::max);
    }
    let n = gold.len() as f64;
    let pct = |x: f64| if gold.is_empty() { 0.0 } else { 100.0 * x / n };
    V1Scores {
        exact_match: pct(em),
        f1: pct(f1),
        missing,
    }
}

/// `evaluate_v2` found a predicted question without a no-answer probability.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("no no-answer probability for question {0:?}")]
    MissingNaProb(String),
}

/// One predicted question's v2.0 exact and F1 scores (0 or 1, and 0..=1).
#[derive(Debug, Clone, Copy, PartialEq)]
struct QuestionScores<'a> {
    qid: &'a str,
    exact: f64,
    f1: f64,
}

type EvalDict = serde_json::Map<String, serde_json::Value>;

/// Official v2.0 output: exact, f1, total, HasAns_*, NoAns_*, and best_* with no-answer
/// probabilities. `na_probs` in file order (ties in the threshold search follow it). The
/// pieces are named after the functions of `evaluate-v2.0.py`.
pub fn evaluate_v2(
    gold: &[Gold],
    predictions: &HashMap<String, String>,
    na_probs: Option<&[(String, f64)]>,
    na_prob_thresh: f64,
) -> Result<EvalDict, MetricError> {
    let zero: Vec<(String, f64)>;
    let na_list: &[(String, f64)] = match na_probs {
        Some(p) => p,
        None => {
            zero = predictions.keys().map(|k| (k.clone(), 0.0)).collect();
            &zero
        }
    };
    let qid_to_has_ans = make_qid_to_has_ans(gold);
    let raw = get_raw_scores(gold, predictions);
    let thresholded = apply_no_ans_threshold(&raw, na_list, &qid_to_has_ans, na_prob_thresh)?;
    let mut out_eval = make_eval_dict(&thresholded.iter().collect::<Vec<_>>());
    for (prefix, has_ans) in [("HasAns", true), ("NoAns", false)] {
        let qid_list: Vec<&QuestionScores> = thresholded
            .iter()
            .filter(|s| qid_to_has_ans[s.qid] == has_ans)
            .collect();
        if !qid_list.is_empty() {
            merge_eval(&mut out_eval, make_eval_dict(&qid_list), prefix);
        }
    }
    if na_probs.is_some() {
        let num_no_ans = gold.iter().filter(|q| q.answers.is_empty()).count();
        find_all_best_thresh(
            &mut out_eval,
            predictions,
            &raw,
            na_list,
            &qid_to_has_ans,
            num_no_ans,
        );
    }
    Ok(out_eval)
}

fn make_qid_to_has_ans(gold: &[Gold]) -> HashMap<&str, bool> {
    gold.iter()
        .map(|q| (q.id.as_str(), !q.answers.is_empty()))
        .collect()
}

/// Scores of the predicted questions, in data order. Gold answers that normalise to ""
/// are dropped; a question left without any has the single gold answer "".
fn get_raw_scores<'a>(
    gold: &'a [Gold],
    predictions: &HashMap<String, String>,
) -> Vec<QuestionScores<'a>> {
    let mut raw = Vec::new();
    for q in gold {
        let Some(pred) = predictions.get(&q.id) else {
            continue;
        };
        let golds: Vec<&str> = q
            .answers
            .iter()
            .map(String::as_str)
            .filter(|a| !normalize_answer(a).is_empty())
            .collect();
        let golds = if golds.is_empty() { vec![""] } else { golds };
        let exact = golds
            .iter()
            .map(|g| f64::from(u8::from(exact_match(pred, g))))
            .fold(0.0, f64::max);
        let f1 = golds.iter().map(|g| f1_v2(pred, g)).fold(0.0, f64::max);
        raw.push(QuestionScores {
            qid: &q.id,
            exact,
            f1,
        });
    }
    raw
}

/// A question whose no-answer probability exceeds the threshold is predicted "no answer":
/// it scores 1 when it has no answer, else 0 (exact and F1 alike).
fn apply_no_ans_threshold<'a>(
    scores: &[QuestionScores<'a>],
    na_probs: &[(String, f64)],
    qid_to_has_ans: &HashMap<&str, bool>,
    na_prob_thresh: f64,
) -> Result<Vec<QuestionScores<'a>>, MetricError> {
    let na: HashMap<&str, f64> = na_probs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    scores
        .iter()
        .map(|s| -> Result<QuestionScores<'a>, MetricError> {
            let p = *na
                .get(s.qid)
                .ok_or_else(|| MetricError::MissingNaProb(s.qid.to_string()))?;
            if p > na_prob_thresh {
                let v = f64::from(u8::from(!qid_to_has_ans[s.qid]));
                Ok(QuestionScores {
                    qid: s.qid,
                    exact: v,
                    f1: v,
                })
            } else {
                Ok(*s)
            }
        })
        .collect()
}

/// `exact`, `f1` (means x 100; 0 for no questions) and `total` of `qid_list`.
fn make_eval_dict(qid_list: &[&QuestionScores]) -> EvalDict {
    let total = qid_list.len();
    let mean = |score: fn(&QuestionScores) -> f64| {
        if total == 0 {
            0.0
        } else {
            100.0 * qid_list.iter().map(|s| score(s)).sum::<f64>() / total as f64
        }
    };
    let mut eval = EvalDict::new();
    eval.insert("exact".into(), mean(|s| s.exact).into());
    eval.insert("f1".into(), mean(|s| s.f1).into());
    eval.insert("total".into(), total.into());
    eval
}

fn merge_eval(main_eval: &mut EvalDict, new_eval: EvalDict, prefix: &str) {
    for (k, v) in new_eval {
        main_eval.insert(format!("{prefix}_{k}"), v);
    }
}

/// The threshold on the no-answer probability that maximises the score (`scores` raw,
/// before any threshold), and that score x 100. `na_probs_sorted` ascending, ties in file
/// order (Python's stable `sorted`).
fn find_best_thresh(
    predictions: &HashMap<String, String>,
    scores: &HashMap<&str, f64>,
    na_probs_sorted: &[&(String, f64)],
    qid_to_has_ans: &HashMap<&str, bool>,
    num_no_ans: usize,
) -> (f64, f64) {
    let mut cur_score = num_no_ans as f64;
    let (mut best_score, mut best_thresh) = (cur_score, 0.0);
    for (qid, p) in na_probs_sorted {
        let Some(&s) = scores.get(qid.as_str()) else {
            continue;
        };
        cur_score += if qid_to_has_ans[qid.as_str()] {
            s
        } else if predictions[qid].is_empty() {
            0.0
        } else {
            -1.0
        };
        if cur_score > best_score {
            best_score = cur_score;
            best_thresh = *p;
        }
    }
    let denom = scores.len().max(1) as f64;
    (100.0 * best_score / denom, best_thresh)
}

fn find_all_best_thresh(
    main_eval: &mut EvalDict,
    predictions: &HashMap<String, String>,
    raw: &[QuestionScores],
    na_probs: &[(String, f64)],
    qid_to_has_ans: &HashMap<&str, bool>,
    num_no_ans: usize,
) {
    let mut sorted: Vec<&(String, f64)> = na_probs.iter().collect();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1)); // stable, as Python's sorted
    let exact = |s: &QuestionScores| s.exact;
    let f1 = |s: &QuestionScores| s.f1;
    for (name, score) in [("exact", exact as fn(&_) -> f64), ("f1", f1)] {
        let scores: HashMap<&str, f64> = raw.iter().map(|s| (s.qid, score(s))).collect();
        let (best, thresh) =
            find_best_thresh(predictions, &scores, &sorted, qid_to_has_ans, num_no_ans);
        main_eval.insert(format!("best_{name}"), best.into());
        main_eval.insert(format!("best_{name}_thresh"), thresh.into());
    }
}

/// Ids of `predictions` that are not questions of `gold` (ignored by the metric).
pub fn unknown_ids<'a>(
    gold: &[Gold],
    predictions: impl IntoIterator<Item = &'a String>,
) -> Vec<&'a String> {
    let known: HashSet<&str> = gold.iter().map(|q| q.id.as_str()).collect();
    predictions
        .into_iter()
        .filter(|id| !known.contains(id.as_str()))
        .collect()
}

/// A JSON object read as `(key, value)` pairs in file order (serde_json's own map sorts).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_rules() {
        assert_eq!(normalize_answer("The  Denver Broncos!"), "denver broncos");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
        // Only ASCII punctuation is removed.
        assert_eq!(normalize_answer("it’s — “ok”"), "it’s — “ok”");
        assert_eq!(normalize_answer("theater"), "theater");
        assert_eq!(normalize_answer("ÉCOLE\u{a0}Normale"), "école normale");
    }

    #[test]
    fn f1_counts_token_multisets() {
        assert!((f1_v1("the cat sat", "a cat sat down") - 0.8).abs() < 1e-12);
        assert_eq!(f1_v1("dog", "cat"), 0.0);
        assert_eq!(f1_v2("", ""), 1.0);
        assert_eq!(f1_v2("the", ""), 1.0);
        assert_eq!(f1_v2("x", ""), 0.0);
    }
}
