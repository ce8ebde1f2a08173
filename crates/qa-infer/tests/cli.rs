//! Runs the real `qa-infer` binary on the base all-MiniLM-L6-v2 (`make model`; untrained QA
//! head) and on broken inputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_qa-infer");

const SUPER_BOWL: &str = "Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.";

fn model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run `make model`",
        dir.display()
    );
    dir
}

fn infer(args: &[&str]) -> Output {
    let model = model_dir();
    Command::new(BIN)
        .arg("--model")
        .arg(&model)
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `context[start..end]` in chars.
fn char_slice(context: &str, start: u64, end: u64) -> String {
    context
        .chars()
        .skip(start as usize)
        .take((end - start) as usize)
        .collect()
}

fn assert_exact_substring(context: &str, answer: &serde_json::Value) {
    let (start, end) = (
        answer["start"].as_u64().unwrap(),
        answer["end"].as_u64().unwrap(),
    );
    assert!(end > start && end as usize <= context.chars().count());
    assert_eq!(
        char_slice(context, start, end),
        answer["answer"].as_str().unwrap()
    );
}

#[test]
fn super_bowl_answer_indexes_the_context_and_warns_about_the_untrained_head() {
    let out = infer(&[
        "--question",
        "Which NFL team won Super Bowl 50?",
        "--context",
        SUPER_BOWL,
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = json(&out);
    assert_exact_substring(SUPER_BOWL, &v);
    assert!(stderr.contains("untrained"), "{stderr}");
    let score = v["score"].as_f64().unwrap();
    assert!(score > 0.0 && score <= 1.0);
}

#[test]
fn non_ascii_context_offsets_are_characters() {
    let context =
        "Der Rhein fließt durch Düsseldorf — „die Stadt am Rhein“ — und dann nach 长江 weiter.";
    let v = json(&infer(&[
        "--question",
        "Wo fließt der Rhein?",
        "--context",
        context,
        "--json",
        "--top-k",
        "5",
    ]));
    for a in v["top_k"].as_array().unwrap() {
        assert_exact_substring(context, a);
    }
}

#[test]
fn long_context_uses_all_windows_and_scores_are_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    // About 1000 tokens: at least three windows of 384 tokens with stride 128.
    let context = format!(
        "{} The stadium is in Santa Clara. {}",
        [SUPER_BOWL; 6].join(" "),
        [SUPER_BOWL; 5].join(" ")
    );
    assert!(context.split_whitespace().count() > 700);
    let file = dir.path().join("ctx.txt");
    std::fs::write(&file, &context).unwrap();
    let v = json(&infer(&[
        "--question",
        "Where is the stadium?",
        "--context-file",
        file.to_str().unwrap(),
        "--json",
        "--top-k",
        "10",
    ]));
    let answers = v["top_k"].as_array().unwrap();
    assert_eq!(answers.len(), 10);
    let scores: Vec<f64> = answers
        .iter()
        .map(|a| a["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().sum::<f64>() <= 1.0 + 1e-9);
    for a in answers {
        assert_exact_substring(&context, a);
    }
}

#[test]
fn jsonl_batch_reports_bad_lines_and_goes_on() {
    let input = format!(
        "{}\n{{not json\n{}\n{}\n",
        serde_json::json!({"id": "a", "question": "Who won?", "context": SUPER_BOWL}),
        serde_json::json!({"id": "c", "question": "", "context": SUPER_BOWL}),
        serde_json::json!({"id": "d", "question": "When?", "context": SUPER_BOWL}),
    );
    let mut child = Command::new(BIN)
        .arg("--model")
        .arg(model_dir())
        .args(["--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["id"], "a");
    assert_exact_substring(SUPER_BOWL, &lines[0]);
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].as_str().unwrap().contains("invalid JSON"));
    assert_eq!(
        (lines[2]["id"].as_str(), lines[2]["line"].as_u64()),
        (Some("c"), Some(3))
    );
    assert!(lines[2]["error"]
        .as_str()
        .unwrap()
        .contains("empty question"));
    assert_eq!(lines[3]["id"], "d");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("2 line(s)"),
        "{stderr}"
    );
}

#[test]
fn broken_inputs_fail_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |model: &Path, args: &[&str]| {
        Command::new(BIN)
            .arg("--model")
            .arg(model)
            .args(args)
            .output()
            .unwrap()
    };
    let qc = ["--question", "q?", "--context", "some context"];

    // Empty question / context.
    let out = infer(&["--question", " ", "--context", SUPER_BOWL]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty question"));
    let out = infer(&["--question", "q?", "--context", ""]);
    assert_eq!(out.status.code(), Some(1));

    // A copy of the model with a broken piece each time.
    let copy = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in [
            "config.json",
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
        ] {
            std::fs::copy(model_dir().join(f), d.join(f)).unwrap();
        }
        std::os::unix::fs::symlink(
            model_dir().join("model.safetensors"),
            d.join("model.safetensors"),
        )
        .unwrap();
        d
    };
    let d = copy("no-config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    let err = String::from_utf8_lossy(&run(&d, &qc).stderr).into_owned();
    assert!(
        err.contains("no-config") && err.contains("no config.json"),
        "{err}"
    );

    let d = copy("bad-config");
    std::fs::write(d.join("config.json"), "{\"vocab_size\": ").unwrap();
    let err = String::from_utf8_lossy(&run(&d, &qc).stderr).into_owned();
    assert!(err.contains("bad config.json"), "{err}");

    let d = copy("truncated");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let w = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &w[..w.len() / 3]).unwrap();
    let out = run(&d, &qc);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("model.safetensors") && err.contains("cannot read weights"),
        "{err}"
    );

    let d = copy("vocab");
    std::fs::write(d.join("tokenizer.json"), "").unwrap();
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let vocab = std::fs::read_to_string(model_dir().join("vocab.txt")).unwrap();
    let short: String = vocab.lines().take(1000).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("vocab.txt"), short).unwrap();
    let err = String::from_utf8_lossy(&run(&d, &qc).stderr).into_owned();
    assert!(
        err.contains("vocab.txt") && err.contains("1000") && err.contains("30522"),
        "{err}"
    );
}
