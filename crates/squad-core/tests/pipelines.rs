//! Every committed pipeline YAML parses, and the seed pipeline is the notebook's run.

use std::path::Path;

use squad_core::PipelineConfig;

fn pipelines_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines")
}

#[test]
fn every_pipeline_parses_and_is_named_after_its_file() {
    let mut n = 0;
    for entry in std::fs::read_dir(pipelines_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let cfg = PipelineConfig::from_yaml_file(&path).unwrap();
            assert_eq!(
                Some(cfg.name.as_str()),
                path.file_stem().and_then(|s| s.to_str())
            );
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn seed_pipeline_is_the_notebook_run() {
    let cfg = PipelineConfig::from_yaml_file(&pipelines_dir().join("squad-v1-seed.yaml")).unwrap();
    assert_eq!(
        (cfg.data.train_limit, cfg.data.dev_limit),
        (Some(1000), Some(100))
    );
    assert_eq!((cfg.features.max_length, cfg.features.stride), (384, 128));
    let t = &cfg.train;
    assert_eq!(
        (t.learning_rate, t.batch_size, t.epochs, t.weight_decay),
        (2e-5, 8, 1, 0.01)
    );
    assert_eq!((cfg.eval.n_best_size, cfg.eval.max_answer_length), (20, 30));
}
