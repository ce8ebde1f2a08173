//! What the Makefile needs from a pipeline YAML, computed from the parsed file: one stamp
//! per config section and the values make resolves paths and the device from.
//!
//! A stamp is the sha256 of what the file says for that section, normalised: the YAML is
//! parsed, so comments, blank lines, quoting, block or flow style, number spelling
//! (`2.0e-5` = `0.00002`) and the order of keys within a mapping do not count; the order of
//! list items does. It is not a hash of the resolved config: when `PipelineConfig` gains a
//! key with a default, no existing stamp changes (or every existing run would rerun), and
//! stating a default explicitly counts as an edit. A section the file leaves out hashes
//! like `section:` with nothing under it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_yaml::Value;

use crate::config::{PipelineConfig, SECTIONS};
use crate::error::{Error, Result};
use crate::fsutil::{sha256_hex, write_atomic};

/// The file (in the stamp directory) that holds the make variables.
pub const MAKE_VARIABLES_FILE: &str = "config.mk";

/// `(section, sha256)` for each section in [`SECTIONS`], in that order.
pub fn section_hashes(path: &Path, text: &str) -> Result<Vec<(&'static str, String)>> {
    let top = match serde_yaml::from_str::<Value>(text).map_err(|e| config_error(path, e))? {
        Value::Mapping(m) => m,
        Value::Null => serde_yaml::Mapping::new(),
        _ => return Err(config_error(path, "expected a mapping of config sections")),
    };
    Ok(SECTIONS
        .iter()
        .map(|&section| {
            let value = top.get(section).unwrap_or(&Value::Null);
            (section, sha256_hex(canonical_text(value).as_bytes()))
        })
        .collect())
}

/// One unambiguous text for a YAML value: strings JSON-quoted, numbers as serde_yaml prints
/// them, mapping entries sorted by their key's text.
pub fn canonical_text(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write!(out, "{n}").expect("writing to a String"),
        Value::String(s) => out.push_str(&serde_json::to_string(s).expect("a string serialises")),
        Value::Sequence(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Mapping(map) => {
            let mut entries: Vec<(String, String)> = map
                .iter()
                .map(|(k, v)| (canonical_text(k), canonical_text(v)))
                .collect();
            entries.sort();
            let joined: Vec<String> = entries.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            write!(out, "{{{}}}", joined.join(",")).expect("writing to a String");
        }
        Value::Tagged(tagged) => {
            write!(out, "{} ", tagged.tag).expect("writing to a String");
            write_canonical(&tagged.value, out);
        }
    }
}

/// The make variables of a resolved config, as `config.mk` holds them: the data files, the
/// base model, the tokenizer (the model's own unless `model.tokenizer` names one) and the
/// device. Values make cannot carry (whitespace, a trailing backslash) are errors.
pub fn make_variables(path: &Path, config: &PipelineConfig) -> Result<String> {
    let model = &config.model;
    let tokenizer = model.tokenizer.as_deref().unwrap_or(&model.name_or_path);
    let train_file = config.data.train_file.to_string_lossy();
    let dev_file = config.data.dev_file.to_string_lossy();
    let values = [
        ("PIPELINE_TRAIN_FILE", "data.train_file", &*train_file),
        ("PIPELINE_DEV_FILE", "data.dev_file", &*dev_file),
        (
            "PIPELINE_BASE_MODEL",
            "model.name_or_path",
            model.name_or_path.as_str(),
        ),
        ("PIPELINE_TOKENIZER", "model.tokenizer", tokenizer),
        ("PIPELINE_DEVICE", "device", config.device.as_str()),
    ];
    let mut out = String::from("# Written by pipeline-stamp from the pipeline YAML.\n");
    for (variable, key, value) in values {
        if value.chars().any(char::is_whitespace) || value.ends_with('\\') {
            let message =
                format!("{key}: make cannot take {value:?} (whitespace or a trailing \\)");
            return Err(config_error(path, message));
        }
        let escaped = value.replace('$', "$$").replace('#', "\\#");
        writeln!(out, "{variable} := {escaped}").expect("writing to a String");
    }
    Ok(out)
}

/// Brings the stamp directory up to date with the pipeline YAML at `config_path`:
/// `SECTION.sha256` for each section and `config.mk`, each rewritten (atomically) only when
/// its content changes, so a stamp's mtime moves only when its section does. Returns the
/// files it rewrote.
pub fn update_stamps(config_path: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(config_path).map_err(|e| Error::io(config_path, e))?;
    let config = PipelineConfig::from_yaml_str(config_path, &text)?;
    let mut written = Vec::new();
    for (section, hash) in section_hashes(config_path, &text)? {
        let stamp = dir.join(format!("{section}.sha256"));
        if write_section_stamp(&stamp, &hash, &legacy_section_hash(&text, section))? {
            written.push(stamp);
        }
    }
    let variables = dir.join(MAKE_VARIABLES_FILE);
    if write_if_changed(&variables, &make_variables(config_path, &config)?, None)? {
        written.push(variables);
    }
    Ok(written)
}

