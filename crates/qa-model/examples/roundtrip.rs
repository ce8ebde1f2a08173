//! Checkpoint round trip with transformers (driven by scripts/check_roundtrip.sh):
//! loads LOAD_DIR (e.g. a checkpoint transformers saved), saves it to SAVE_DIR in our
//! layout, and writes our eval-mode logits for the first features of FEATURES (an oracle
//! features Parquet) to OUT.json, for the Python side to compare.
//!
//! cargo run --release -p qa-model --example roundtrip -- LOAD_DIR SAVE_DIR FEATURES OUT.json

use std::path::Path;

use candle_core::Device;
use qa_model::checkpoint::save;
use qa_model::{make_batch, Checkpoint, RunPlan};
use squad_core::parquet_io::{read_parquet, Columns};
use squad_core::Feature;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [load, save_dir, features, out] = args.as_slice() else {
        return Err("usage: roundtrip LOAD_DIR SAVE_DIR FEATURES.parquet OUT.json".into());
    };
    let ck = Checkpoint::load(load, 0, &RunPlan::cpu_inference())?;
    if ck.report.fresh_head || !ck.report.unexpected.is_empty() {
        return Err(format!(
            "{load}: fresh head {} / unexpected {:?}",
            ck.report.fresh_head, ck.report.unexpected
        )
        .into());
    }
    save(Path::new(save_dir), &ck.config, &ck.params, Some(&ck.dir))?;
    let path = Path::new(features);
    let (df, _) = read_parquet(path)?;
    let c = Columns::new(path, &df);
    let (ids, types, mask) = (
        c.i32_lists("input_ids")?,
        c.i32_lists("token_type_ids")?,
        c.i32_lists("attention_mask")?,
    );
    let feats: Vec<Feature> = (0..ids.len().min(32))
        .map(|i| {
            let n = mask[i].iter().filter(|&&m| m == 1).count();
            Feature {
                example_id: String::new(),
                example_index: i as u32,
                window_index: 0,
                input_ids: ids[i][..n].to_vec(),
                token_type_ids: types[i][..n].to_vec(),
                labels: None,
                offsets: None,
            }
        })
        .collect();
    let mut rows = Vec::new();
    for chunk in feats.chunks(8) {
        let refs: Vec<&Feature> = chunk.iter().collect();
        let (s, e) = ck
            .model
            .forward(&make_batch(&refs, None, &Device::Cpu)?, None)?;
        let (s, e): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (s.to_vec2()?, e.to_vec2()?);
        for (k, f) in chunk.iter().enumerate() {
            rows.push(serde_json::json!({"start": &s[k][..f.len()], "end": &e[k][..f.len()]}));
        }
    }
    std::fs::write(out, serde_json::to_string(&rows)?)?;
    Ok(())
}
