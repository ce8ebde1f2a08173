//! Feature-by-feature comparison with the HF oracle's Parquet (`ref_features.py`: padded
//! sequences, `start_positions`/`end_positions` or `offset_start`/`offset_end`,
//! `overflow_to_sample_mapping`). Used by the parity tests and `qa-features compare`.

use std::path::Path;

use serde::Serialize;
use squad_core::features::FeatureSplit;
use squad_core::parquet_io::{read_parquet, Columns};
use squad_core::Feature;

/// A (start, end) token label.
pub type StartEnd = (i32, i32);

/// Two columns read side by side: (start, end).
type Pair<T> = (Vec<T>, Vec<T>);

#[derive(Debug, Default, Serialize)]
pub struct ParityReport {
    pub features: usize,
    /// Differences other than the documented edge case (first 20).
    pub mismatches: Vec<String>,
    pub mismatch_count: usize,
    /// Train features where HF's start label is max_length - 1 (> end) and ours is the
    /// real answer start: (example id, window, HF start/end, our start/end).
    pub hf_edge_cases: Vec<(String, u32, StartEnd, StartEnd)>,
}

impl ParityReport {
    pub fn is_exact(&self) -> bool {
        self.mismatch_count == 0
    }

    fn mismatch(&mut self, what: String) {
        self.mismatch_count += 1;
        if self.mismatches.len() < 20 {
            self.mismatches.push(what);
        }
    }
}

/// The oracle file's columns, padded rows as written.
struct OracleRows {
    ids: Vec<String>,
    mapping: Vec<i32>,
    input_ids: Vec<Vec<i32>>,
    types: Vec<Vec<i32>>,
    mask: Vec<Vec<i32>>,
    /// Train: `start_positions`, `end_positions`.
    labels: Option<Pair<i32>>,
    /// Eval: `offset_start`, `offset_end`.
    offsets: Option<Pair<Vec<i32>>>,
}

/// Compares `ours` with the oracle file at `reference`.
pub fn compare(
    ours: &[Feature],
    split: FeatureSplit,
    reference: &Path,
) -> squad_core::Result<ParityReport> {
    let (df, _) = read_parquet(reference)?;
    let c = Columns::new(reference, &df);
    let mut oracle = OracleRows {
        ids: c.strings("example_id")?,
        mapping: c.i32s("overflow_to_sample_mapping")?,
        input_ids: c.i32_lists("input_ids")?,
        types: c.i32_lists("token_type_ids")?,
        mask: c.i32_lists("attention_mask")?,
        labels: None,
        offsets: None,
    };
    let mut report = ParityReport {
        features: ours.len(),
        ..Default::default()
    };
    if oracle.ids.len() != ours.len() {
        report.mismatch(format!(
            "{} features here, {} in the reference",
            ours.len(),
            oracle.ids.len()
        ));
        return Ok(report);
    }
    match split {
        FeatureSplit::Train => {
            oracle.labels = Some((c.i32s("start_positions")?, c.i32s("end_positions")?));
        }
        FeatureSplit::Eval => {
            oracle.offsets = Some((c.i32_lists("offset_start")?, c.i32_lists("offset_end")?));
        }
    }
    for (i, f) in ours.iter().enumerate() {
        compare_feature(&mut report, &oracle, i, f);
    }
    Ok(report)
}

/// Records how feature `i` differs from the oracle's row `i`.
fn compare_feature(report: &mut ParityReport, oracle: &OracleRows, i: usize, f: &Feature) {
    let at = format!("feature {i} ({} window {})", f.example_id, f.window_index);
    let mask = &oracle.mask[i];
    let n = mask.iter().filter(|&&m| m == 1).count();
    if f.example_id != oracle.ids[i] || f.example_index as i32 != oracle.mapping[i] {
        report.mismatch(format!(
            "{at}: example {} #{} in the reference",
            oracle.ids[i], oracle.mapping[i]
        ));
        return;
    }
    if f.len() != n || mask[..n].iter().any(|&m| m != 1) {
        report.mismatch(format!("{at}: {} tokens, reference {n}", f.len()));
        return;
    }
    if f.input_ids[..] != oracle.input_ids[i][..n] {
        report.mismatch(format!("{at}: input_ids differ"));
    }
    if f.token_type_ids[..] != oracle.types[i][..n] {
        report.mismatch(format!("{at}: token_type_ids differ"));
    }
    if let (Some((starts, ends)), Some(ours)) = (&oracle.labels, f.labels) {
        let theirs = (starts[i], ends[i]);
        let max_length = oracle.input_ids[i].len() as i32;
        if ours != theirs {
            let edge = theirs.0 == max_length - 1 && theirs.0 > theirs.1 && ours.1 == theirs.1;
            if edge {
                report
                    .hf_edge_cases
                    .push((f.example_id.clone(), f.window_index, theirs, ours));
            } else {
                report.mismatch(format!("{at}: labels {ours:?}, reference {theirs:?}"));
            }
        }
    }
    if let (Some((s, e)), Some(ours)) = (&oracle.offsets, &f.offsets) {
        let same = ours
            .iter()
            .zip(s[i].iter().zip(&e[i]))
            .all(|(o, (&s, &e))| *o == (s, e));
        if !same {
            report.mismatch(format!("{at}: offsets differ"));
        }
    }
}

/// The first `n` features of an oracle file as our (unpadded) features: ids and token types
/// cut to the attention mask, labels when the file has them. Example ids are the oracle's and
/// `example_index` is its `overflow_to_sample_mapping`; offsets are not read.
pub fn read_reference(reference: &Path, n: usize) -> squad_core::Result<Vec<Feature>> {
    let (df, _) = read_parquet(reference)?;
    let c = Columns::new(reference, &df);
    let (ids, types, mask) = (
        c.i32_lists("input_ids")?,
        c.i32_lists("token_type_ids")?,
        c.i32_lists("attention_mask")?,
    );
    let (example_ids, mapping) = (
        c.strings("example_id")?,
        c.i32s("overflow_to_sample_mapping")?,
    );
    let labels = c
        .i32s("start_positions")
        .ok()
        .zip(c.i32s("end_positions").ok());
    Ok((0..n.min(ids.len()))
        .map(|i| {
            let len = mask[i].iter().filter(|&&m| m == 1).count();
            Feature {
                example_id: example_ids[i].clone(),
                example_index: mapping[i] as u32,
                window_index: 0,
                input_ids: ids[i][..len].to_vec(),
                token_type_ids: types[i][..len].to_vec(),
                labels: labels.as_ref().map(|(s, e)| (s[i], e[i])),
                offsets: None,
            }
        })
        .collect())
}
