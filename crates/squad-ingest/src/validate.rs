//! Checks a SQuAD question the way a trainer relies on it: non-empty context and question,
//! at least one answer unless unanswerable, and every answer's text found at its
//! `answer_start` counted in **characters** (code points), not bytes.

use std::fmt;

/// Byte offsets of each char boundary of a context, for char-indexed slicing.
pub struct CharIndex<'a> {
    text: &'a str,
    bounds: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut bounds: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bounds.push(text.len());
        CharIndex { text, bounds }
    }

    pub fn char_len(&self) -> usize {
        self.bounds.len() - 1
    }

    /// `text[start .. start + len]` in chars, or None when out of range.
    pub fn slice(&self, start: usize, len: usize) -> Option<&'a str> {
        let end = start.checked_add(len)?;
        if end > self.char_len() {
            return None;
        }
        Some(&self.text[self.bounds[start]..self.bounds[end]])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    EmptyContext,
    EmptyQuestion,
    NoAnswers,
    UnanswerableWithAnswers,
    EmptyAnswer {
        answer: usize,
    },
    AnswerOutOfRange {
        answer: usize,
        start: i64,
        context_chars: usize,
    },
    AnswerMismatch {
        answer: usize,
        start: i64,
        expected: String,
        found: String,
    },
    DuplicateId,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::EmptyContext => write!(f, "empty context"),
            Problem::EmptyQuestion => write!(f, "empty question"),
            Problem::NoAnswers => write!(f, "no answers (and not marked is_impossible)"),
            Problem::UnanswerableWithAnswers => write!(f, "is_impossible is true but answers are given"),
            Problem::EmptyAnswer { answer } => write!(f, "answer {answer} has empty text"),
            Problem::AnswerOutOfRange { answer, start, context_chars } => write!(
                f,
                "answer {answer} at char {start} runs past the context ({context_chars} chars)"
            ),
            Problem::AnswerMismatch { answer, start, expected, found } => write!(
                f,
                "answer {answer} text {expected:?} is not at char {start} of the context (found {found:?})"
            ),
            Problem::DuplicateId => write!(f, "duplicate question id"),
        }
    }
}

/// A rejected question and where it is in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub article: usize,
    pub title: String,
    pub paragraph: usize,
    pub id: String,
    pub problem: Problem,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "article {} {:?}, paragraph {}, question {:?}: {}",
            self.article, self.title, self.paragraph, self.id, self.problem
        )
    }
}

/// Problems of one question (`context` already indexed), first one only.
pub fn check_question(
    context: &CharIndex<'_>,
    question: &crate::squad_json::Qa,
) -> Option<Problem> {
    if context.text.trim().is_empty() {
        return Some(Problem::EmptyContext);
    }
    if question.question.trim().is_empty() {
        return Some(Problem::EmptyQuestion);
    }
    let impossible = question.is_impossible.unwrap_or(false);
    if impossible && !question.answers.is_empty() {
        return Some(Problem::UnanswerableWithAnswers);
    }
    if !impossible && question.answers.is_empty() {
        return Some(Problem::NoAnswers);
    }
    for (i, answer) in question.answers.iter().enumerate() {
        if answer.text.is_empty() {
            return Some(Problem::EmptyAnswer { answer: i });
        }
        let len = answer.text.chars().count();
        let found = usize::try_from(answer.answer_start)
            .ok()
            .and_then(|start| context.slice(start, len));
        match found {
            None => {
                return Some(Problem::AnswerOutOfRange {
                    answer: i,
                    start: answer.answer_start,
                    context_chars: context.char_len(),
                })
            }
            Some(found) if found != answer.text => {
                return Some(Problem::AnswerMismatch {
                    answer: i,
                    start: answer.answer_start,
                    expected: answer.text.clone(),
                    found: found.to_string(),
                })
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_slicing_is_by_code_point() {
        let idx = CharIndex::new("长江 “Düsseldorf”\u{a0}x");
        assert_eq!(idx.slice(0, 2), Some("长江"));
        assert_eq!(idx.slice(4, 10), Some("Düsseldorf"));
        assert_eq!(idx.slice(15, 1), Some("\u{a0}"));
        assert_eq!(idx.slice(16, 1), Some("x"));
        assert_eq!(idx.slice(16, 2), None);
    }
}
