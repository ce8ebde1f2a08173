//! The features file (`*.features.parquet`): one row per model window, as HF `run_qa.py`
//! builds them. Sequences are stored unpadded (`[CLS] question [SEP] context-window [SEP]`);
//! padding happens at batching time. This module is the only definition of its schema.
//!
//! Train files carry labels (`start_position`, `end_position`); eval files carry per-token
//! character offsets into the example's context (`-1` for tokens outside the context).

use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::parquet_io::{self, i32_list_column, Columns, Metadata};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub example_id: String,
    /// Row of the example in the examples file (HF's `overflow_to_sample_mapping`).
    pub example_index: u32,
    /// Which window of its example this is (0-based).
    pub window_index: u32,
    pub input_ids: Vec<i32>,
    /// 0 for `[CLS]`, question and first `[SEP]`; 1 for the context and the last `[SEP]`.
    pub token_type_ids: Vec<i32>,
    /// Train split: answer start/end token (both 0, the `[CLS]` index, when the answer is
    /// not inside this window or the question is unanswerable).
    pub labels: Option<(i32, i32)>,
    /// Eval split: `(start_char, end_char)` per token, `(-1, -1)` outside the context.
    pub offsets: Option<Vec<(i32, i32)>>,
}

impl Feature {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

pub mod col {
    pub const EXAMPLE_ID: &str = "example_id";
    pub const EXAMPLE_INDEX: &str = "example_index";
    pub const WINDOW_INDEX: &str = "window_index";
    pub const INPUT_IDS: &str = "input_ids";
    pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
    pub const START_POSITION: &str = "start_position";
    pub const END_POSITION: &str = "end_position";
    pub const OFFSET_START: &str = "offset_start";
    pub const OFFSET_END: &str = "offset_end";
}

pub mod meta {
    /// The value of `parquet_io::KIND` in a features file.
    pub const KIND_VALUE: &str = "features";
    /// `train` (labels) or `eval` (offsets).
    pub const SPLIT: &str = "split";
    pub const MAX_LENGTH: &str = "max_length";
    pub const STRIDE: &str = "stride";
    /// sha256 of the tokenizer file used (`tokenizer.json`, or `vocab.txt`).
    pub const TOKENIZER_SHA256: &str = "tokenizer_sha256";
    /// sha256 of its vocabulary (`squad_core::vocab`): what compatibility checks compare.
    pub const TOKENIZER_VOCAB_SHA256: &str = "tokenizer_vocab_sha256";
    /// sha256 of the examples Parquet file the features were made from.
    pub const EXAMPLES_SHA256: &str = "examples_sha256";
    /// `I/N` when only one shard of the examples was featurized (`example_index` still
    /// counts positions in the whole examples file).
    pub const SHARD: &str = "shard";
    /// The examples' SQuAD source checksum, carried along.
    pub const SOURCE_SHA256: &str = "source_sha256";
    pub const SKIPPED_QUESTIONS: &str = "skipped_questions";
    pub const TRUNCATED_QUESTIONS: &str = "truncated_questions";
    /// Windows whose label differs from HF's (answer starting at the last context token).
    pub const HF_EDGE_CASE_LABELS: &str = "hf_edge_case_labels";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSplit {
    Train,
    Eval,
}

impl FeatureSplit {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureSplit::Train => "train",
            FeatureSplit::Eval => "eval",
        }
    }
}

fn u32_column(name: &str, values: Vec<u32>) -> Column {
    Series::new(name.into(), values).into()
}

pub fn to_frame(features: &[Feature], split: FeatureSplit) -> Result<DataFrame> {
    let mut columns = vec![
        Series::new(
            col::EXAMPLE_ID.into(),
            features
                .iter()
                .map(|f| f.example_id.as_str())
                .collect::<Vec<_>>(),
        )
        .into(),
        u32_column(
            col::EXAMPLE_INDEX,
            features.iter().map(|f| f.example_index).collect(),
        ),
        u32_column(
            col::WINDOW_INDEX,
            features.iter().map(|f| f.window_index).collect(),
        ),
        i32_list_column(
            col::INPUT_IDS,
            features.iter().map(|f| f.input_ids.as_slice()),
        ),
        i32_list_column(
            col::TOKEN_TYPE_IDS,
            features.iter().map(|f| f.token_type_ids.as_slice()),
        ),
    ];
    columns.extend(match split {
        FeatureSplit::Train => label_columns(features)?,
        FeatureSplit::Eval => offset_columns(features)?,
    });
    DataFrame::new(features.len(), columns).map_err(|e| Error::Parquet {
        path: "<features>".into(),
        message: e.to_string(),
    })
}

fn missing(split: FeatureSplit, what: &str) -> Error {
    Error::Parquet {
        path: "<features>".into(),
        message: format!("a {} feature without {what}", split.as_str()),
    }
}

/// Train split: `start_position`, `end_position`.
fn label_columns(features: &[Feature]) -> Result<[Column; 2]> {
    let labels: Vec<(i32, i32)> = features
        .iter()
        .map(|f| {
            f.labels
                .ok_or_else(|| missing(FeatureSplit::Train, "labels"))
        })
        .collect::<Result<_>>()?;
    Ok([
        Series::new(
            col::START_POSITION.into(),
            labels.iter().map(|l| l.0).collect::<Vec<_>>(),
        )
        .into(),
        Series::new(
            col::END_POSITION.into(),
            labels.iter().map(|l| l.1).collect::<Vec<_>>(),
        )
        .into(),
    ])
}

