//! `metrics.jsonl`: one JSON object per line, flushed as written, so a killed run keeps its
//! history. On resume, records after the checkpoint's step are dropped (they are redone).
//!
//! Each record's fields are declared in alphabetical order: that is the key order the log has
//! always had (it was written from `serde_json::Map`s, which sort their keys), so logs written
//! before and after the typed records are the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A logging step: the window's mean loss and the step's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Fractional epoch at the end of the step.
    pub epoch: f64,
    /// Over the logging window.
    pub features_per_second: f64,
    /// Before clipping.
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// Mean step loss over the logging window.
    pub loss: f64,
    pub step: usize,
    pub train_seconds: f64,
}

/// An evaluation at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Epochs completed (a whole number).
    pub epoch: f64,
    /// qa-eval's metrics, as in its `metrics.json`.
    pub eval: serde_json::Map<String, serde_json::Value>,
    pub eval_features_per_second: f64,
    pub step: usize,
}

/// The last record of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneRecord {
    /// Always true; marks the record.
    pub done: bool,
    pub step: usize,
    pub train_features_per_second: f64,
    pub train_loss: f64,
    pub train_seconds: f64,
}

/// One line of `metrics.jsonl` (written and read back without a tag: the fields tell them
/// apart, `loss`, `eval` and `done` each belong to one kind only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricsRecord {
    Step(StepRecord),
    Eval(EvalRecord),
    Done(DoneRecord),
}

impl MetricsRecord {
    /// The optimizer step the record was written at.
    pub fn step(&self) -> usize {
        match self {
            MetricsRecord::Step(r) => r.step,
            MetricsRecord::Eval(r) => r.step,
            MetricsRecord::Done(r) => r.step,
        }
    }

    /// The record as one line of the log, newline included.
    fn line(&self) -> String {
        format!("{}\n", serde_json::to_string(self).expect("json"))
    }
}

impl From<StepRecord> for MetricsRecord {
    fn from(r: StepRecord) -> Self {
        MetricsRecord::Step(r)
    }
}

impl From<EvalRecord> for MetricsRecord {
    fn from(r: EvalRecord) -> Self {
        MetricsRecord::Eval(r)
    }
}

impl From<DoneRecord> for MetricsRecord {
    fn from(r: DoneRecord) -> Self {
        MetricsRecord::Done(r)
    }
}

pub struct MetricsLog {
    path: PathBuf,
    /// None: records kept in memory only (a rank other than 0 writes nothing).
    file: Option<std::fs::File>,
    pub records: Vec<MetricsRecord>,
}

/// Every IO on the log is a write (its reads go through `read_to_string` + `unwrap_or_default`).
fn io(path: &Path, e: std::io::Error) -> squad_core::Error {
    squad_core::Error::write(path, e)
}

impl MetricsLog {
    /// A new, empty log.
    pub fn create(path: &Path) -> Result<Self, squad_core::Error> {
        let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
        Ok(MetricsLog {
            path: path.into(),
            file: Some(file),
            records: vec![],
        })
    }

    /// A log that writes no file.
    pub fn in_memory() -> Self {
        MetricsLog {
            path: PathBuf::new(),
            file: None,
            records: vec![],
        }
    }

    /// Reopens the log of a run resumed at `step`: keeps training records up to `step` and
    /// evaluations before it (an evaluation at `step` ran after the checkpoint was saved and
    /// will be redone). Lines that are not records, such as a torn last line from a kill, are
    /// dropped.
    pub fn resume(path: &Path, step: usize) -> Result<Self, squad_core::Error> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<MetricsRecord> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<MetricsRecord>(l).ok())
            .filter(|r| {
                r.step() < step || (r.step() == step && matches!(r, MetricsRecord::Step(_)))
            })
            .collect();
        let kept: String = records.iter().map(MetricsRecord::line).collect();
        squad_core::fsutil::write_atomic_bytes(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        Ok(MetricsLog {
            path: path.into(),
            file: Some(file),
            records,
        })
    }

    pub fn append(&mut self, record: impl Into<MetricsRecord>) -> Result<(), squad_core::Error> {
        let record = record.into();
        if let Some(file) = self.file.as_mut() {
            file.write_all(record.line().as_bytes())
                .and_then(|_| file.flush())
                .map_err(|e| io(&self.path, e))?;
        }
        self.records.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of a run's log written before the typed records (from `serde_json::Map`s).
    const EARLIER_LOG: &str = concat!(
        r#"{"epoch":0.2222222222222222,"features_per_second":24.723742770174972,"grad_norm":2.8111322907229552,"learning_rate":0.0009444444444444444,"loss":5.982015609741211,"step":2,"train_seconds":0.123430437}"#,
        "\n",
        r#"{"epoch":1.0,"features_per_second":60.531179868007534,"grad_norm":3.3882345658513553,"learning_rate":0.0005555555555555556,"loss":4.688137054443359,"step":9,"train_seconds":0.49700207099999993}"#,
        "\n",
        r#"{"epoch":1.0,"eval":{"exact_match":8.333333333333334,"f1":9.25925925925926},"eval_features_per_second":72.79202704398506,"step":9}"#,
        "\n",
        r#"{"done":true,"step":18,"train_features_per_second":40.08051703813538,"train_loss":5.236178424623278,"train_seconds":0.898192006}"#,
        "\n",
    );

    fn parse(line: &str) -> MetricsRecord {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn records_read_back_as_their_kind_and_write_the_same_bytes() {
        let records: Vec<MetricsRecord> = EARLIER_LOG.lines().map(parse).collect();
        assert!(matches!(
            records[0],
            MetricsRecord::Step(StepRecord { step: 2, .. })
        ));
        assert!(matches!(&records[2], MetricsRecord::Eval(r) if r.eval["f1"] == 9.25925925925926));
        assert!(matches!(
            records[3],
            MetricsRecord::Done(DoneRecord { done: true, .. })
        ));
        let written: String = records.iter().map(MetricsRecord::line).collect();
        assert_eq!(written, EARLIER_LOG);
    }

    #[test]
    fn resume_keeps_steps_up_to_the_checkpoint_and_drops_torn_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        let torn = r#"{"epoch":2.5,"features_per_second":12"#;
        std::fs::write(&path, format!("{EARLIER_LOG}not json\n{torn}")).unwrap();
        let mut log = MetricsLog::resume(&path, 9).unwrap();
        // The steps up to 9 stay; the evaluation at step 9 came after its checkpoint and the
        // end after that: both are redone.
        let kept: Vec<&str> = EARLIER_LOG.lines().take(2).collect();
        assert_eq!(
            log.records,
            kept.iter().map(|l| parse(l)).collect::<Vec<_>>()
        );
        let kept = format!("{}\n{}\n", kept[0], kept[1]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
        let done = parse(EARLIER_LOG.lines().nth(3).unwrap());
        log.append(done.clone()).unwrap();
        assert_eq!(log.records.len(), 3);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{kept}{}", done.line())
        );
    }
}
