//! `qa-train` as a user runs it, on tiny.json features (`make model` for the tokenizer):
//! a small randomly initialised BERT so runs take seconds. Exact resume after `kill -9`,
//! per-epoch evaluation and the run directory's files, and input errors.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{inputs, run_ok, steps_logged, Inputs, BIN};

fn train_cmd(i: &Inputs, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--features")
        .arg(&i.train)
        .arg("--model")
        .arg(&i.model)
        .arg("--random-init")
        .arg("--output")
        .arg(out)
        .args([
            "--batch-size",
            "2",
            "--logging-steps",
            "1",
            "--threads",
            "2",
            "--quiet",
        ])
        .args(extra);
    for (flag, default) in [("--learning-rate", "1e-3"), ("--save-steps", "3")] {
        if !extra.contains(&flag) {
            c.args([flag, default]);
        }
    }
    c
}

/// Waits (up to 2 minutes) for `path` to appear while `child` runs, then SIGKILLs it;
/// returns its pid.
fn kill_once_exists(child: &mut std::process::Child, path: &Path) -> u32 {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no {}",
            path.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    pid
}

#[test]
fn killed_run_resumes_to_the_same_model_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    // 18 features, batch 2: 9 steps per epoch, 27 in all; checkpoints every 3 steps.
    let whole = tmp.path().join("whole");
    let three_epochs = ["--epochs", "3"];
    run_ok(train_cmd(&i, &whole, &three_epochs));
    let expected = std::fs::read(whole.join("model/model.safetensors")).unwrap();
    assert_eq!(steps_logged(&whole), (1..=27).collect::<Vec<_>>());

    let killed = tmp.path().join("killed");
    let mut child = train_cmd(&i, &killed, &three_epochs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 once a few checkpoints exist, wherever the run is then.
    let pid = kill_once_exists(&mut child, &killed.join("checkpoints/checkpoint-12"));
    assert!(!killed.join("model").exists(), "killed before the end");
    // The lock file stays, naming the dead process; the lock itself died with it.
    let holder = std::fs::read_to_string(killed.join(".lock")).unwrap();
    assert_eq!(holder.trim(), format!("qa-train (pid {pid})"));

    let stdout = run_ok(train_cmd(&i, &killed, &["--epochs", "3", "--resume"]));
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let resumed_from = summary["resumed_from_step"].as_u64().unwrap();
    assert!(
        resumed_from >= 12 && resumed_from.is_multiple_of(3),
        "{summary}"
    );
    let got = std::fs::read(killed.join("model/model.safetensors")).unwrap();
    assert!(
        got == expected,
        "resumed model differs from the uninterrupted run's"
    );
    assert_eq!(
        steps_logged(&killed),
        (1..=27).collect::<Vec<_>>(),
        "metrics.jsonl: each step once, in order"
    );
    let kept: Vec<String> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "save_total_limit 2: {kept:?}");

    // Damage the newest checkpoint (a copy cut short): --resume skips it with one warning,
    // sets it aside, and redoes its steps from the one before, to the same model.
    let newest = killed.join("checkpoints/checkpoint-27");
    let weights = newest.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::remove_dir_all(killed.join("model")).unwrap();
    let out = train_cmd(&i, &killed, &["--epochs", "3", "--resume"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("checkpoint-27")
            && warnings[0].contains("model.safetensors")
            && warnings[0].contains("checkpoint-24"),
        "names the damaged checkpoint, the file and the one used: {err}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["resumed_from_step"], 24, "{summary}");
    assert!(killed.join("checkpoints/damaged-checkpoint-27").exists());
    let got = std::fs::read(killed.join("model/model.safetensors")).unwrap();
    assert!(
        got == expected,
        "resumed past a damaged checkpoint: model differs"
    );
    assert_eq!(steps_logged(&killed), (1..=27).collect::<Vec<_>>());
}

#[test]
fn a_second_run_on_the_same_directory_is_refused_while_the_first_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let run = tmp.path().join("run");
    // As a second `make train` would: both with --overwrite.
    let args = ["--epochs", "8", "--overwrite"];
    let mut first = train_cmd(&i, &run, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !run.join("checkpoints/checkpoint-3").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint-3"
        );
        assert!(first.try_wait().unwrap().is_none(), "first run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = train_cmd(&i, &run, &args).output().unwrap();
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run must still be running for this test to mean anything"
    );
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("in use by qa-train (pid {})", first.id()))
            && err.contains("--resume"),
        "{err}"
    );
    let status = first.wait().unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("metrics.jsonl line {line:?}: {e}"));
    }
    assert_eq!(steps_logged(&run), (1..=72).collect::<Vec<_>>());
}

