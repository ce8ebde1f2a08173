//! `metrics.jsonl`: one JSON object per line, flushed as written, so a killed run keeps its
//! history. On resume, records after the checkpoint's step are dropped (they are redone).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    pub records: Vec<Map<String, Value>>,
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
            file,
            records: vec![],
        })
    }

    /// Reopens the log of a run resumed at `step`: keeps training records up to `step` and
    /// evaluations before it (an evaluation at `step` ran after the checkpoint was saved and
    /// will be redone). Torn last lines from a kill are dropped.
    pub fn resume(path: &Path, step: usize) -> Result<Self, squad_core::Error> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<Map<String, Value>> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Map<String, Value>>(l).ok())
            .filter(|r| {
                let s = r.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
                s < step || (s == step && !r.contains_key("eval") && !r.contains_key("done"))
            })
            .collect();
        let mut kept = String::new();
        for r in &records {
            kept.push_str(&Value::Object(r.clone()).to_string());
            kept.push('\n');
        }
        squad_core::fsutil::write_atomic_bytes(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        Ok(MetricsLog {
            path: path.into(),
            file,
            records,
        })
    }

    pub fn append(&mut self, record: Map<String, Value>) -> Result<(), squad_core::Error> {
        let line = format!("{}\n", Value::Object(record.clone()));
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| io(&self.path, e))?;
        self.records.push(record);
        Ok(())
    }
}

/// A JSON object from `(key, value)` pairs.
#[macro_export]
macro_rules! record {
    ($($k:expr => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        m
    }};
}
