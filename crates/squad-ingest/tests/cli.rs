//! Runs the real `squad-ingest` binary on small hand-written fixtures and on each kind of
//! bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use squad_core::examples::{self, meta};
use squad_core::fsutil::sha256_hex;
use squad_core::Example;

const BIN: &str = env!("CARGO_BIN_EXE_squad-ingest");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ingest(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn ingest_ok(input: &Path, output: &Path, extra: &[&str]) -> Vec<Example> {
    let out = ingest(input, output, extra);
    assert!(out.status.success(), "{}", stderr(&out));
    examples::read(output).unwrap().0
}

fn ids(examples: &[Example]) -> Vec<&str> {
    examples.iter().map(|e| e.id.as_str()).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn answers_are_character_offsets_into_non_ascii_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mini.examples.parquet");
    let examples = ingest_ok(&fixture("mini-v1.json"), &out, &[]);
    assert_eq!(
        ids(&examples),
        ["d1", "d2", "y1", "y2", "k1", "k2", "k3", "s1", "s2"]
    );
    for e in &examples {
        for (text, &start) in e.answer_texts.iter().zip(&e.answer_starts) {
            let found: String = e
                .context
                .chars()
                .skip(start as usize)
                .take(text.chars().count())
                .collect();
            assert_eq!(&found, text, "{}", e.id);
        }
    }
    let by_id = |id: &str| examples.iter().find(|e| e.id == id).unwrap();
    // Char index, not byte index: ü, 长江/á/ā and curly quotes/NBSP come before these answers.
    assert_eq!(by_id("d2").answer_starts, [81, 81]);
    assert_eq!(by_id("d2").answer_texts, ["Düsseldorf", "Düsseldorf liegt"]);
    assert_eq!(by_id("y2").answer_starts, [73]);
    assert_eq!(by_id("k2").answer_starts, [38]);
    assert_eq!(by_id("y1").title, "长江");
    // The question is stored as given (features strip leading whitespace, like HF).
    assert_eq!(by_id("d2").question, "  Was liegt am Rhein?");
    assert_eq!(
        (by_id("k3").article_index, by_id("k3").paragraph_index),
        (1, 1)
    );
}

#[test]
fn metadata_records_source_and_content_sha256_for_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let plain = fixture("mini-v1.json");
    let gz = dir.path().join("mini-v1.json.gz");
    std::fs::write(&gz, gzip(&std::fs::read(&plain).unwrap())).unwrap();
    let want_sha = sha256_hex(&std::fs::read(&plain).unwrap());
    for (input, name) in [(&plain, "mini-v1.json"), (&gz, "mini-v1.json.gz")] {
        let out = dir.path().join(format!("{name}.parquet"));
        ingest_ok(input, &out, &[]);
        let md = squad_core::parquet_io::read_metadata(&out).unwrap();
        assert_eq!(md[meta::SOURCE_FILE], name);
        assert_eq!(md[meta::SOURCE_SHA256], want_sha);
        assert_eq!(md[meta::SQUAD_VERSION], "1.1");
    }
}

#[test]
fn limit_shard_and_article_selection() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("mini-v1.json");
    let o = |n: &str| dir.path().join(n);
    assert_eq!(
        ids(&ingest_ok(&input, &o("l.parquet"), &["--limit", "3"])),
        ["d1", "d2", "y1"]
    );
    assert_eq!(
        ids(&ingest_ok(&input, &o("a.parquet"), &["--articles", "1..2"])),
        ["y1", "y2", "k1", "k2", "k3"]
    );
    let s0 = ingest_ok(
        &input,
        &o("s0.parquet"),
        &["--limit", "7", "--shard", "0/2"],
    );
    let s1 = ingest_ok(
        &input,
        &o("s1.parquet"),
        &["--limit", "7", "--shard", "1/2"],
    );
    assert_eq!(ids(&s0), ["d1", "y1", "k1", "k3"]);
    assert_eq!(ids(&s1), ["d2", "y2", "k2"]);
    let md = squad_core::parquet_io::read_metadata(&o("s1.parquet")).unwrap();
    assert_eq!(
        md[meta::SELECTION],
        r#"{"articles":null,"limit":7,"shard":"1/2"}"#
    );
}

