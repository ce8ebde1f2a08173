//! The SQuAD JSON format (v1.1 and v2.0), as published. Unknown keys (e.g. v2.0's
//! `plausible_answers`) are ignored; the fields below are required.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct SquadFile {
    #[serde(default)]
    pub version: Option<String>,
    pub data: Vec<Article>,
}

#[derive(Debug, Deserialize)]
pub struct Article {
    pub title: String,
    pub paragraphs: Vec<Paragraph>,
}

#[derive(Debug, Deserialize)]
pub struct Paragraph {
    pub context: String,
    pub qas: Vec<Qa>,
}

#[derive(Debug, Deserialize)]
pub struct Qa {
    pub id: String,
    pub question: String,
    pub answers: Vec<Answer>,
    /// Present (and sometimes true) in SQuAD v2.0 only.
    #[serde(default)]
    pub is_impossible: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Answer {
    pub text: String,
    /// Character (code point) index into the context.
    pub answer_start: i64,
}

impl SquadFile {
    /// "2.0" when the file says so or any question carries `is_impossible`, else "1.1".
    pub fn squad_version(&self) -> &'static str {
        let says_v2 = self
            .version
            .as_deref()
            .is_some_and(|v| v.trim_start_matches('v').starts_with('2'));
        let has_v2_field = self
            .data
            .iter()
            .flat_map(|a| &a.paragraphs)
            .flat_map(|p| &p.qas)
            .any(|q| q.is_impossible.is_some());
        if says_v2 || has_v2_field {
            "2.0"
        } else {
            "1.1"
        }
    }
}
