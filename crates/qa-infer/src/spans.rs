//! Answer spans across all windows of a context, with a score that means the same in every
//! window: the model's probability of the span among **all** valid spans of **all** windows
//! (softmax of start + end logits over every (start, end) pair inside the context, end >=
//! start, at most `max_answer_length` tokens). Windows overlap, so the same text span can come
//! from two windows: their probabilities are added. (rust-bert normalises within each window,
//! which makes a confident-looking span in a window without the answer score as high as the
//! real one.)

/// One window's logits and the char offsets of its tokens (None outside the context).
pub struct WindowLogits<'a> {
    pub start: &'a [f32],
    pub end: &'a [f32],
    pub offsets: &'a [Option<(usize, usize)>],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Char offsets into the context, end exclusive.
    pub start: usize,
    pub end: usize,
    pub probability: f64,
    /// Best start + end logit among the windows that produced it.
    pub logit: f32,
}

fn valid_pairs<'a>(
    w: &'a WindowLogits<'a>,
    max_len: usize,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    let n = w.offsets.len();
    (0..n)
        .filter(|&i| w.offsets[i].is_some())
        .flat_map(move |i| {
            (i..n.min(i + max_len))
                .filter(|&j| w.offsets[j].is_some())
                .map(move |j| (i, j))
        })
}

/// The `top_k` most probable spans.
pub fn best_spans(
    windows: &[WindowLogits<'_>],
    max_answer_length: usize,
    top_k: usize,
) -> Vec<Span> {
    let mut spans = ranked_spans(windows, max_answer_length, None);
    spans.truncate(top_k);
    spans
}

/// `best_spans` with the null answer (char span 0..0, text "") among the candidates, for
/// SQuAD v2.0-style questions, by qa-eval's rule: the null logit is the lowest start[CLS] +
/// end[CLS] over the windows, and the null answer comes first when it beats the best span's
/// logit. Its mass joins the normalisation (as in HF's pipeline with handle_impossible_answer).
pub fn best_spans_or_null(
    windows: &[WindowLogits<'_>],
    max_answer_length: usize,
    top_k: usize,
) -> Vec<Span> {
    let null = windows
        .iter()
        .filter_map(|w| Some(w.start.first()? + w.end.first()?))
        .min_by(f32::total_cmp);
    let Some(null) = null else {
        return Vec::new();
    };
    let mut spans = ranked_spans(windows, max_answer_length, Some(null));
    let at = spans
        .iter()
        .position(Span::is_null)
        .expect("null span ranked");
    let best_logit = spans
        .iter()
        .filter(|s| !s.is_null())
        .map(|s| s.logit)
        .max_by(f32::total_cmp);
    if best_logit.is_none_or(|best| null > best) {
        let null_span = spans.remove(at);
        spans.insert(0, null_span);
    }
    spans.truncate(top_k);
    spans
}

impl Span {
    pub fn is_null(&self) -> bool {
        self.start == 0 && self.end == 0
    }
}

/// Every span with its probability, most probable first; `null`: the null logit, a
/// candidate of its own.
fn ranked_spans(
    windows: &[WindowLogits<'_>],
    max_answer_length: usize,
    null: Option<f32>,
) -> Vec<Span> {
    // log Z over every valid pair of every window (max-shifted for stability).
    let mut max = null.unwrap_or(f32::NEG_INFINITY);
    for w in windows {
        for (i, j) in valid_pairs(w, max_answer_length) {
            max = max.max(w.start[i] + w.end[j]);
        }
    }
    if max == f32::NEG_INFINITY {
        return Vec::new();
    }
    let mut z = 0f64;
    let mut spans: Vec<Span> = Vec::new();
    if let Some(logit) = null {
        let mass = ((logit - max) as f64).exp();
        z += mass;
        spans.push(Span {
            start: 0,
            end: 0,
            probability: mass,
            logit,
        });
    }
    let mut index = std::collections::HashMap::new();
    for w in windows {
        for (i, j) in valid_pairs(w, max_answer_length) {
            let logit = w.start[i] + w.end[j];
            let mass = ((logit - max) as f64).exp();
            z += mass;
            let (start, end) = (w.offsets[i].unwrap().0, w.offsets[j].unwrap().1);
            if end <= start {
                continue;
            }
            let k = *index.entry((start, end)).or_insert_with(|| {
                spans.push(Span {
                    start,
                    end,
                    probability: 0.0,
                    logit,
                });
                spans.len() - 1
            });
            spans[k].probability += mass;
            spans[k].logit = spans[k].logit.max(logit);
        }
    }
    for s in &mut spans {
        s.probability /= z;
    }
    spans.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.start.cmp(&b.start))
    });
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_normalised_across_windows_and_merge_duplicates() {
        let offs = [None, Some((0, 3)), Some((4, 7)), None];
        let w1 = WindowLogits {
            start: &[9., 2., 0., 9.],
            end: &[9., 0., 2., 9.],
            offsets: &offs,
        };
        let w2 = WindowLogits {
            start: &[9., 2., 0., 9.],
            end: &[9., 0., 2., 9.],
            offsets: &offs,
        };
        let one = best_spans(&[w1], 30, 10);
        assert_eq!((one[0].start, one[0].end), (0, 7));
        let total: f64 = one.iter().map(|s| s.probability).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let w1 = WindowLogits {
            start: &[9., 2., 0., 9.],
            end: &[9., 0., 2., 9.],
            offsets: &offs,
        };
        let two = best_spans(&[w1, w2], 30, 10);
        // Same spans twice: merged, same probabilities.
        assert_eq!(two.len(), one.len());
        assert!((two[0].probability - one[0].probability).abs() < 1e-9);
    }

    #[test]
    fn max_answer_length_and_context_only() {
        let offs = [None, Some((0, 1)), Some((2, 3)), Some((4, 5))];
        let w = WindowLogits {
            start: &[50., 5., 0., 0.],
            end: &[50., 0., 0., 5.],
            offsets: &offs,
        };
        let best = best_spans(&[w], 2, 1);
        // (1, 3) is 3 tokens: too long; CLS (index 0) is not a context token.
        assert_eq!((best[0].start, best[0].end), (0, 1));
    }

    #[test]
    fn the_null_answer_comes_first_only_when_it_beats_the_best_span() {
        let offs = [None, Some((0, 3)), Some((4, 7)), None];
        let end = [0., 0., 2., -9.];
        // Best span (0, 7): logit 2 + 2 = 4. Null: start[CLS] + end[CLS].
        let quiet = [1., 2., 0., -9.];
        let window = |start| WindowLogits {
            start,
            end: &end,
            offsets: &offs,
        };
        let spans = best_spans_or_null(&[window(&quiet)], 30, 10);
        assert!(!spans[0].is_null());
        assert!(spans.iter().any(Span::is_null));
        let total: f64 = spans.iter().map(|s| s.probability).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let loud = [5., 2., 0., -9.];
        let spans = best_spans_or_null(&[window(&quiet), window(&loud)], 30, 1);
        // The lowest null over windows (1) counts: the span still wins.
        assert!(!spans[0].is_null());
        let spans = best_spans_or_null(&[window(&loud)], 30, 1);
        assert!(spans[0].is_null());
    }
}