#[test]
fn v2_unanswerable_questions_and_stats_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v2.examples.parquet");
    let examples = ingest_ok(&fixture("mini-v2.json"), &out, &[]);
    let impossible: Vec<bool> = examples.iter().map(|e| e.is_impossible).collect();
    assert_eq!(impossible, [false, true, false, true]);
    assert!(examples[1].answer_texts.is_empty());
    let md = squad_core::parquet_io::read_metadata(&out).unwrap();
    assert_eq!(md[meta::SQUAD_VERSION], "2.0");

    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("v2.examples.stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["stats"]["questions"], 4);
    assert_eq!(stats["stats"]["unanswerable"], 2);
    assert_eq!(stats["stats"]["answers"], 2);
    assert_eq!(stats["stats"]["paragraphs"], 1);
    assert_eq!(stats["squad_version"], "2.0");
    assert!(dir.path().join("v2.examples.config.yaml").exists());
}

#[test]
fn stats_command_prints_counts_words_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mini.parquet");
    ingest_ok(&fixture("mini-v1.json"), &out, &[]);
    let res = run(&["stats", out.to_str().unwrap(), "--show", "2"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let text = String::from_utf8(res.stdout).unwrap();
    assert!(
        text.contains("articles 3  paragraphs 4  questions 9  answers 10  unanswerable 0"),
        "{text}"
    );
    assert!(text.contains("context chars"), "{text}");
    assert!(text.contains("  Q: "), "{text}");
    let res = run(&["stats", out.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    // "how" and "what" open 2 questions each: ties break alphabetically.
    assert_eq!(
        json["question_first_words"][0],
        serde_json::json!(["how", 2])
    );
    assert_eq!(
        json["question_first_words"][1],
        serde_json::json!(["what", 2])
    );
}

#[test]
fn config_split_supplies_input_and_limit_and_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: p\ndata:\n  dev_file: {}\n  dev_limit: 2\n",
            fixture("mini-v1.json").display()
        ),
    )
    .unwrap();
    let out = dir.path().join("dev.examples.parquet");
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "--split",
        "dev",
        "--output",
        out.to_str().unwrap(),
    ];
    let res = run(&args);
    assert!(res.status.success(), "{}", stderr(&res));
    assert_eq!(ids(&examples::read(&out).unwrap().0), ["d1", "d2"]);
    let mut args = args.to_vec();
    args.extend(["--limit", "4"]);
    assert!(run(&args).status.success());
    assert_eq!(examples::read(&out).unwrap().0.len(), 4);
    let resolved = std::fs::read_to_string(dir.path().join("dev.examples.config.yaml")).unwrap();
    assert!(resolved.contains("dev_limit: 4"), "{resolved}");
}

/// A bad input must exit 1 with a one-line message naming the file and `place`, and leave
/// no output behind.
fn assert_rejected(input_name: &str, bytes: &[u8], place: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(input_name);
    std::fs::write(&input, bytes).unwrap();
    let out = dir.path().join("out.parquet");
    let res = ingest(&input, &out, &[]);
    let err = stderr(&res);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(input_name), "names the file: {err}");
    for p in place {
        assert!(err.contains(p), "mentions {p:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from(input_name)],
        "no output left behind"
    );
}

fn one_question(context: &str, question: &str, answers: &str) -> Vec<u8> {
    format!(
        r#"{{"version":"1.1","data":[{{"title":"T","paragraphs":[{{"context":{context:?},"qas":[{{"id":"q0","question":{question:?},"answers":{answers}}}]}}]}}]}}"#
    )
    .into_bytes()
}

#[test]
fn malformed_json_names_line_and_column() {
    assert_rejected(
        "bad.json",
        b"{\"version\": \"1.1\",\n \"data\": [\n  {\"title\": }]}",
        &["line 3", "column"],
    );
}

#[test]
fn truncated_gzip() {
    let full = gzip(&std::fs::read(fixture("mini-v1.json")).unwrap());
    assert_rejected("cut.json.gz", &full[..full.len() / 2], &["truncated"]);
}

