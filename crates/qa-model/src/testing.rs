//! What tests share: the repository's fixtures, found from the
//! working directory at run time (a test binary built here also runs on a machine without
//! cargo, from the repository root), and the oracle's seeded QA checkpoint.

use std::path::PathBuf;

use crate::checkpoint::Checkpoint;
use crate::plan::RunPlan;

/// The repository root: the nearest directory at or above the working directory that holds
/// `crates/qa-model/tests/fixtures` (cargo runs tests from the crate's directory; a carried
/// test binary runs from the root).
pub fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().expect("a working directory");
    cwd.ancestors()
        .find(|d| d.join("crates/qa-model/tests/fixtures").is_dir())
        .unwrap_or_else(|| panic!("no repository root at or above {}", cwd.display()))
        .to_path_buf()
}

/// `crates/CRATE/tests/fixtures/NAME`.
pub fn fixture(krate: &str, name: &str) -> PathBuf {
    repo_root()
        .join("crates")
        .join(krate)
        .join("tests/fixtures")
        .join(name)
}

/// The offline default model (`make model`).
pub fn model_dir() -> PathBuf {
    let dir = repo_root().join("data/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run `make model`",
        dir.display()
    );
    dir
}

/// The oracle's `ref_qa_checkpoint.py --seed 0` model: MiniLM with the committed seed-0 QA
/// head, running as `plan` says.
pub fn seeded_checkpoint(plan: &RunPlan) -> Checkpoint {
    let mut ck = Checkpoint::load(model_dir().to_str().unwrap(), 1, plan).unwrap();
    assert!(ck.report.fresh_head, "the base model has no QA head");
    let head = fixture("qa-model", "seed0_qa_head.safetensors");
    let replaced = ck.params.overwrite_from(&head, &plan.device).unwrap();
    assert_eq!(replaced, 2);
    ck
}
