//! `qa-train` data-parallel under a real `mpirun -np 2` (built with `--features qa-train/mpi`;
//! `make test` builds it whenever MPI is installed). On tiny.json with a small random BERT,
//! dropout on: 2 ranks x batch 4 train what 1 process x batch 8 does; only rank 0 writes; a
//! rank with other inputs stops the job with one line; a killed rank ends the job, and
//! `--resume` continues it exactly (and, on 1 process x batch 8, within the tolerance).
#![cfg(feature = "mpi")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use qa_features::{make_features_file, QaTokenizer, Settings};
use squad_core::features::FeatureSplit;

mod common;
use common::{inputs, root, run_ok, steps_logged, Inputs, BIN};

/// Learning rate of these runs: the notebook's, so AdamW's steps are the size the
/// tolerance is stated for.
const LR: f64 = 2e-5;

/// `mpirun -np N` as CI runs it: as root, on any number of cores, threads not pinned.
fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "--bind-to", "none", "-np"])
        .arg(np.to_string());
    c
}

/// Epochs of a run (2 optimizer steps each at a global batch of 8), each evaluated.
const EPOCHS: usize = 3;
/// In `extra`: 12 epochs instead (a run long enough to be killed midway).
const LONG: &str = "(long)";

/// qa-train's arguments for an `EPOCHS` run on the tiny features.
fn train_args(i: &Inputs, out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    let epochs = if extra.contains(&LONG) { 12 } else { EPOCHS };
    let extra: Vec<&&str> = extra.iter().filter(|&&a| a != LONG).collect();
    let mut args: Vec<String> = [
        "--features",
        i.train.to_str().unwrap(),
        "--eval-features",
        i.eval.to_str().unwrap(),
        "--eval-examples",
        i.examples.to_str().unwrap(),
        "--model",
        i.model.to_str().unwrap(),
        "--random-init",
        "--output",
        out.to_str().unwrap(),
        "--epochs",
        &epochs.to_string(),
        "--save-steps",
        "2",
        "--logging-steps",
        "1",
        "--threads",
        "1",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--batch-size".into(), batch.to_string()]);
    args.extend(["--learning-rate".into(), LR.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn one_process(i: &Inputs, out: &Path, batch: usize, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(train_args(i, out, batch, extra));
    c
}

fn two_ranks(i: &Inputs, out: &Path, batch: usize, extra: &[&str]) -> Command {
    let mut c = mpirun(2);
    c.arg(BIN).args(train_args(i, out, batch, extra));
    c
}

/// A training record (step, loss, grad_norm) and an evaluation record (step, metrics).
type StepLine = (u64, f64, f64);
type EvalLine = (u64, serde_json::Value);

/// metrics.jsonl's records, by kind.
fn records(run: &Path) -> (Vec<StepLine>, Vec<EvalLine>) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let (mut steps, mut evals) = (vec![], vec![]);
    for r in text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    {
        let step = r["step"].as_u64().unwrap();
        if let Some(loss) = r.get("loss") {
            steps.push((
                step,
                loss.as_f64().unwrap(),
                r["grad_norm"].as_f64().unwrap(),
            ));
        } else if let Some(eval) = r.get("eval") {
            evals.push((step, eval.clone()));
        }
    }
    (steps, evals)
}

fn weights(run: &Path) -> BTreeMap<String, Tensor> {
    let file = run.join("model/model.safetensors");
    candle_core::safetensors::load(file, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

/// Every logged loss and gradient norm within 1e-5 relative, every evaluation equal, every
/// final weight within 1e-5 — except `qa_outputs.bias`, whose gradient is numerically zero
/// (the softmax's shift invariance) so AdamW turns rounding noise into steps of up to lr.
fn assert_same_run(a: &Path, b: &Path) {
    let ((steps_a, evals_a), (steps_b, evals_b)) = (records(a), records(b));
    assert_eq!(steps_a.len(), steps_b.len(), "steps logged");
    assert!(!steps_a.is_empty());
    for ((step, la, ga), (_, lb, gb)) in steps_a.iter().zip(&steps_b) {
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs(),
            "step {step} loss {la} vs {lb}"
        );
        assert!(
            (ga - gb).abs() <= 1e-5 * ga.abs(),
            "step {step} grad norm {ga} vs {gb}"
        );
    }
    assert_eq!(evals_a, evals_b, "per-epoch evaluations");
    assert!(evals_a.len() >= EPOCHS, "one evaluation per epoch");
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    let steps = steps_a.len() as f64;
    for (name, ta) in &wa {
        let diff = common::max_abs_diff(ta, &wb[name]) as f64;
        let bound = if name == "qa_outputs.bias" {
            2.0 * steps * LR
        } else {
            1e-5
        };
        assert!(
            diff <= bound,
            "{name}: weights differ by {diff} (bound {bound})"
        );
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

#[test]
fn two_ranks_of_batch_4_train_what_one_process_of_batch_8_does_and_only_rank_0_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let (one, two) = (tmp.path().join("1x8"), tmp.path().join("2x4"));
    run_ok(one_process(&i, &one, 8, &[]));
    let out = two_ranks(&i, &two, 4, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mpirun failed: {stderr}");
    assert_eq!(
        stderr.matches("qa-train: rank 0 of 2").count(),
        1,
        "rank 0 says the world size once: {stderr}"
    );
    let summaries = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(summaries, 1, "one summary line (rank 0's)");
    assert_same_run(&one, &two);
    // One writer: the same files as one process writes, each step logged once.
    let strip = |files: Vec<PathBuf>| -> Vec<PathBuf> {
        files
            .into_iter()
            .filter(|p| !p.ends_with(".lock"))
            .collect()
    };
    assert_eq!(strip(files_in(&one)), strip(files_in(&two)));
    let steps = steps_logged(&two);
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
}

fn assert_one_error_line(out: &Output, names: &[&str]) {
    assert!(!out.status.success(), "the job must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    for name in names {
        assert!(errors[0].contains(name), "{name} in {}", errors[0]);
    }
}

#[test]
fn a_rank_with_other_inputs_stops_the_job_with_one_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let out_dir = tmp.path().join("run");
    // Rank 1's features: the same examples, other windows.
    let other = tmp.path().join("other.train.parquet");
    let tok = QaTokenizer::load(&root().join("data/models/all-MiniLM-L6-v2")).unwrap();
    let settings = Settings {
        max_length: 256,
        stride: 64,
    };
    make_features_file(
        &i.examples,
        &tok,
        settings,
        FeatureSplit::Train,
        None,
        &other,
    )
    .unwrap();
    // MPMD: rank 0 and rank 1 get different command lines.
    let mismatched = |rank1: Vec<String>| -> Output {
        let mut c = mpirun(1);
        c.arg(BIN).args(train_args(&i, &out_dir, 4, &[]));
        c.args([":", "-np", "1"]).arg(BIN).args(rank1);
        c.output().unwrap()
    };
    let other_features = Inputs {
        train: other.clone(),
        ..inputs(tmp.path())
    };
    let out = mismatched(train_args(&other_features, &out_dir, 4, &[]));
    assert_one_error_line(&out, &["rank 1 of 2", "other.train.parquet", "rank 0"]);
    let out = mismatched(train_args(&i, &out_dir, 4, &["--seed", "7"]));
    assert_one_error_line(&out, &["rank 1 of 2", "config", "seed: 7", "seed: 42"]);
    assert!(!out_dir.join("model").exists() && !out_dir.join("checkpoints").exists());
}

/// The pid of `mpirun`'s child that is rank `rank` (from its environment).
fn rank_pid(mpirun_pid: u32, rank: usize) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{mpirun_pid}/task/{mpirun_pid}/children")).ok()?;
    children.split_whitespace().find_map(|pid| {
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
        env.split(|&b| b == 0)
            .any(|v| v == wanted.as_bytes())
            .then(|| pid.parse().ok())
            .flatten()
    })
}

#[test]
fn a_killed_rank_ends_the_job_and_resume_continues_it_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let i = inputs(tmp.path());
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    run_ok(two_ranks(&i, &whole, 4, &[LONG]));
    let mut job = two_ranks(&i, &killed, 4, &[LONG]).spawn().unwrap();
    let started = Instant::now();
    let checkpoint = killed.join("checkpoints/checkpoint-2");
    while !checkpoint.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint-2"
        );
        assert!(job.try_wait().unwrap().is_none(), "ended before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rank1 = rank_pid(job.id(), 1).expect("rank 1's process");
    sigkill(rank1);
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the job outlived its rank by 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "a job with a killed rank fails");
    assert!(checkpoint.exists(), "the last intact checkpoint is kept");
    // A copy to resume on one process (same global batch: 1 x 8).
    let copy = tmp.path().join("copy");
    copy_dir(&killed, &copy);
    run_ok(two_ranks(&i, &killed, 4, &[LONG, "--resume"]));
    let model = |run: &Path| std::fs::read(run.join("model/model.safetensors")).unwrap();
    assert!(
        model(&killed) == model(&whole),
        "resumed under mpirun: the same model, bit for bit"
    );
    assert_eq!(records(&killed), records(&whole));
    run_ok(one_process(&i, &copy, 8, &[LONG, "--resume"]));
    assert_same_run(&whole, &copy);
}

/// SIGKILL to `pid` (through kill(1): no libc binding in the tests).
fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}
