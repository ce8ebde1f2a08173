//! The examples file (`*.examples.parquet`): one row per SQuAD question. This module is the
//! only definition of its schema; `squad-ingest` writes it and every later stage reads it.

use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::parquet_io::{self, i32_list_column, string_list_column, Columns, Metadata};

/// One SQuAD question with its paragraph. `answer_starts` are **character** (code point)
/// indices into `context`, as in the SQuAD JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub id: String,
    pub title: String,
    pub context: String,
    pub question: String,
    pub answer_texts: Vec<String>,
    pub answer_starts: Vec<i32>,
    /// SQuAD v2.0 unanswerable question (always false for v1.1).
    pub is_impossible: bool,
    /// Position of the article in the source file (0-based).
    pub article_index: u32,
    /// Position of the paragraph within its article (0-based).
    pub paragraph_index: u32,
}

pub mod col {
    pub const ID: &str = "id";
    pub const TITLE: &str = "title";
    pub const CONTEXT: &str = "context";
    pub const QUESTION: &str = "question";
    pub const ANSWER_TEXTS: &str = "answer_texts";
    pub const ANSWER_STARTS: &str = "answer_starts";
    pub const IS_IMPOSSIBLE: &str = "is_impossible";
    pub const ARTICLE_INDEX: &str = "article_index";
    pub const PARAGRAPH_INDEX: &str = "paragraph_index";
}

/// Footer metadata keys of an examples file, and its `parquet_io::KIND` value.
pub mod meta {
    /// The value of `parquet_io::KIND` in an examples file.
    pub const KIND_VALUE: &str = "examples";
    pub const SOURCE_FILE: &str = "source_file";
    /// sha256 of the decompressed SQuAD JSON (comparable with the published checksums).
    pub const SOURCE_SHA256: &str = "source_sha256";
    pub const SQUAD_VERSION: &str = "squad_version";
    /// Which questions were kept (`limit`, `shard`, `articles`), as JSON.
    pub const SELECTION: &str = "selection";
    pub const DROPPED: &str = "dropped_invalid";
}

pub fn to_frame(examples: &[Example]) -> Result<DataFrame> {
    let strings = |name: &str, f: fn(&Example) -> &str| -> Column {
        Series::new(name.into(), examples.iter().map(f).collect::<Vec<_>>()).into()
    };
    let columns = vec![
        strings(col::ID, |e| &e.id),
        strings(col::TITLE, |e| &e.title),
        strings(col::CONTEXT, |e| &e.context),
        strings(col::QUESTION, |e| &e.question),
        string_list_column(
            col::ANSWER_TEXTS,
            examples.iter().map(|e| e.answer_texts.as_slice()),
        ),
        i32_list_column(
            col::ANSWER_STARTS,
            examples.iter().map(|e| e.answer_starts.as_slice()),
        ),
        Series::new(
            col::IS_IMPOSSIBLE.into(),
            examples.iter().map(|e| e.is_impossible).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            col::ARTICLE_INDEX.into(),
            examples.iter().map(|e| e.article_index).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            col::PARAGRAPH_INDEX.into(),
            examples
                .iter()
                .map(|e| e.paragraph_index)
                .collect::<Vec<_>>(),
        )
        .into(),
    ];
    DataFrame::new(examples.len(), columns).map_err(|e| Error::Parquet {
        path: "<examples>".into(),
        message: e.to_string(),
    })
}

