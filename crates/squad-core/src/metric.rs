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

use crate::text::python_split;

/// A question's gold answers. `has_answer` is false for v2.0 unanswerable questions.
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

/// Official v2.0 output: exact, f1, total, HasAns_*, NoAns_*, and best_* with no-answer
/// probabilities. `na_probs` in file order (ties in the threshold search follow it).
pub fn evaluate_v2(
    gold: &[Gold],
    predictions: &HashMap<String, String>,
    na_probs: Option<&[(String, f64)]>,
    na_prob_thresh: f64,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let has_answer: HashMap<&str, bool> = gold
        .iter()
        .map(|q| (q.id.as_str(), !q.answers.is_empty()))
        .collect();
    let zero: Vec<(String, f64)>;
    let na_list: &[(String, f64)] = match na_probs {
        Some(p) => p,
        None => {
            zero = predictions.keys().map(|k| (k.clone(), 0.0)).collect();
            &zero
        }
    };
    let na: HashMap<&str, f64> = na_list.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    // Raw scores in data order, predicted questions only.
    let mut raw: Vec<(&str, f64, f64)> = Vec::new();
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
        let em = golds
            .iter()
            .map(|g| f64::from(u8::from(exact_match(pred, g))))
            .fold(0.0, f64::max);
        let f1 = golds.iter().map(|g| f1_v2(pred, g)).fold(0.0, f64::max);
        raw.push((&q.id, em, f1));
    }
    let mut thresholded = Vec::with_capacity(raw.len());
    for &(id, em, f1) in &raw {
        let p = *na
            .get(id)
            .ok_or_else(|| format!("no no-answer probability for question {id:?}"))?;
        if p > na_prob_thresh {
            let v = f64::from(u8::from(!has_answer[id]));
            thresholded.push((id, v, v));
        } else {
            thresholded.push((id, em, f1));
        }
    }
    let mut out = serde_json::Map::new();
    let summary = |rows: &[&(&str, f64, f64)]| -> (f64, f64, usize) {
        let n = rows.len();
        let mean = |f: fn(&(&str, f64, f64)) -> f64| {
            if n == 0 {
                0.0
            } else {
                100.0 * rows.iter().map(|r| f(r)).sum::<f64>() / n as f64
            }
        };
        (mean(|r| r.1), mean(|r| r.2), n)
    };
    let all: Vec<&(&str, f64, f64)> = thresholded.iter().collect();
    let (e, f, n) = summary(&all);
    out.insert("exact".into(), e.into());
    out.insert("f1".into(), f.into());
    out.insert("total".into(), n.into());
    for (prefix, want) in [("HasAns", true), ("NoAns", false)] {
        let rows: Vec<&(&str, f64, f64)> = thresholded
            .iter()
            .filter(|r| has_answer[r.0] == want)
            .collect();
        if !rows.is_empty() {
            let (e, f, n) = summary(&rows);
            out.insert(format!("{prefix}_exact"), e.into());
            out.insert(format!("{prefix}_f1"), f.into());
            out.insert(format!("{prefix}_total"), n.into());
        }
    }
    if na_probs.is_some() {
        let no_answers = gold.iter().filter(|q| q.answers.is_empty()).count() as f64;
        let mut order: Vec<&(String, f64)> = na_list.iter().collect();
        order.sort_by(|a, b| a.1.total_cmp(&b.1)); // stable, as Python's sorted
        for (name, col) in [("exact", 1usize), ("f1", 2)] {
            let scores: HashMap<&str, f64> = raw
                .iter()
                .map(|r| (r.0, if col == 1 { r.1 } else { r.2 }))
                .collect();
            let (mut cur, mut best, mut thresh) = (no_answers, no_answers, 0.0);
            for (id, p) in &order {
                let Some(&s) = scores.get(id.as_str()) else {
                    continue;
                };
                cur += if has_answer[id.as_str()] {
                    s
                } else if predictions[id].is_empty() {
                    0.0
                } else {
                    -1.0
                };
                if cur > best {
                    best = cur;
                    thresh = *p;
                }
            }
            let denom = scores.len().max(1) as f64;
            out.insert(format!("best_{name}"), (100.0 * best / denom).into());
            out.insert(format!("best_{name}_thresh"), thresh.into());
        }
    }
    Ok(out)
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
