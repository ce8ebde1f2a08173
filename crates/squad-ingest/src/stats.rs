//! Dataset exploration (the notebook's "explore" step): counts, length distributions and the
//! most common question openings. Written as JSON beside the examples file by ingest, and
//! printed by `squad-ingest stats`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use squad_core::Example;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub articles: usize,
    pub paragraphs: usize,
    pub questions: usize,
    pub answers: usize,
    pub unanswerable: usize,
    /// Lengths of each distinct paragraph's context.
    pub context_chars: Quantiles,
    pub context_words: Quantiles,
    pub question_chars: Quantiles,
    pub question_words: Quantiles,
    /// Lengths of every gold answer (all answers of every question).
    pub answer_chars: Quantiles,
    pub answer_words: Quantiles,
    /// Most common first words of questions, lowercased, with counts.
    pub question_first_words: Vec<(String, usize)>,
}

/// Distribution summary; quantiles interpolate linearly (numpy's default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(mut values: Vec<usize>) -> Self {
        values.sort_unstable();
        let q = |p: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            let pos = p * (values.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let frac = pos - lo as f64;
            values[lo] as f64 + (values[hi] as f64 - values[lo] as f64) * frac
        };
        let sum: usize = values.iter().sum();
        Quantiles {
            count: values.len(),
            mean: if values.is_empty() {
                0.0
            } else {
                sum as f64 / values.len() as f64
            },
            min: q(0.0),
            p25: q(0.25),
            p50: q(0.5),
            p75: q(0.75),
            p90: q(0.9),
            p99: q(0.99),
            max: q(1.0),
        }
    }
}

const TOP_FIRST_WORDS: usize = 10;

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

fn first_word(question: &str) -> Option<String> {
    let w = question.split_whitespace().next()?;
    let w: String = w
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    (!w.is_empty()).then_some(w)
}

impl Stats {
    pub fn of(examples: &[Example]) -> Self {
        let articles: BTreeSet<u32> = examples.iter().map(|e| e.article_index).collect();
        let mut seen_paragraphs = BTreeSet::new();
        let mut context_chars = Vec::new();
        let mut context_words = Vec::new();
        for e in examples {
            if seen_paragraphs.insert((e.article_index, e.paragraph_index)) {
                context_chars.push(e.context.chars().count());
                context_words.push(words(&e.context));
            }
        }
        let all_answers = || examples.iter().flat_map(|e| &e.answer_texts);
        let mut first_words: HashMap<String, usize> = HashMap::new();
        for w in examples.iter().filter_map(|e| first_word(&e.question)) {
            *first_words.entry(w).or_default() += 1;
        }
        let mut first_words: Vec<(String, usize)> = first_words.into_iter().collect();
        first_words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        first_words.truncate(TOP_FIRST_WORDS);
        Stats {
            articles: articles.len(),
            paragraphs: seen_paragraphs.len(),
            questions: examples.len(),
            answers: all_answers().count(),
            unanswerable: examples.iter().filter(|e| e.is_impossible).count(),
            context_chars: Quantiles::of(context_chars),
            context_words: Quantiles::of(context_words),
            question_chars: Quantiles::of(
                examples
                    .iter()
                    .map(|e| e.question.chars().count())
                    .collect(),
            ),
            question_words: Quantiles::of(examples.iter().map(|e| words(&e.question)).collect()),
            answer_chars: Quantiles::of(all_answers().map(|a| a.chars().count()).collect()),
            answer_words: Quantiles::of(all_answers().map(|a| words(a)).collect()),
            question_first_words: first_words,
        }
    }

    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "articles {}  paragraphs {}  questions {}  answers {}  unanswerable {}",
            self.articles, self.paragraphs, self.questions, self.answers, self.unanswerable
        );
        let _ = writeln!(
            s,
            "\n{:<16} {:>7} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "length", "count", "mean", "min", "p25", "p50", "p75", "p90", "p99", "max"
        );
        for (name, q) in [
            ("context chars", &self.context_chars),
            ("context words", &self.context_words),
            ("question chars", &self.question_chars),
            ("question words", &self.question_words),
            ("answer chars", &self.answer_chars),
            ("answer words", &self.answer_words),
        ] {
            let _ = writeln!(
                s,
                "{:<16} {:>7} {:>8.1} {:>6.0} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.0}",
                name, q.count, q.mean, q.min, q.p25, q.p50, q.p75, q.p90, q.p99, q.max
            );
        }
        let _ = writeln!(s, "\nmost common question first words:");
        for (word, count) in &self.question_first_words {
            let share = 100.0 * *count as f64 / self.questions.max(1) as f64;
            let _ = writeln!(s, "  {word:<10} {count:>7}  {share:5.1}%");
        }
        s
    }
}

/// `k` rows spread evenly over the file (deterministic), rendered for reading.
pub fn render_samples(examples: &[Example], k: usize) -> String {
    let mut s = String::new();
    if examples.is_empty() || k == 0 {
        return s;
    }
    let k = k.min(examples.len());
    for i in 0..k {
        let e = &examples[i * examples.len() / k];
        let answer = if e.is_impossible {
            "<no answer>".to_string()
        } else {
            format!("{:?} @ char {}", e.answer_texts[0], e.answer_starts[0])
        };
        let context: String = e.context.chars().take(160).collect();
        let ellipsis = if e.context.chars().count() > 160 {
            "…"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "\n[{}] {} — {}\n  Q: {}\n  A: {}\n  C: {}{}",
            e.id, e.title, e.paragraph_index, e.question, answer, context, ellipsis
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let q = Quantiles::of(vec![1, 2, 3, 4]);
        assert_eq!((q.min, q.p25, q.p50, q.max), (1.0, 1.75, 2.5, 4.0));
        assert_eq!(q.mean, 2.5);
        let empty = Quantiles::of(vec![]);
        assert_eq!(empty.count, 0);
    }

    #[test]
    fn first_word_is_lowercased_and_unpunctuated() {
        assert_eq!(first_word("  \"What's this?"), Some("what's".into()));
        assert_eq!(first_word("Who?"), Some("who".into()));
        assert_eq!(first_word("  "), None);
    }
}
