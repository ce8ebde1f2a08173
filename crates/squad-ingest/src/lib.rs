//! `squad-ingest`: SQuAD JSON (v1.1 or v2.0, plain or gzip) → one examples Parquet row per
//! question, plus a stats JSON beside it.
//!
//! Validation policy: by default any invalid question is an error that names the file, the
//! article, the paragraph and the question id (and how many more are invalid); with
//! `lenient` invalid questions are dropped, counted, and the count recorded in the output
//! metadata and stats. Selection (`articles`, `limit`, `shard`) happens before validation,
//! so only the questions asked for are checked.

pub mod select;
pub mod squad_json;
pub mod stats;
pub mod validate;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use squad_core::examples::{self, meta};
use squad_core::fsutil::{read_maybe_gzip, sha256_hex, sibling_path, write_atomic_bytes};
use squad_core::parquet_io::Metadata;
use squad_core::Example;

pub use select::{Selection, Shard};
pub use stats::Stats;
use validate::{check_question, CharIndex, Invalid, Problem};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Core(#[from] squad_core::Error),
    #[error("{}: not valid SQuAD JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {first}{}", path.display(), more_invalid(*others))]
    Invalid {
        path: PathBuf,
        first: Box<Invalid>,
        others: usize,
    },
    #[error("{}: no questions selected (check --limit/--shard/--articles)", path.display())]
    Empty { path: PathBuf },
}

fn more_invalid(others: usize) -> String {
    match others {
        0 => "; rerun with --lenient to drop invalid questions".into(),
        n => format!(" (and {n} more invalid questions); rerun with --lenient to drop them"),
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct IngestOptions {
    pub selection: Selection,
    pub lenient: bool,
}

/// The result of reading one SQuAD file.
#[derive(Debug)]
pub struct Ingested {
    pub examples: Vec<Example>,
    /// "1.1" or "2.0".
    pub squad_version: &'static str,
    /// File name of the source, after resolving symlinks (so a mirror's name shows).
    pub source_file: String,
    /// sha256 of the decompressed JSON, comparable with published checksums.
    pub source_sha256: String,
    /// Questions dropped as invalid (lenient mode only).
    pub dropped: Vec<Invalid>,
}

pub fn read_squad(path: &Path, options: &IngestOptions) -> Result<Ingested, IngestError> {
    let bytes = read_maybe_gzip(path)?;
    let source_sha256 = sha256_hex(&bytes);
    let file: squad_json::SquadFile =
        serde_json::from_slice(&bytes).map_err(|source| IngestError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    drop(bytes);
    let squad_version = file.squad_version();
    let (examples, mut invalid) = select_examples(file, &options.selection);
    if !options.lenient && !invalid.is_empty() {
        let others = invalid.len() - 1;
        return Err(IngestError::Invalid {
            path: path.to_path_buf(),
            first: Box::new(invalid.swap_remove(0)),
            others,
        });
    }
    if examples.is_empty() {
        return Err(IngestError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Ingested {
        examples,
        squad_version,
        source_file: source_name(path),
        source_sha256,
        dropped: invalid,
    })
}

/// The questions `selection` keeps, in file order, split into valid examples and invalid
/// questions (a malformed answer, or an id seen before).
fn select_examples(
    file: squad_json::SquadFile,
    selection: &Selection,
) -> (Vec<Example>, Vec<Invalid>) {
    let mut examples = Vec::new();
    let mut invalid = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut position = 0usize;
    'articles: for (a, article) in file.data.into_iter().enumerate() {
        if !selection.keeps_article(a) {
            continue;
        }
        for (p, paragraph) in article.paragraphs.into_iter().enumerate() {
            let context = CharIndex::new(&paragraph.context);
            for qa in paragraph.qas {
                if selection.exhausted(position) {
                    break 'articles;
                }
                let keep = selection.keeps_position(position);
                position += 1;
                if !keep {
                    continue;
                }
                let problem = check_question(&context, &qa)
                    .or_else(|| (!seen_ids.insert(qa.id.clone())).then_some(Problem::DuplicateId));
                if let Some(problem) = problem {
                    invalid.push(Invalid {
                        article: a,
                        title: article.title.clone(),
                        paragraph: p,
                        id: qa.id,
                        problem,
                    });
                    continue;
                }
                examples.push(Example {
                    id: qa.id,
                    title: article.title.clone(),
                    context: paragraph.context.clone(),
                    question: qa.question,
                    answer_starts: qa.answers.iter().map(|x| x.answer_start as i32).collect(),
                    answer_texts: qa.answers.into_iter().map(|x| x.text).collect(),
                    is_impossible: qa.is_impossible.unwrap_or(false),
                    article_index: a as u32,
                    paragraph_index: p as u32,
                });
            }
        }
    }
    (examples, invalid)
}

fn source_name(path: &Path) -> String {
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Writes the examples Parquet (with provenance metadata) and its stats JSON; returns the
/// stats. Both files are written atomically; the Parquet file last, so that its presence
/// means the stage finished.
pub fn write_outputs(
    output: &Path,
    ingested: &Ingested,
    selection: &Selection,
) -> Result<Stats, IngestError> {
    let mut metadata = Metadata::new();
    metadata.insert(meta::SOURCE_FILE.into(), ingested.source_file.clone());
    metadata.insert(meta::SOURCE_SHA256.into(), ingested.source_sha256.clone());
    metadata.insert(meta::SQUAD_VERSION.into(), ingested.squad_version.into());
    metadata.insert(
        meta::SELECTION.into(),
        serde_json::to_string(selection).expect("selection serialises"),
    );
    metadata.insert(meta::DROPPED.into(), ingested.dropped.len().to_string());

    let stats = Stats::of(&ingested.examples);
    let report = serde_json::json!({
        "source_file": ingested.source_file,
        "source_sha256": ingested.source_sha256,
        "squad_version": ingested.squad_version,
        "selection": selection,
        "dropped_invalid": ingested.dropped.len(),
        "stats": stats,
    });
    let json = serde_json::to_string_pretty(&report).expect("stats serialise");
    write_atomic_bytes(&sibling_path(output, "stats.json"), json.as_bytes())?;
    examples::write(output, &ingested.examples, &metadata)?;
    Ok(stats)
}
