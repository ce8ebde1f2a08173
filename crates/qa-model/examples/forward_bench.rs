//! Eval-mode forward throughput (features/s) at a fixed shape, for `make bench`.
//!
//! cargo run --release -p qa-model --example forward_bench -- MODEL_DIR [BATCH] [LEN] [BATCHES]

use std::time::Instant;

use candle_core::{Device, Tensor};
use qa_model::{Batch, Checkpoint, RunPlan};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qa_model::memory::keep_freed_memory(); // as qa-eval does
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args
        .first()
        .ok_or("usage: forward_bench MODEL_DIR [BATCH] [LEN] [BATCHES]")?;
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (b, len, batches) = (arg(1, 8), arg(2, 384), arg(3, 8));
    let ck = Checkpoint::load(model, 0, &RunPlan::cpu_inference())?;
    let ids: Vec<u32> = (0..b * len)
        .map(|i| 1000 + (i * 7919 % 20000) as u32)
        .collect();
    let types: Vec<u32> = (0..b * len).map(|i| u32::from(i % len > 20)).collect();
    let batch = Batch {
        input_ids: Tensor::from_vec(ids, (b, len), &Device::Cpu)?,
        token_type_ids: Tensor::from_vec(types, (b, len), &Device::Cpu)?,
        attention_mask: Tensor::ones((b, len), candle_core::DType::U32, &Device::Cpu)?,
    };
    ck.model.forward(&batch, None)?; // warm-up
    let t = Instant::now();
    for _ in 0..batches {
        ck.model.forward(&batch, None)?.0.to_vec2::<f32>()?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{{\"batch\": {b}, \"len\": {len}, \"batches\": {batches}, \"seconds\": {secs:.3}, \"features_per_s\": {:.2}}}", (b * batches) as f64 / secs);
    Ok(())
}