#[test]
fn wrong_top_level_shape() {
    assert_rejected(
        "list.json",
        b"[1, 2, 3]",
        &["not valid SQuAD JSON", "line 1"],
    );
    assert_rejected(
        "nodata.json",
        b"{\"version\": \"1.1\"}",
        &["missing field `data`"],
    );
}

#[test]
fn non_utf8_input() {
    let mut bytes = one_question("abc", "q?", r#"[{"text":"abc","answer_start":0}]"#);
    let at = bytes.windows(3).position(|w| w == b"abc").unwrap();
    bytes[at + 1] = 0xff;
    assert_rejected("latin1.json", &bytes, &["line 1"]);
}

#[test]
fn missing_required_field() {
    let bytes = br#"{"data":[{"title":"T","paragraphs":[{"context":"c","qas":[{"id":"x","answers":[]}]}]}]}"#;
    assert_rejected("noq.json", bytes, &["missing field `question`", "line 1"]);
}

#[test]
fn answer_text_not_at_its_char_offset() {
    let bytes = one_question(
        "Düsseldorf am Rhein",
        "Wo?",
        r#"[{"text":"Rhein","answer_start":15}]"#,
    );
    assert_rejected(
        "shifted.json",
        &bytes,
        &[
            "article 0 \"T\", paragraph 0, question \"q0\"",
            "char 15",
            "--lenient",
        ],
    );
    let bytes = one_question("short", "Wo?", r#"[{"text":"shorter","answer_start":0}]"#);
    assert_rejected("past.json", &bytes, &["runs past the context"]);
}

#[test]
fn empty_context_question_and_missing_answers() {
    assert_rejected(
        "ectx.json",
        &one_question(" ", "q?", "[]"),
        &["empty context"],
    );
    assert_rejected(
        "eq.json",
        &one_question("ctx", "  ", r#"[{"text":"ctx","answer_start":0}]"#),
        &["empty question"],
    );
    assert_rejected(
        "noans.json",
        &one_question("ctx", "q?", "[]"),
        &["no answers"],
    );
}

#[test]
fn duplicate_ids() {
    let text = std::fs::read_to_string(fixture("mini-v1.json"))
        .unwrap()
        .replace("\"y2\"", "\"y1\"");
    assert_rejected(
        "dup.json",
        text.as_bytes(),
        &["question \"y1\"", "duplicate question id"],
    );
}

#[test]
fn lenient_drops_invalid_questions_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("mini-v1.json"))
        .unwrap()
        .replace("\"y2\"", "\"y1\"")
        .replace("\"answer_start\": 23", "\"answer_start\": 24");
    let input = dir.path().join("two-bad.json");
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out.parquet");
    let strict = ingest(&input, &out, &[]);
    assert!(
        stderr(&strict).contains("and 1 more invalid"),
        "{}",
        stderr(&strict)
    );
    let examples = ingest_ok(&input, &out, &["--lenient"]);
    assert_eq!(ids(&examples), ["d2", "y1", "k1", "k2", "k3", "s1", "s2"]);
    let md = squad_core::parquet_io::read_metadata(&out).unwrap();
    assert_eq!(md[meta::DROPPED], "2");
}

#[test]
fn failed_run_keeps_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keep.parquet");
    ingest_ok(&fixture("mini-v1.json"), &out, &[]);
    let before = std::fs::read(&out).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{").unwrap();
    assert_eq!(ingest(&bad, &out, &[]).status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn missing_input_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.parquet");
    let res = ingest(&dir.path().join("nope.json"), &out, &[]);
    assert_eq!(res.status.code(), Some(1));
    assert!(stderr(&res).contains("nope.json"), "{}", stderr(&res));
    assert_eq!(
        run(&["--output", out.to_str().unwrap()]).status.code(),
        Some(2)
    );
    assert_eq!(run(&["--input", "x.json"]).status.code(), Some(2));
    let res = ingest(&fixture("mini-v1.json"), &out, &["--shard", "2/2"]);
    assert_eq!(res.status.code(), Some(2));
    assert!(!out.exists());
}