/// Eval split: `offset_start`, `offset_end`.
fn offset_columns(features: &[Feature]) -> Result<[Column; 2]> {
    let offsets: Vec<&Vec<(i32, i32)>> = features
        .iter()
        .map(|f| {
            f.offsets
                .as_ref()
                .ok_or_else(|| missing(FeatureSplit::Eval, "offsets"))
        })
        .collect::<Result<_>>()?;
    let starts: Vec<Vec<i32>> = offsets
        .iter()
        .map(|o| o.iter().map(|x| x.0).collect())
        .collect();
    let ends: Vec<Vec<i32>> = offsets
        .iter()
        .map(|o| o.iter().map(|x| x.1).collect())
        .collect();
    Ok([
        i32_list_column(col::OFFSET_START, starts.iter().map(Vec::as_slice)),
        i32_list_column(col::OFFSET_END, ends.iter().map(Vec::as_slice)),
    ])
}

pub fn from_frame(path: &Path, df: &DataFrame, split: FeatureSplit) -> Result<Vec<Feature>> {
    let c = Columns::new(path, df);
    let ids = c.strings(col::EXAMPLE_ID)?;
    let example_index = c.u32s(col::EXAMPLE_INDEX)?;
    let window_index = c.u32s(col::WINDOW_INDEX)?;
    let input_ids = c.i32_lists(col::INPUT_IDS)?;
    let token_type_ids = c.i32_lists(col::TOKEN_TYPE_IDS)?;
    let mut labels: Vec<Option<(i32, i32)>> = vec![None; ids.len()];
    let mut offsets: Vec<Option<Vec<(i32, i32)>>> = vec![None; ids.len()];
    match split {
        FeatureSplit::Train => {
            let s = c.i32s(col::START_POSITION)?;
            let e = c.i32s(col::END_POSITION)?;
            labels = s.into_iter().zip(e).map(Some).collect();
        }
        FeatureSplit::Eval => {
            let s = c.i32_lists(col::OFFSET_START)?;
            let e = c.i32_lists(col::OFFSET_END)?;
            offsets = s
                .into_iter()
                .zip(e)
                .map(|(s, e)| Some(s.into_iter().zip(e).collect()))
                .collect();
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for (row, (((((id, ex), win), ids_), types), (lab, off))) in ids
        .into_iter()
        .zip(example_index)
        .zip(window_index)
        .zip(input_ids)
        .zip(token_type_ids)
        .zip(labels.into_iter().zip(offsets))
        .enumerate()
    {
        let consistent =
            types.len() == ids_.len() && off.as_ref().is_none_or(|o| o.len() == ids_.len());
        if !consistent {
            return Err(Error::schema(
                path,
                format!("row {row}: list columns of different lengths"),
            ));
        }
        out.push(Feature {
            example_id: id,
            example_index: ex,
            window_index: win,
            input_ids: ids_,
            token_type_ids: types,
            labels: lab,
            offsets: off,
        });
    }
    Ok(out)
}

pub fn write(
    path: &Path,
    features: &[Feature],
    split: FeatureSplit,
    metadata: &Metadata,
) -> Result<()> {
    let mut df = to_frame(features, split)?;
    let mut metadata = metadata.clone();
    metadata.insert(parquet_io::KIND.into(), meta::KIND_VALUE.into());
    metadata.insert(meta::SPLIT.into(), split.as_str().into());
    parquet_io::write_parquet(path, &mut df, &metadata)
}

/// Reads a features file; its split comes from the metadata.
pub fn read(path: &Path) -> Result<(Vec<Feature>, FeatureSplit, Metadata)> {
    let (df, metadata) = parquet_io::read_parquet(path)?;
    parquet_io::expect_kind(path, &metadata, meta::KIND_VALUE, "qa-features")?;
    let split = match metadata.get(meta::SPLIT).map(String::as_str) {
        Some("train") => FeatureSplit::Train,
        Some("eval") => FeatureSplit::Eval,
        other => {
            return Err(Error::schema(
                path,
                format!("unknown features split {other:?}"),
            ))
        }
    };
    Ok((from_frame(path, &df, split)?, split, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(labels: Option<(i32, i32)>, offsets: Option<Vec<(i32, i32)>>) -> Feature {
        Feature {
            example_id: "q1".into(),
            example_index: 3,
            window_index: 1,
            input_ids: vec![101, 7, 102, 8, 102],
            token_type_ids: vec![0, 0, 0, 1, 1],
            labels,
            offsets,
        }
    }

    #[test]
    fn train_and_eval_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for (split, f) in [
            (FeatureSplit::Train, feature(Some((3, 3)), None)),
            (
                FeatureSplit::Eval,
                feature(
                    None,
                    Some(vec![(-1, -1), (-1, -1), (-1, -1), (0, 4), (-1, -1)]),
                ),
            ),
        ] {
            let path = dir.path().join(format!("{}.parquet", split.as_str()));
            let mut md = Metadata::new();
            md.insert(meta::STRIDE.into(), "128".into());
            write(&path, &[f.clone(), f.clone()], split, &md).unwrap();
            let (back, back_split, md) = read(&path).unwrap();
            assert_eq!(back, vec![f.clone(), f]);
            assert_eq!(back_split, split);
            assert_eq!(md[meta::STRIDE], "128");
        }
    }

    #[test]
    fn an_examples_file_is_not_a_features_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ex.parquet");
        crate::examples::write(&path, &[], &Metadata::new()).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("ex.parquet") && err.contains("examples"),
            "{err}"
        );
    }
}
