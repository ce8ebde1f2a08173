//! HF `run_qa.py` windows and labels, built directly from the question's and the context's
//! tokens (what the tokenizers crate does for a pair with `only_second` truncation and
//! overflow, without depending on its overflow code: 0.23.x cuts windows short, upstream
//! issue 2091).

use std::ops::Range;

/// Context token ranges of the windows: `window` tokens each, consecutive windows
/// sharing `stride` tokens, the last one ending at the context's end. Needs
/// `stride < window` unless the whole context fits in one window.
pub fn window_ranges(n_context: usize, window: usize, stride: usize) -> Vec<Range<usize>> {
    if n_context <= window {
        return std::iter::once(0..n_context).collect();
    }
    assert!(stride < window, "stride {stride} must be < window {window}");
    let step = window - stride;
    let mut ranges = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + window).min(n_context);
        ranges.push(start..end);
        if end == n_context {
            return ranges;
        }
        start += step;
    }
}

/// Start/end label of one window, as token indices into the window's context tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// The answer lies fully inside the window.
    Span { start: usize, end: usize },
    /// Unanswerable, or the answer is not (fully) inside this window: point at `[CLS]`.
    Cls,
}

/// Labels a window whose context tokens have char offsets `offsets`, for an answer covering
/// chars `answer_start .. answer_end`.
///
/// Same as run_qa.py, with one fix: run_qa.py scans for the start token past the window's
/// last context token (over `[SEP]` and padding, whose offsets are (0, 0)), so an answer
/// starting at the last context token gets start = max_length - 1 > end. Here the scan stops
/// at the context's end. Returns whether that fix changed the label (`hf_edge_case`).
pub fn label_window(offsets: &[(usize, usize)], answer: Option<(usize, usize)>) -> (Label, bool) {
    let Some((answer_start, answer_end)) = answer else {
        return (Label::Cls, false);
    };
    let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
        return (Label::Cls, false);
    };
    if !(first.0 <= answer_start && last.1 >= answer_end) {
        return (Label::Cls, false);
    }
    let mut start = 0;
    while start < offsets.len() && offsets[start].0 <= answer_start {
        start += 1;
    }
    let hf_edge_case = start == offsets.len();
    let mut end = offsets.len() as isize - 1;
    while end >= 0 && offsets[end as usize].1 >= answer_end {
        end -= 1;
    }
    (
        Label::Span {
            start: start - 1,
            end: (end + 1) as usize,
        },
        hf_edge_case,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_stride_and_cover_the_context() {
        assert_eq!(window_ranges(5, 10, 3), vec![0..5]);
        assert_eq!(window_ranges(10, 10, 3), vec![0..10]);
        assert_eq!(window_ranges(11, 10, 3), vec![0..10, 7..11]);
        assert_eq!(window_ranges(25, 10, 4), vec![0..10, 6..16, 12..22, 18..25]);
        assert_eq!(window_ranges(0, 10, 3), vec![0..0]);
    }

    #[test]
    fn labels_find_the_covering_tokens() {
        // tokens: "the"(0,3) "swiss"(4,9) "can"(10,13) "##ton"(13,16)
        let offs = [(0, 3), (4, 9), (10, 13), (13, 16)];
        assert_eq!(
            label_window(&offs, Some((4, 16))),
            (Label::Span { start: 1, end: 3 }, false)
        );
        assert_eq!(
            label_window(&offs, Some((0, 3))),
            (Label::Span { start: 0, end: 0 }, false)
        );
        // Answer starting inside a word: start is the token containing it.
        assert_eq!(
            label_window(&offs, Some((11, 16))),
            (Label::Span { start: 2, end: 3 }, false)
        );
        // Not fully inside the window, or no answer.
        assert_eq!(label_window(&offs, Some((10, 20))), (Label::Cls, false));
        assert_eq!(label_window(&offs[1..], Some((0, 3))), (Label::Cls, false));
        assert_eq!(label_window(&offs, None), (Label::Cls, false));
    }

    #[test]
    fn answer_at_the_last_context_token_is_labelled_correctly() {
        // run_qa.py would give start = max_length - 1 here.
        let offs = [(0, 3), (4, 9), (10, 14)];
        assert_eq!(
            label_window(&offs, Some((10, 14))),
            (Label::Span { start: 2, end: 2 }, true)
        );
    }
}
