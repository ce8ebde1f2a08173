//! The model's parameters, named once: each module's prefix, every tensor's shape, and how
//! the in-memory layout differs from a checkpoint's.
//!
//! In memory each layer's query, key and value projections are one tensor
//! (`attention.self.qkv.*`, `[3 * hidden, hidden]` and `[3 * hidden]`: the attention takes Q, K
//! and V from one matmul). Checkpoints and optimizer states keep HF's three tensors
//! (`attention.self.{query,key,value}.*`), so they stay HF-compatible: tensors are fused when
//! loaded and split when saved (`fuse_qkv`, `split_qkv`), weights, gradients and AdamW moments
//! alike (each part is a block of rows, so flat copies split the same way).

use std::collections::HashMap;

use candle_core::{Result, Tensor};

use crate::config::BertConfig;

pub const WORD_EMBEDDINGS: &str = "bert.embeddings.word_embeddings";
pub const POSITION_EMBEDDINGS: &str = "bert.embeddings.position_embeddings";
pub const TOKEN_TYPE_EMBEDDINGS: &str = "bert.embeddings.token_type_embeddings";
pub const EMBEDDINGS_NORM: &str = "bert.embeddings.LayerNorm";
pub const QA_OUTPUTS: &str = "qa_outputs";

/// The fused projection's name within a layer, and the checkpoint names of its parts in order.
const QKV: &str = "attention.self.qkv";
const QKV_PARTS: [&str; 3] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
];

/// The module prefixes of encoder layer `l`.
#[derive(Debug, Clone)]
pub struct LayerNames {
    /// Q, K and V side by side (checkpoints: query, key, value).
    pub qkv: String,
    pub attention_output: String,
    pub attention_norm: String,
    pub intermediate: String,
    pub output: String,
    pub output_norm: String,
}

impl LayerNames {
    pub fn of(l: usize) -> Self {
        let p = format!("bert.encoder.layer.{l}");
        LayerNames {
            qkv: format!("{p}.{QKV}"),
            attention_output: format!("{p}.attention.output.dense"),
            attention_norm: format!("{p}.attention.output.LayerNorm"),
            intermediate: format!("{p}.intermediate.dense"),
            output: format!("{p}.output.dense"),
            output_norm: format!("{p}.output.LayerNorm"),
        }
    }
}

/// Every parameter as the model holds it (fused QKV): name and shape, in checkpoint order.
pub fn parameter_shapes(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut out = vec![];
    let mut module = |prefix: &str, weight: Vec<usize>, bias: Option<usize>| {
        out.push((format!("{prefix}.weight"), weight));
        if let Some(n) = bias {
            out.push((format!("{prefix}.bias"), vec![n]));
        }
    };
    module(WORD_EMBEDDINGS, vec![c.vocab_size, h], None);
    module(
        POSITION_EMBEDDINGS,
        vec![c.max_position_embeddings, h],
        None,
    );
    module(TOKEN_TYPE_EMBEDDINGS, vec![c.type_vocab_size, h], None);
    module(EMBEDDINGS_NORM, vec![h], Some(h));
    for l in 0..c.num_hidden_layers {
        let n = LayerNames::of(l);
        module(&n.qkv, vec![3 * h, h], Some(3 * h));
        module(&n.attention_output, vec![h, h], Some(h));
        module(&n.attention_norm, vec![h], Some(h));
        module(&n.intermediate, vec![i, h], Some(i));
        module(&n.output, vec![h, i], Some(h));
        module(&n.output_norm, vec![h], Some(h));
    }
    module(QA_OUTPUTS, vec![2, h], Some(2));
    out
}

/// Every tensor of a checkpoint (HF names: query, key and value apart) and its shape.
pub fn checkpoint_shapes(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![];
    for (name, shape) in parameter_shapes(c) {
        match checkpoint_parts(&name) {
            Some(parts) => {
                let mut part_shape = shape.clone();
                part_shape[0] /= 3;
                out.extend(parts.into_iter().map(|p| (p, part_shape.clone())));
            }
            None => out.push((name, shape)),
        }
    }
    out
}

