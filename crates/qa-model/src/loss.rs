//! HF's QA loss: (CE(start) + CE(end)) / 2, each the mean over the batch, with positions
//! clamped to [0, len] and position `len` ignored.

use candle_core::{DType, Result, Tensor, D};

fn cross_entropy_ignoring(logits: &Tensor, positions: &[i64]) -> Result<Tensor> {
    let (b, len) = logits.dims2()?;
    let clamped: Vec<i64> = positions.iter().map(|&p| p.clamp(0, len as i64)).collect();
    let valid: Vec<f32> = clamped
        .iter()
        .map(|&p| if p < len as i64 { 1.0 } else { 0.0 })
        .collect();
    let targets: Vec<u32> = clamped
        .iter()
        .map(|&p| p.min(len as i64 - 1) as u32)
        .collect();
    let count: f32 = valid.iter().sum();
    let device = logits.device();
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let targets = Tensor::from_vec(targets, (b, 1), device)?;
    let picked = log_probs.gather(&targets, 1)?.squeeze(1)?;
    let valid = Tensor::from_vec(valid, b, device)?.to_dtype(DType::F32)?;
    (picked.mul(&valid)?.sum_all()? * (-1.0 / count.max(1.0) as f64))?.to_dtype(DType::F32)
}

/// Returns (loss, start loss, end loss).
pub fn qa_loss(
    start: &Tensor,
    end: &Tensor,
    starts: &[i64],
    ends: &[i64],
) -> Result<(Tensor, Tensor, Tensor)> {
    let s = cross_entropy_ignoring(start, starts)?;
    let e = cross_entropy_ignoring(end, ends)?;
    let total = ((&s + &e)? * 0.5)?;
    Ok((total, s, e))
}
