//! Runs the real `qa-features` binary: byte-exact parity with the HF oracle's committed
//! golden features (ref_features.py), the documented edge-case label, metadata, and each
//! kind of bad input. Needs the model's tokenizer (`make model`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qa_features::parity;
use squad_core::features::{self, meta, FeatureSplit};
use squad_core::Feature;
use squad_ingest::{read_squad, write_outputs, IngestOptions, Selection};

const BIN: &str = env!("CARGO_BIN_EXE_qa-features");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn model_dir() -> PathBuf {
    let dir = root().join("data/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("tokenizer.json").exists(),
        "{} is missing: run `make model`",
        dir.display()
    );
    dir
}

/// Ingests a SQuAD JSON into an examples file (the first `limit` questions).
fn examples_file(json: &Path, dir: &Path, limit: Option<usize>) -> PathBuf {
    let selection = Selection {
        limit,
        ..Default::default()
    };
    let ingested = read_squad(
        json,
        &IngestOptions {
            selection,
            lenient: false,
        },
    )
    .unwrap();
    let out = dir.join("x.examples.parquet");
    write_outputs(&out, &ingested, &selection).unwrap();
    out
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

fn build(examples: &Path, split: &str, out: &Path, extra: &[&str]) -> Output {
    let model = model_dir();
    let mut args = vec![
        "--examples",
        examples.to_str().unwrap(),
        "--tokenizer",
        model.to_str().unwrap(),
        "--split",
        split,
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn build_ok(examples: &Path, split: &str, out: &Path) -> Vec<Feature> {
    let res = build(examples, split, out, &[]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    features::read(out).unwrap().0
}

fn assert_parity(
    json: &Path,
    limit: Option<usize>,
    split: &str,
    reference: &str,
) -> parity::ParityReport {
    let dir = tempfile::tempdir().unwrap();
    let examples = examples_file(json, dir.path(), limit);
    let ours = build_ok(&examples, split, &dir.path().join("f.parquet"));
    let fsplit = if split == "train" {
        FeatureSplit::Train
    } else {
        FeatureSplit::Eval
    };
    let report = parity::compare(&ours, fsplit, &fixture(reference)).unwrap();
    assert!(report.is_exact(), "{reference}: {:#?}", report.mismatches);
    report
}

#[test]
fn tiny_train_features_equal_hf_except_the_documented_edge_case() {
    let report = assert_parity(
        &fixture("tiny.json"),
        None,
        "train",
        "tiny.train.ref.parquet",
    );
    assert_eq!(report.features, 18);
    // kili-q3: "1973" is the context's last word; HF labels it (383, 152).
    assert_eq!(report.hf_edge_cases.len(), 1);
    let (id, window, hf, ours) = &report.hf_edge_cases[0];
    assert_eq!((id.as_str(), *window, *hf), ("kili-q3", 0, (383, 152)));
    assert_eq!(*ours, (152, 152));
}

#[test]
fn the_corrected_edge_case_label_is_the_answer_span() {
    let dir = tempfile::tempdir().unwrap();
    let examples_path = examples_file(&fixture("tiny.json"), dir.path(), None);
    let train = build_ok(&examples_path, "train", &dir.path().join("t.parquet"));
    let eval = build_ok(&examples_path, "eval", &dir.path().join("e.parquet"));
    let (examples, _) = squad_core::examples::read(&examples_path).unwrap();
    // Every train label that is not CLS must cover exactly the first answer's text (same
    // windows in both splits, so the eval offsets locate the train labels).
    let mut spans = 0;
    for (t, e) in train.iter().zip(&eval) {
        assert_eq!(
            (&t.example_id, t.window_index),
            (&e.example_id, e.window_index)
        );
        let (s, end) = t.labels.unwrap();
        if (s, end) == (0, 0) {
            continue;
        }
        let offs = e.offsets.as_ref().unwrap();
        let ex = &examples[t.example_index as usize];
        let chars: Vec<char> = ex.context.chars().collect();
        let text: String = chars[offs[s as usize].0 as usize..offs[end as usize].1 as usize]
            .iter()
            .collect();
        let answer = &ex.answer_texts[0];
        // Token boundaries may extend a span past the answer inside a word; never short of it.
        assert!(
            text.contains(answer.as_str()),
            "{}: span {text:?} vs answer {answer:?}",
            ex.id
        );
        if ex.id == "kili-q3" {
            assert_eq!(text, "1973");
        }
        spans += 1;
    }
    assert_eq!(spans, 13);
}

#[test]
fn tiny_eval_features_equal_hf() {
    let report = assert_parity(&fixture("tiny.json"), None, "eval", "tiny.eval.ref.parquet");
    assert_eq!(report.features, 18);
}

#[test]
fn tiny_v2_unanswerable_questions_are_labelled_cls() {
    let report = assert_parity(
        &fixture("tiny_v2.json"),
        None,
        "train",
        "tiny_v2.train.ref.parquet",
    );
    assert_eq!(report.features, 20);
    assert_parity(
        &fixture("tiny_v2.json"),
        None,
        "eval",
        "tiny_v2.eval.ref.parquet",
    );
}

fn mirror(name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SQUAD_MIRROR") else {
        eprintln!("SQUAD_MIRROR is not set: skipping parity on {name}");
        return None;
    };
    Some(root().join(dir).join(name))
}

#[test]
fn first_200_dev_questions_equal_hf() {
    if let Some(dev) = mirror("dev-v1.1.json.gz") {
        assert_parity(&dev, Some(200), "eval", "dev200.eval.ref.parquet");
    }
}

#[test]
fn first_300_train_questions_equal_hf() {
    if let Some(train) = mirror("train-v1.1.reconstructed.json.gz") {
        let report = assert_parity(&train, Some(300), "train", "train300.train.ref.parquet");
        assert_eq!(report.features, 305);
    }
}

#[test]
fn metadata_records_tokenizer_settings_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let examples = examples_file(&fixture("tiny.json"), dir.path(), None);
    let out = dir.path().join("f.parquet");
    let feats = build_ok(&examples, "train", &out);
    let md = squad_core::parquet_io::read_metadata(&out).unwrap();
    let sha = |p: &Path| squad_core::fsutil::sha256_file(p).unwrap();
    assert_eq!(
        md[meta::TOKENIZER_SHA256],
        sha(&model_dir().join("tokenizer.json"))
    );
    assert_eq!(md[meta::EXAMPLES_SHA256], sha(&examples));
    assert_eq!(
        (md[meta::MAX_LENGTH].as_str(), md[meta::STRIDE].as_str()),
        ("384", "128")
    );
    assert_eq!(md[meta::SPLIT], "train");
    assert_eq!(md[meta::HF_EDGE_CASE_LABELS], "1");
    // Stored unpadded: lengths vary, none exceeds max_length.
    let lens: Vec<usize> = feats.iter().map(Feature::len).collect();
    assert_eq!(*lens.iter().max().unwrap(), 384);
    assert!(lens.iter().any(|&n| n < 200));
}

#[test]
fn vocab_txt_fallback_gives_the_same_features() {
    let dir = tempfile::tempdir().unwrap();
    let vocab_dir = dir.path().join("vocab-only");
    std::fs::create_dir(&vocab_dir).unwrap();
    std::fs::copy(model_dir().join("vocab.txt"), vocab_dir.join("vocab.txt")).unwrap();
    let examples = examples_file(&fixture("tiny.json"), dir.path(), None);
    let from_json = build_ok(&examples, "eval", &dir.path().join("a.parquet"));
    let out = dir.path().join("b.parquet");
    let res = run(&[
        "--examples",
        examples.to_str().unwrap(),
        "--tokenizer",
        vocab_dir.to_str().unwrap(),
        "--split",
        "eval",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(features::read(&out).unwrap().0, from_json);
}

/// A long question (many tokens) over a long context, as an examples file.
fn long_question_examples(dir: &Path) -> PathBuf {
    let context = "word ".repeat(300) + "answer here.";
    let question = "why ".repeat(100) + "?";
    let json = serde_json::json!({"version": "1.1", "data": [{"title": "T", "paragraphs": [{
    "context": context,
    "qas": [
        {"id": "long", "question": question, "answers": [{"text": "answer", "answer_start": 1500}]},
        {"id": "short", "question": "Where?", "answers": [{"text": "answer", "answer_start": 1500}]}
    ]}]}]});
    let path = dir.join("long.json");
    std::fs::write(&path, json.to_string()).unwrap();
    examples_file(&path, dir, None)
}

#[test]
fn too_long_questions_are_skipped_in_train_and_cut_in_eval() {
    let dir = tempfile::tempdir().unwrap();
    let examples = long_question_examples(dir.path());
    let limits = ["--max-length", "128", "--stride", "32"];
    let out = dir.path().join("t.parquet");
    let res = build(&examples, "train", &out, &limits);
    assert!(res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("skipped question \"long\""));
    let (feats, _, md) = features::read(&out).unwrap();
    assert!(feats.iter().all(|f| f.example_id == "short"));
    assert_eq!(md[meta::SKIPPED_QUESTIONS], "1");

    let out = dir.path().join("e.parquet");
    let res = build(&examples, "eval", &out, &limits);
    assert!(res.status.success());
    let (feats, _, md) = features::read(&out).unwrap();
    assert_eq!(md[meta::TRUNCATED_QUESTIONS], "1");
    let long: Vec<&Feature> = feats.iter().filter(|f| f.example_id == "long").collect();
    assert!(!long.is_empty() && long.iter().all(|f| f.len() <= 128));
    // [CLS] + 64 question tokens + [SEP] before the context.
    assert_eq!(
        long[0]
            .token_type_ids
            .iter()
            .take_while(|&&t| t == 0)
            .count(),
        66
    );
}

fn assert_fails(res: &Output, names: &[&str], out: &Path) {
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in names {
        assert!(err.contains(n), "mentions {n:?}: {err}");
    }
    assert!(!out.exists(), "no partial output");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let examples = examples_file(&fixture("tiny.json"), dir.path(), None);
    let out = dir.path().join("never.parquet");

    // A features file given as examples.
    let feats = dir.path().join("f.parquet");
    build_ok(&examples, "train", &feats);
    assert_fails(
        &build(&feats, "train", &out, &[]),
        &["f.parquet", "features"],
        &out,
    );

    // Tokenizer directory without tokenizer files; unparsable tokenizer.json.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let args = |tok: &Path| {
        vec![
            "--examples".to_string(),
            examples.display().to_string(),
            "--tokenizer".to_string(),
            tok.display().to_string(),
            "--split".to_string(),
            "train".to_string(),
            "--output".to_string(),
            out.display().to_string(),
        ]
    };
    let res = Command::new(BIN).args(args(&empty)).output().unwrap();
    assert_fails(&res, &["empty", "no tokenizer.json or vocab.txt"], &out);
    let broken = dir.path().join("tokenizer.json");
    std::fs::write(&broken, "{\"version\": ").unwrap();
    let res = Command::new(BIN).args(args(&broken)).output().unwrap();
    assert_fails(&res, &["tokenizer.json", "cannot load tokenizer"], &out);

    // Stride that leaves no window.
    let res = build(
        &examples,
        "train",
        &out,
        &["--max-length", "64", "--stride", "61"],
    );
    assert_fails(&res, &["x.examples.parquet", "stride 61"], &out);

    // Eval question that does not fit even cut to 64 tokens.
    let long = long_question_examples(dir.path());
    let res = build(
        &long,
        "eval",
        &out,
        &["--max-length", "96", "--stride", "40"],
    );
    assert_fails(&res, &["question \"long\"", "--max-length"], &out);

    // Missing examples file; usage error.
    let res = build(&dir.path().join("nope.parquet"), "train", &out, &[]);
    assert_fails(&res, &["nope.parquet"], &out);
    assert_eq!(run(&["--split", "train"]).status.code(), Some(2));
}
