//! HF `BertForQuestionAnswering` in candle: embeddings (word + position + token type,
//! LayerNorm, dropout), encoder layers (self-attention with the padding mask, GELU (erf),
//! LayerNorm), and `qa_outputs = Linear(hidden, 2)` giving start/end logits.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::Embedding;

use crate::attention::AttentionCore;
use crate::config::BertConfig;
use crate::nn::{
    maybe_dropout, softmax_last_dim_with, AttentionMask, DropoutRng, LayerNorm, Linear,
};
use crate::params::Params;

/// Inputs of one batch, padded to a common length: `input_ids`/`token_type_ids` u32
/// `[batch, len]`, `attention_mask` u32 `[batch, len]` (1 = real token).
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    dropout: f64,
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    attention_dropout: f64,
    hidden_dropout: f64,
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    hidden_dropout: f64,
}

pub struct BertForQuestionAnswering {
    pub config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    qa_outputs: Linear,
}

fn linear(p: &Params, prefix: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
    Ok(Linear {
        weight: p.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
        bias: p.get(&format!("{prefix}.bias"), &[out_dim])?,
    })
}

fn layer_norm(p: &Params, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: p.get(&format!("{prefix}.weight"), &[dim])?,
        bias: p.get(&format!("{prefix}.bias"), &[dim])?,
        eps,
    })
}

/// Every parameter of the model: canonical HF name and shape.
pub fn parameter_shapes(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut out = vec![
        (
            "bert.embeddings.word_embeddings.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        (
            "bert.embeddings.position_embeddings.weight".to_string(),
            vec![c.max_position_embeddings, h],
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".to_string(),
            vec![c.type_vocab_size, h],
        ),
        ("bert.embeddings.LayerNorm.weight".to_string(), vec![h]),
        ("bert.embeddings.LayerNorm.bias".to_string(), vec![h]),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("bert.encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out.push(("qa_outputs.weight".to_string(), vec![2, h]));
    out.push(("qa_outputs.bias".to_string(), vec![2]));
    out
}

impl BertForQuestionAnswering {
    /// Builds the model over `params` (which must hold every tensor of `parameter_shapes`).
    pub fn new(config: BertConfig, p: &Params) -> Result<Self> {
        let c = &config;
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let emb = |name: &str, rows: usize| -> Result<Embedding> {
            Ok(Embedding::new(
                p.get(&format!("bert.embeddings.{name}.weight"), &[rows, h])?,
                h,
            ))
        };
        let embeddings = Embeddings {
            word: emb("word_embeddings", c.vocab_size)?,
            position: emb("position_embeddings", c.max_position_embeddings)?,
            token_type: emb("token_type_embeddings", c.type_vocab_size)?,
            norm: layer_norm(p, "bert.embeddings.LayerNorm", h, eps)?,
            dropout: c.hidden_dropout_prob,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let pre = format!("bert.encoder.layer.{l}");
                Ok(Layer {
                    attention: SelfAttention {
                        query: linear(p, &format!("{pre}.attention.self.query"), h, h)?,
                        key: linear(p, &format!("{pre}.attention.self.key"), h, h)?,
                        value: linear(p, &format!("{pre}.attention.self.value"), h, h)?,
                        output: linear(p, &format!("{pre}.attention.output.dense"), h, h)?,
                        norm: layer_norm(p, &format!("{pre}.attention.output.LayerNorm"), h, eps)?,
                        heads: c.num_attention_heads,
                        head_dim: c.head_dim(),
                        attention_dropout: c.attention_probs_dropout_prob,
                        hidden_dropout: c.hidden_dropout_prob,
                    },
                    intermediate: linear(
                        p,
                        &format!("{pre}.intermediate.dense"),
                        c.intermediate_size,
                        h,
                    )?,
                    output: linear(p, &format!("{pre}.output.dense"), h, c.intermediate_size)?,
                    norm: layer_norm(p, &format!("{pre}.output.LayerNorm"), h, eps)?,
                    hidden_dropout: c.hidden_dropout_prob,
                })
            })
            .collect::<Result<_>>()?;
        let qa_outputs = linear(p, "qa_outputs", 2, h)?;
        Ok(BertForQuestionAnswering {
            config,
            embeddings,
            layers,
            qa_outputs,
        })
    }

    /// The device the parameters live on (batches must be made there).
    pub fn device(&self) -> &candle_core::Device {
        self.qa_outputs.weight.device()
    }

    /// Start and end logits, each `[batch, len]`, differentiable (training, parity checks).
    /// `dropout`: Some in training mode.
    pub fn forward(
        &self,
        batch: &Batch,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, Tensor)> {
        self.run(batch, dropout, false)
    }

    /// Inference: the same logits through candle-nn's softmax and LayerNorm kernels (no
    /// backward pass needed).
    pub fn infer(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        self.run(batch, None, true)
    }

    fn run(
        &self,
        batch: &Batch,
        mut dropout: Option<&mut DropoutRng>,
        inference: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (_, len) = batch.input_ids.dims2()?;
        if len > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence length {len} exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        let e = &self.embeddings;
        let positions = Tensor::arange(0u32, len as u32, batch.input_ids.device())?;
        let x = word_embeddings_without_pad_gradient(
            &e.word,
            &batch.input_ids,
            self.config.pad_token_id,
        )?
        .broadcast_add(&e.position.forward(&positions)?)?
        .add(&e.token_type.forward(&batch.token_type_ids)?)?;
        let mut x = maybe_dropout(
            e.norm.forward_with(&x, inference)?,
            dropout.as_deref_mut(),
            e.dropout,
        )?;
        let mask = AttentionMask::new(&batch.attention_mask)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, dropout.as_deref_mut(), inference)?;
        }
        let logits = self.qa_outputs.forward(&x)?;
        let start = logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        let end = logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
        Ok((start, end))
    }
}

