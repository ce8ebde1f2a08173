//! Paths shared by qa-eval's integration tests (each test file uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crates/<krate>/tests/fixtures/<name>`.
pub fn fixture(krate: &str, name: &str) -> PathBuf {
    root()
        .join("crates")
        .join(krate)
        .join("tests/fixtures")
        .join(name)
}

/// The base all-MiniLM-L6-v2 checkpoint (`make model`).
pub fn model() -> PathBuf {
    let dir = root().join("data/models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "run `make model`");
    dir
}