pub fn from_frame(path: &Path, df: &DataFrame) -> Result<Vec<Example>> {
    let c = Columns::new(path, df);
    let ids = c.strings(col::ID)?;
    let titles = c.strings(col::TITLE)?;
    let contexts = c.strings(col::CONTEXT)?;
    let questions = c.strings(col::QUESTION)?;
    let answer_texts = c.string_lists(col::ANSWER_TEXTS)?;
    let answer_starts = c.i32_lists(col::ANSWER_STARTS)?;
    let impossible = c.bools(col::IS_IMPOSSIBLE)?;
    let articles = c.u32s(col::ARTICLE_INDEX)?;
    let paragraphs = c.u32s(col::PARAGRAPH_INDEX)?;
    let mut out = Vec::with_capacity(ids.len());
    let rows = ids
        .into_iter()
        .zip(titles)
        .zip(contexts)
        .zip(questions)
        .zip(answer_texts)
        .zip(answer_starts)
        .zip(impossible)
        .zip(articles)
        .zip(paragraphs);
    for (row, ((((((((id, title), context), question), texts), starts), imp), art), par)) in
        rows.enumerate()
    {
        if texts.len() != starts.len() {
            return Err(Error::schema(
                path,
                format!(
                    "row {row} (id {id}): {} answer texts but {} answer starts",
                    texts.len(),
                    starts.len()
                ),
            ));
        }
        out.push(Example {
            id,
            title,
            context,
            question,
            answer_texts: texts,
            answer_starts: starts,
            is_impossible: imp,
            article_index: art,
            paragraph_index: par,
        });
    }
    Ok(out)
}

/// Writes an examples file atomically; `metadata` gets the `kind` marker added.
pub fn write(path: &Path, examples: &[Example], metadata: &Metadata) -> Result<()> {
    let mut df = to_frame(examples)?;
    let mut metadata = metadata.clone();
    metadata.insert(parquet_io::KIND.into(), meta::KIND_VALUE.into());
    parquet_io::write_parquet(path, &mut df, &metadata)
}

/// Reads an examples file, rejecting files of another kind with a clear message.
pub fn read(path: &Path) -> Result<(Vec<Example>, Metadata)> {
    let (df, metadata) = parquet_io::read_parquet(path)?;
    parquet_io::expect_kind(path, &metadata, meta::KIND_VALUE, "squad-ingest")?;
    Ok((from_frame(path, &df)?, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Example> {
        vec![
            Example {
                id: "q1".into(),
                title: "Düsseldorf".into(),
                context: "长江 flows “east” past Düsseldorf.".into(),
                question: "Where?".into(),
                answer_texts: vec!["Düsseldorf".into(), "past Düsseldorf".into()],
                answer_starts: vec![21, 16],
                is_impossible: false,
                article_index: 0,
                paragraph_index: 0,
            },
            Example {
                id: "q2".into(),
                title: "T".into(),
                context: "c".into(),
                question: "none?".into(),
                answer_texts: vec![],
                answer_starts: vec![],
                is_impossible: true,
                article_index: 1,
                paragraph_index: 3,
            },
        ]
    }

    #[test]
    fn round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.examples.parquet");
        let mut md = Metadata::new();
        md.insert(meta::SOURCE_SHA256.into(), "abc".into());
        write(&path, &sample(), &md).unwrap();
        let (back, md2) = read(&path).unwrap();
        assert_eq!(back, sample());
        assert_eq!(md2[meta::SOURCE_SHA256], "abc");
        assert_eq!(md2[parquet_io::KIND], "examples");
    }

    #[test]
    fn wrong_kind_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let mut df = to_frame(&sample()).unwrap();
        let mut md = Metadata::new();
        md.insert(parquet_io::KIND.into(), "features".into());
        parquet_io::write_parquet(&path, &mut df, &md).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("f.parquet") && err.contains("features"),
            "{err}"
        );
    }

    #[test]
    fn missing_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.parquet");
        let mut df = to_frame(&sample()).unwrap().drop(col::QUESTION).unwrap();
        let mut md = Metadata::new();
        md.insert(parquet_io::KIND.into(), meta::KIND_VALUE.into());
        parquet_io::write_parquet(&path, &mut df, &md).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("g.parquet") && err.contains("`question`"),
            "{err}"
        );
    }

    #[test]
    fn not_parquet_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.parquet");
        std::fs::write(&path, b"this is not parquet").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("h.parquet"), "{err}");
    }
}