/// Word embeddings whose `pad_id` positions pass no gradient to the table (HF builds the
/// table with `padding_idx = pad_token_id`, so padding never updates that row).
fn word_embeddings_without_pad_gradient(
    word: &Embedding,
    ids: &Tensor,
    pad_id: u32,
) -> Result<Tensor> {
    let x = word.forward(ids)?;
    let keep = ids.ne(pad_id)?.to_dtype(x.dtype())?.unsqueeze(D::Minus1)?;
    let frozen = x.detach().broadcast_mul(&keep.affine(-1.0, 1.0)?)?;
    x.broadcast_mul(&keep)?.add(&frozen)
}

impl SelfAttention {
    fn forward(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        mut dropout: Option<&mut DropoutRng>,
        inference: bool,
    ) -> Result<Tensor> {
        let context = match &mask.host {
            Some(host) => {
                let dropout = dropout
                    .as_deref_mut()
                    .and_then(|rng| rng.next(self.attention_dropout));
                let core = AttentionCore::new(self.heads, host.clone(), dropout);
                let qkv = self.qkv(x)?;
                if inference {
                    qkv.apply_op1_no_bwd(&core)?
                } else {
                    core.forward(&qkv)?
                }
            }
            None => self.composed_core(x, &mask.additive, dropout.as_deref_mut(), inference)?,
        };
        let out = maybe_dropout(self.output.forward(&context)?, dropout, self.hidden_dropout)?;
        self.norm.forward_with(&(out + x)?, inference)
    }

    /// Q, K and V side by side, `[batch, len, 3 * hidden]`, from one matmul.
    fn qkv(&self, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (&self.query, &self.key, &self.value);
        Linear {
            weight: Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0)?,
            bias: Tensor::cat(&[&q.bias, &k.bias, &v.bias], 0)?,
        }
        .forward(x)
    }

    /// The attention core from candle ops (GPUs; the fused core's reference).
    fn composed_core(
        &self,
        x: &Tensor,
        mask: &Tensor,
        dropout: Option<&mut DropoutRng>,
        inference: bool,
    ) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let split_heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split_heads(self.query.forward(x)?)?;
        let k = split_heads(self.key.forward(x)?)?;
        let v = split_heads(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (self.head_dim as f64).sqrt()))?;
        let probs = softmax_last_dim_with(&scores.broadcast_add(mask)?, inference)?;
        let probs = maybe_dropout(probs, dropout, self.attention_dropout)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))
    }
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        mut dropout: Option<&mut DropoutRng>,
        inference: bool,
    ) -> Result<Tensor> {
        let attended = self
            .attention
            .forward(x, mask, dropout.as_deref_mut(), inference)?;
        let hidden = crate::fused::gelu(&self.intermediate.forward(&attended)?)?;
        let out = maybe_dropout(self.output.forward(&hidden)?, dropout, self.hidden_dropout)?;
        self.norm.forward_with(&(out + attended)?, inference)
    }
}
