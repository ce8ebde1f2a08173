//! Padding stored (unpadded) features into a batch.

use candle_core::{Device, Tensor};
use squad_core::Feature;

use crate::bert::Batch;

/// Pads `features` to `pad_to` (or the longest of them): pad id 0, token type 0, mask 0.
pub fn make_batch(
    features: &[&Feature],
    pad_to: Option<usize>,
    device: &Device,
) -> candle_core::Result<Batch> {
    let longest = features.iter().map(|f| f.len()).max().unwrap_or(0);
    let len = pad_to.unwrap_or(longest).max(longest);
    let b = features.len();
    let (mut ids, mut types, mut mask) = (
        vec![0u32; b * len],
        vec![0u32; b * len],
        vec![0u32; b * len],
    );
    for (row, f) in features.iter().enumerate() {
        let at = row * len;
        for (k, (&id, &t)) in f.input_ids.iter().zip(&f.token_type_ids).enumerate() {
            ids[at + k] = id as u32;
            types[at + k] = t as u32;
            mask[at + k] = 1;
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, len), device)?,
        token_type_ids: Tensor::from_vec(types, (b, len), device)?,
        attention_mask: Tensor::from_vec(mask, (b, len), device)?,
    })
}
