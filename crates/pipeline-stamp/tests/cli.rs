//! The binary as the Makefile runs it (this test also makes `cargo test` build it, for
//! scripts/test_make_dag.sh).

use std::path::Path;
use std::process::{Command, Output};

fn stamp(config: &Path, stamps: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipeline-stamp"))
        .arg("--config")
        .arg(config)
        .arg("--stamps")
        .arg(stamps)
        .output()
        .unwrap()
}

#[test]
fn writes_a_stamp_per_section_and_the_make_variables() {
    let dir = tempfile::tempdir().unwrap();
    let (config, stamps) = (dir.path().join("p.yaml"), dir.path().join("run/.stamps"));
    std::fs::write(&config, "data:\n  dev_file: d.json\ntrain:\n  epochs: 2\n").unwrap();
    let out = stamp(&config, &stamps);
    assert!(out.status.success(), "{out:?}");
    for section in ["data", "model", "features", "train", "eval"] {
        let hash = std::fs::read_to_string(stamps.join(format!("{section}.sha256"))).unwrap();
        assert_eq!(hash.len(), 65, "{section}: {hash:?}");
    }
    let mk = std::fs::read_to_string(stamps.join("config.mk")).unwrap();
    assert!(mk.contains("PIPELINE_DEV_FILE := d.json\n"), "{mk}");
}

#[test]
fn an_invalid_config_fails_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("typo.yaml");
    std::fs::write(&config, "train:\n  epoch: 2\n").unwrap();
    let out = stamp(&config, &dir.path().join("stamps"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("pipeline-stamp: error: ") && stderr.contains("typo.yaml"),
        "{stderr}"
    );
    assert!(!dir.path().join("stamps/config.mk").exists());
}