#[test]
fn evaluates_each_epoch_and_writes_the_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let run = tmp.path().join("run");
    let mut c = train_cmd(
        &i,
        &run,
        &["--epochs", "2", "--gradient-accumulation-steps", "2"],
    );
    c.arg("--eval-features")
        .arg(&i.eval)
        .arg("--eval-examples")
        .arg(&i.examples);
    run_ok(c);
    // 9 batches per epoch, 2 per step: 5 steps per epoch (the last with one batch).
    assert_eq!(steps_logged(&run), (1..=10).collect::<Vec<_>>());
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("eval").is_some())
        .collect();
    assert_eq!(evals.len(), 2);
    assert_eq!(evals[0]["step"], 5);
    assert!(evals[1]["eval"]["f1"].as_f64().is_some());
    for f in [
        "model/model.safetensors",
        "model/config.json",
        "model/training_config.yaml",
        "eval/epoch-1/predictions.json",
        "eval/epoch-2/metrics.json",
        "training_curve.svg",
        "train_summary.json",
        "config.yaml",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let svg = std::fs::read_to_string(run.join("training_curve.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("polyline"),
        "a drawn curve"
    );
    let predictions: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("eval/epoch-2/predictions.json")).unwrap())
            .unwrap();
    assert_eq!(predictions.len(), 12, "every tiny question answered");

    // An earlier run is not overwritten by accident.
    let out = train_cmd(&i, &run, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let out = train_cmd(&i, &tmp.path().join("r1"), &[])
        .arg("--features")
        .arg(&i.eval)
        .output()
        .unwrap();
    // clap: a repeated --features is a usage error (exit 2).
    assert_eq!(out.status.code(), Some(2));

    let mut c = Command::new(BIN);
    c.arg("--features")
        .arg(&i.eval)
        .arg("--model")
        .arg(&i.model)
        .arg("--random-init")
        .arg("--output")
        .arg(tmp.path().join("r2"));
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tiny.eval.parquet") && err.contains("no labels"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut c = Command::new(BIN);
    c.arg("--features")
        .arg(tmp.path().join("missing.parquet"))
        .arg("--output")
        .arg(tmp.path().join("r3"));
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.parquet"));
    assert!(!tmp.path().join("r3").exists(), "no output on failure");
}

/// A CPU-only build asked for a GPU says how to get one, in one line, and writes nothing.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_device_without_the_cuda_build_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let run = tmp.path().join("run");
    let out = train_cmd(&i, &run, &["--device", "cuda"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("\"cuda\"") && err.contains("make build-cuda"),
        "{err}"
    );
    assert!(!run.exists(), "nothing written");
}

#[test]
fn a_diverging_run_stops_with_an_error_and_keeps_its_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let run = tmp.path().join("run");
    // AdamW moves every weight by about lr per step: at 1e30 the activations overflow.
    let out = train_cmd(
        &i,
        &run,
        &[
            "--learning-rate",
            "1e30",
            "--save-steps",
            "1",
            "--max-grad-norm",
            "0",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        (err.contains("loss is") || err.contains("gradient norm is")) && err.contains("stopped"),
        "{err}"
    );
    assert!(
        err.contains("checkpoint-"),
        "names the last good checkpoint: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        !run.join("model").exists(),
        "no final model from a diverged run"
    );
}

/// `--resume` may change the precision: one warning line says the run is no longer
/// bit-exact, and it goes on in bf16. A CPU without AVX512-BF16 refuses bf16 in one line.
#[test]
fn resuming_in_another_precision_warns_once_or_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let run = tmp.path().join("run");
    // 9 steps per epoch, 27 in all; killed once checkpoint 3 exists, resumed in bf16.
    let three_epochs = ["--epochs", "3"];
    let mut child = train_cmd(&i, &run, &three_epochs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_once_exists(&mut child, &run.join("checkpoints/checkpoint-3"));
    let out = train_cmd(
        &i,
        &run,
        &["--epochs", "3", "--resume", "--precision", "bf16"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !qa_kernels::precision::bf16_gemm_supported() {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("AVX512-BF16"), "{err}");
        return;
    }
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("precision")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("warning")
            && warnings[0].contains("f32")
            && warnings[0].contains("bf16")
            && warnings[0].contains("not bit-exact"),
        "{err}"
    );
    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(config.contains("precision: bf16"), "{config}");
    assert_eq!(steps_logged(&run).last(), Some(&27));
    assert!(run.join("model/model.safetensors").exists());
}