/// Writes `hash` to `stamp` unless it holds it already. A stamp written by the old awk
/// script (scripts/config_stamp.sh) for the same section text gets the new hash but keeps
/// its mtime: the section did not change, so a run made before the switch does not rerun.
fn write_section_stamp(stamp: &Path, hash: &str, legacy_hash: &str) -> Result<bool> {
    let keep_mtime = match std::fs::read_to_string(stamp) {
        Ok(old) if old.trim_end() == legacy_hash => Some(modified(stamp)?),
        _ => None,
    };
    write_if_changed(stamp, &format!("{hash}\n"), keep_mtime)
}

fn modified(path: &Path) -> Result<SystemTime> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    meta.modified().map_err(|e| Error::io(path, e))
}

/// Atomically writes `contents` unless the file holds exactly that; with `mtime`, the new
/// file gets that modification time. Returns whether it wrote.
fn write_if_changed(path: &Path, contents: &str, mtime: Option<SystemTime>) -> Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    write_atomic(path, |file| {
        std::io::Write::write_all(file, contents.as_bytes())?;
        mtime.map_or(Ok(()), |t| file.set_modified(t))
    })?;
    Ok(true)
}

/// The hash scripts/config_stamp.sh gave a section: the sha256 of the section's lines (its
/// top-level line to the next one) with comments, trailing blanks and empty lines dropped.
/// Kept only to carry old stamps over (see [`write_section_stamp`]).
fn legacy_section_hash(text: &str, section: &str) -> String {
    let header = format!("{section}:");
    let mut kept = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = strip_awk_comment(line).trim_end_matches(is_awk_space);
        if line.starts_with(|c: char| !is_awk_space(c)) {
            inside = line.starts_with(&header);
        }
        if inside && !line.is_empty() {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    sha256_hex(kept.as_bytes())
}

/// awk's `sub(/[[:space:]]+#.*$/, ""); sub(/^#.*$/, "")`: a line starting with `#` is
/// empty; otherwise it ends before the first run of blanks followed by `#`.
fn strip_awk_comment(line: &str) -> &str {
    if line.starts_with('#') {
        return "";
    }
    let mut hashes = line.match_indices('#').map(|(i, _)| i);
    match hashes.find(|&i| line[..i].ends_with(is_awk_space)) {
        Some(i) => line[..i].trim_end_matches(is_awk_space),
        None => line,
    }
}

/// `[[:space:]]` in awk's C locale.
fn is_awk_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn config_error(path: &Path, message: impl ToString) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pipelines/squad-v1-seed.yaml as it was when the stamps moved to Rust.
    const SEED: &str = "name: squad-v1-seed
data:
  train_file: data/squad/train-v1.1.json.gz
  dev_file: data/squad/dev-v1.1.json.gz
  train_limit: 1000
  dev_limit: 100
model:
  name_or_path: data/models/all-MiniLM-L6-v2
features:
  max_length: 384
  stride: 128
train:
  learning_rate: 2.0e-5
  batch_size: 8
  epochs: 1
  weight_decay: 0.01
  seed: 42
eval:
  n_best_size: 20
  max_answer_length: 30
";

    fn hashes(text: &str) -> Vec<(&'static str, String)> {
        section_hashes(Path::new("p.yaml"), text).unwrap()
    }

    fn hash_of(text: &str, section: &str) -> String {
        let all = hashes(text);
        all.into_iter().find(|(s, _)| *s == section).unwrap().1
    }

    #[test]
    fn canonical_text_sorts_keys_and_quotes_strings() {
        let value: Value =
            serde_yaml::from_str("b: [1, 2.0e-5, 'x']\na: {z: null, y: true}\n").unwrap();
        assert_eq!(
            canonical_text(&value),
            r#"{"a":{"y":true,"z":null},"b":[1,0.00002,"x"]}"#
        );
    }

    /// Pinned: a stamp must not change when the code does (e.g. when `PipelineConfig` gains a
    /// key with a default), or every existing run would rerun. These are the seed
    /// pipeline's stamps; only the YAML's own content goes into them.
    #[test]
    fn seed_pipeline_stamps_are_pinned() {
        let expected = [
            (
                "data",
                "6ca9e5050199f08a051f3f4a889dd0a20bf5179e4930e3af38c58ff802db456f",
            ),
            (
                "model",
                "55e1052a0408ef366f9dbba772c8c9eccb259faac6be26b6d97867e378c1cdfb",
            ),
            (
                "features",
                "36e7090b93ee5361736235e2aaca8154e183d1087d18724f678a56d6c139b8f0",
            ),
            (
                "train",
                "5e9f1f0e93a981c9e77d0168b2fbaafb3f9c313db5f60d0d5f84880a534cb51e",
            ),
            (
                "eval",
                "be82d0830bd662d4dc76295254b54c9fd6d3a7d0776b3485753afe833b78628f",
            ),
        ];
        let got = hashes(SEED);
        let got: Vec<(&str, &str)> = got.iter().map(|(s, h)| (*s, h.as_str())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn stamps_hash_the_file_not_the_resolved_defaults() {
        // The file states a default explicitly: the resolved config is the same, the stamp
        // is not (a new key with a default leaves the file, and so the stamp, alone).
        let with_default = SEED.replace("  seed: 42\n", "  seed: 42\n  dropout: true\n");
        let a = PipelineConfig::from_yaml_str(Path::new("a"), SEED).unwrap();
        let b = PipelineConfig::from_yaml_str(Path::new("b"), &with_default).unwrap();
        assert_eq!(a, b);
        assert_ne!(hash_of(SEED, "train"), hash_of(&with_default, "train"));
        assert_eq!(hash_of(SEED, "eval"), hash_of(&with_default, "eval"));
        // A section the file leaves out hashes the same whatever its defaults are.
        assert_eq!(hash_of("name: x\n", "eval"), hash_of("eval:\n", "eval"));
    }

    #[test]
    fn formatting_comments_quoting_and_key_order_do_not_count() {
        let block = "train:\n  learning_rate: 2.0e-5\n  seed: 42\n  data_order: a.json\n";
        let other = "# a comment\ntrain: {seed: 42,   data_order: \"a.json\",\n\n  learning_rate: 0.00002}  # lr\n";
        assert_eq!(hash_of(block, "train"), hash_of(other, "train"));
        let edited = block.replace("42", "43");
        assert_ne!(hash_of(block, "train"), hash_of(&edited, "train"));
        // A quoted number is a string, a different value.
        assert_ne!(
            hash_of("eval:\n  n_best_size: 20\n", "eval"),
            hash_of("eval:\n  n_best_size: '20'\n", "eval")
        );
    }

    #[test]
    fn an_edit_changes_only_its_own_section() {
        let edited = SEED.replace("n_best_size: 20", "n_best_size: 10");
        for ((section, a), (_, b)) in hashes(SEED).iter().zip(hashes(&edited).iter()) {
            assert_eq!(a != b, *section == "eval", "{section}");
        }
    }

    #[test]
    fn not_a_mapping_is_an_error_naming_the_file() {
        let err = section_hashes(Path::new("bad.yaml"), "- a\n- b\n").unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml: "), "{err}");
        assert!(section_hashes(Path::new("bad.yaml"), "data: [").is_err());
    }

    #[test]
    fn make_variables_resolve_defaults_as_the_stages_do() {
        let config = PipelineConfig::from_yaml_str(Path::new("p"), "name: x\n").unwrap();
        let text = make_variables(Path::new("p"), &config).unwrap();
        let expected = "PIPELINE_TRAIN_FILE := data/squad/train-v1.1.json.gz\n\
             PIPELINE_DEV_FILE := data/squad/dev-v1.1.json.gz\n\
             PIPELINE_BASE_MODEL := data/models/all-MiniLM-L6-v2\n\
             PIPELINE_TOKENIZER := data/models/all-MiniLM-L6-v2\n\
             PIPELINE_DEVICE := cpu\n";
        assert_eq!(text.split_once('\n').unwrap().1, expected);
    }

    #[test]
    fn make_variables_escape_or_refuse_what_make_cannot_read() {
        let yaml = "model:\n  name_or_path: m$1#x\n  tokenizer: tok\ndevice: cuda:1\n";
        let config = PipelineConfig::from_yaml_str(Path::new("p"), yaml).unwrap();
        let text = make_variables(Path::new("p"), &config).unwrap();
        assert!(text.contains("PIPELINE_BASE_MODEL := m$$1\\#x\n"), "{text}");
        assert!(text.contains("PIPELINE_TOKENIZER := tok\n"), "{text}");
        assert!(text.contains("PIPELINE_DEVICE := cuda:1\n"), "{text}");
        let spaced = "data:\n  train_file: my data.json\n";
        let config = PipelineConfig::from_yaml_str(Path::new("p"), spaced).unwrap();
        let err = make_variables(Path::new("sp.yaml"), &config).unwrap_err();
        assert!(err.to_string().contains("data.train_file"), "{err}");
    }

    fn mtime(path: &Path) -> SystemTime {
        modified(path).unwrap()
    }

    #[test]
    fn stamps_are_rewritten_only_when_their_section_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (yaml, stamps) = (dir.path().join("p.yaml"), dir.path().join("stamps"));
        std::fs::write(&yaml, SEED).unwrap();
        assert_eq!(
            update_stamps(&yaml, &stamps).unwrap().len(),
            SECTIONS.len() + 1
        );
        assert!(update_stamps(&yaml, &stamps).unwrap().is_empty());
        std::fs::write(&yaml, format!("# new comment\n{SEED}")).unwrap();
        assert!(update_stamps(&yaml, &stamps).unwrap().is_empty());
        std::fs::write(&yaml, SEED.replace("n_best_size: 20", "n_best_size: 5")).unwrap();
        assert_eq!(
            update_stamps(&yaml, &stamps).unwrap(),
            vec![stamps.join("eval.sha256")]
        );
        let eval = std::fs::read_to_string(stamps.join("eval.sha256")).unwrap();
        assert_eq!(
            eval,
            format!("{}\n", hash_of(&SEED.replace("20", "5"), "eval"))
        );
    }

    #[test]
    fn data_file_edit_rewrites_config_mk() {
        let dir = tempfile::tempdir().unwrap();
        let (yaml, stamps) = (dir.path().join("p.yaml"), dir.path().join("stamps"));
        std::fs::write(&yaml, SEED).unwrap();
        update_stamps(&yaml, &stamps).unwrap();
        std::fs::write(&yaml, SEED.replace("dev-v1.1", "dev-v2.0")).unwrap();
        let written = update_stamps(&yaml, &stamps).unwrap();
        assert_eq!(
            written,
            vec![stamps.join("data.sha256"), stamps.join(MAKE_VARIABLES_FILE)]
        );
        let mk = std::fs::read_to_string(stamps.join(MAKE_VARIABLES_FILE)).unwrap();
        assert!(mk.contains("PIPELINE_DEV_FILE := data/squad/dev-v2.0.json.gz\n"));
    }

    /// Hashes scripts/config_stamp.sh printed for this text (computed with the script before
    /// it was removed).
    const LEGACY_YAML: &str =
        "name: x # c\ntrain:   # t\n  lr: 1  # one\n\n  # gone\n  b: \"x #y\"   \n#top\neval:\n";

    #[test]
    fn legacy_hash_matches_the_awk_script() {
        let awk = [
            (
                "train",
                "01fb006ea2efae248d6d24ab120f683ab369a0a4f8cdb63f2d5c5d82a3f63538",
            ),
            (
                "eval",
                "75cbafbbe972638e663b87a15c09c7b56bed618ab5f73171a338fa6eeb7ad679",
            ),
            (
                "data",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ];
        for (section, hash) in awk {
            assert_eq!(legacy_section_hash(LEGACY_YAML, section), hash, "{section}");
        }
        let seed_train = "31e862ff97a98b3dffb04cd1e6773a81ffe48bd48963e344d6d2e129079967cc";
        assert_eq!(legacy_section_hash(SEED, "train"), seed_train);
    }

    #[test]
    fn a_legacy_stamp_of_the_same_text_keeps_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let (yaml, stamps) = (dir.path().join("p.yaml"), dir.path().join("stamps"));
        std::fs::write(&yaml, SEED).unwrap();
        std::fs::create_dir(&stamps).unwrap();
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for section in ["train", "eval"] {
            let stamp = stamps.join(format!("{section}.sha256"));
            std::fs::write(&stamp, format!("{}\n", legacy_section_hash(SEED, section))).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&stamp)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::fs::write(&yaml, SEED.replace("n_best_size: 20", "n_best_size: 5")).unwrap();
        update_stamps(&yaml, &stamps).unwrap();
        let train = stamps.join("train.sha256");
        assert_eq!(
            mtime(&train),
            old,
            "train did not change: its old stamp's time stays"
        );
        assert_ne!(
            mtime(&stamps.join("eval.sha256")),
            old,
            "eval changed since"
        );
        let text = std::fs::read_to_string(&train).unwrap();
        assert_eq!(text, format!("{}\n", hash_of(SEED, "train")));
    }
}