/// The checkpoint names a fused in-memory tensor is saved as (None: saved as it is).
pub fn checkpoint_parts(name: &str) -> Option<[String; 3]> {
    let (prefix, rest) = name.split_once(QKV)?;
    Some(QKV_PARTS.map(|part| format!("{prefix}{part}{rest}")))
}

/// A tensor by in-memory name as the checkpoint tensors it is saved as: the fused QKV tensors
/// split into their three blocks of rows (of a flat copy too), the rest unchanged.
pub fn split_qkv(name: &str, tensor: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let Some(parts) = checkpoint_parts(name) else {
        return Ok(vec![(name.to_string(), tensor.clone())]);
    };
    let rows = tensor.dim(0)? / 3;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| Ok((part, tensor.narrow(0, i * rows, rows)?.contiguous()?)))
        .collect()
}

/// Checkpoint tensors (HF names) → in-memory tensors: each layer's query, key and value
/// concatenated into its QKV tensor. A layer with only some of the three keeps them apart
/// (the caller reports what is missing).
pub fn fuse_qkv(mut tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let fused_names: Vec<String> = tensors
        .keys()
        .filter_map(|name| fused_name(name))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for fused in fused_names {
        let parts = checkpoint_parts(&fused).expect("a fused name");
        if !parts.iter().all(|p| tensors.contains_key(p)) {
            continue;
        }
        let pieces: Vec<Tensor> = parts
            .iter()
            .map(|p| tensors.remove(p).expect("present"))
            .collect();
        tensors.insert(fused, Tensor::cat(&pieces, 0)?);
    }
    Ok(tensors)
}

/// The in-memory name a checkpoint tensor lands in: its fused tensor's, or its own.
pub fn memory_name(checkpoint_name: &str) -> String {
    fused_name(checkpoint_name).unwrap_or_else(|| checkpoint_name.to_string())
}

/// The in-memory name of a checkpoint tensor that is part of a fused one.
fn fused_name(checkpoint_name: &str) -> Option<String> {
    QKV_PARTS.iter().find_map(|part| {
        let (prefix, rest) = checkpoint_name.split_once(part)?;
        Some(format!("{prefix}{QKV}{rest}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn qkv_parts_round_trip_through_fuse_and_split() {
        let dev = Device::Cpu;
        let part = |v: f32| Tensor::full(v, (2, 3), &dev).unwrap();
        let mut tensors = HashMap::new();
        for (name, v) in [("query", 1.0), ("key", 2.0), ("value", 3.0)] {
            tensors.insert(
                format!("bert.encoder.layer.4.attention.self.{name}.weight"),
                part(v),
            );
        }
        tensors.insert(
            "qa_outputs.bias".to_string(),
            Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap(),
        );
        let fused = fuse_qkv(tensors).unwrap();
        let name = "bert.encoder.layer.4.attention.self.qkv.weight";
        assert_eq!(fused.len(), 2);
        assert_eq!(fused[name].dims(), &[6, 3]);
        let col: Vec<f32> = fused[name]
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            col,
            [1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
            "query, key, value rows in order"
        );
        let split = split_qkv(name, &fused[name]).unwrap();
        let names: Vec<&str> = split.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bert.encoder.layer.4.attention.self.query.weight",
                "bert.encoder.layer.4.attention.self.key.weight",
                "bert.encoder.layer.4.attention.self.value.weight"
            ]
        );
        assert_eq!(
            split[1].1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0; 6]
        );
    }

    #[test]
    fn checkpoint_shapes_are_hfs() {
        let config: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 8}"#,
        )
        .unwrap();
        let shapes: HashMap<String, Vec<usize>> = checkpoint_shapes(&config).into_iter().collect();
        assert_eq!(shapes.len(), 5 + 16 + 2, "BERT's 16 tensors per layer");
        assert_eq!(
            shapes["bert.encoder.layer.0.attention.self.key.weight"],
            vec![4, 4]
        );
        assert_eq!(
            shapes["bert.encoder.layer.0.attention.self.value.bias"],
            vec![4]
        );
        assert!(!shapes.keys().any(|n| n.contains("qkv")));
        assert_eq!(parameter_shapes(&config).len(), 5 + 12 + 2);
    }
}
