//! HF `BertForQuestionAnswering` in candle: embeddings (word + position + token type,
//! LayerNorm, dropout), encoder layers (self-attention with the padding mask, GELU (erf),
//! LayerNorm), and `qa_outputs = Linear(hidden, 2)` giving start/end logits. Each op runs the
//! kernel the model's `RunPlan` chose when it was built.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::Embedding;
use qa_kernels::attention::{self, AttentionCore};
use qa_kernels::dense::DenseOp;

use crate::config::BertConfig;
use crate::dropout::{maybe_dropout, DropoutRng};
use crate::nn::{gelu, softmax, AttentionMask, LayerNorm, Linear};
use crate::params::Params;
use crate::plan::{Kernel, Mode, RunPlan};
use crate::schema::{self, LayerNames};

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
    /// Q, K and V side by side: `[3 * hidden, hidden]` (`crate::schema`).
    qkv: Linear,
    output: Linear,
    norm: LayerNorm,
    heads: usize,
    core: Kernel,
    precision: qa_kernels::Precision,
    /// The softmax of the composed core.
    softmax: Kernel,
    attention_dropout: f64,
    hidden_dropout: f64,
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    gelu: Kernel,
    norm: LayerNorm,
    hidden_dropout: f64,
}

pub struct BertForQuestionAnswering {
    pub config: BertConfig,
    plan: RunPlan,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    qa_outputs: Linear,
}

/// Builds the model's modules from the parameters with the kernels of a plan.
struct Builder<'a> {
    params: &'a Params,
    plan: &'a RunPlan,
    eps: f64,
}

impl Builder<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.params.get(name)
    }

    fn linear(&self, prefix: &str) -> Result<Linear> {
        let weight = self.tensor(&format!("{prefix}.weight"))?;
        let precision = self.plan.precision();
        // Inference weights do not change once the model runs: packed once for the GEMM.
        let op = match (self.plan.mode, self.plan.dense) {
            (Mode::Inference, Kernel::Fused) => DenseOp::inference(precision),
            _ => DenseOp::new(precision),
        };
        Ok(Linear {
            bias: self.tensor(&format!("{prefix}.bias"))?,
            weight,
            kernel: self.plan.dense,
            op,
        })
    }

    fn layer_norm(&self, prefix: &str) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{prefix}.weight"))?,
            bias: self.tensor(&format!("{prefix}.bias"))?,
            eps: self.eps,
            kernel: self.plan.norm,
            residual: self.plan.residual_norm,
        })
    }

    fn embedding(&self, prefix: &str, hidden: usize) -> Result<Embedding> {
        Ok(Embedding::new(
            self.tensor(&format!("{prefix}.weight"))?,
            hidden,
        ))
    }

    fn embeddings(&self, c: &BertConfig) -> Result<Embeddings> {
        let h = c.hidden_size;
        Ok(Embeddings {
            word: self.embedding(schema::WORD_EMBEDDINGS, h)?,
            position: self.embedding(schema::POSITION_EMBEDDINGS, h)?,
            token_type: self.embedding(schema::TOKEN_TYPE_EMBEDDINGS, h)?,
            norm: self.layer_norm(schema::EMBEDDINGS_NORM)?,
            dropout: c.hidden_dropout_prob,
        })
    }

    fn layer(&self, c: &BertConfig, l: usize) -> Result<Layer> {
        let n = LayerNames::of(l);
        Ok(Layer {
            attention: SelfAttention {
                qkv: self.linear(&n.qkv)?,
                output: self.linear(&n.attention_output)?,
                norm: self.layer_norm(&n.attention_norm)?,
                heads: c.num_attention_heads,
                core: self.plan.attention,
                precision: self.plan.attention_precision(),
                softmax: self.plan.norm,
                attention_dropout: c.attention_probs_dropout_prob,
                hidden_dropout: c.hidden_dropout_prob,
            },
            intermediate: self.linear(&n.intermediate)?,
            output: self.linear(&n.output)?,
            gelu: self.plan.gelu,
            norm: self.layer_norm(&n.output_norm)?,
            hidden_dropout: c.hidden_dropout_prob,
        })
    }
}

impl BertForQuestionAnswering {
    /// Builds the model over `params` (every tensor of `schema::parameter_shapes`, checked),
    /// running as `plan` says (where it can run: `RunPlan::check`).
    pub fn new(config: BertConfig, params: &Params, plan: &RunPlan) -> Result<Self> {
        plan.check()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        params.check(&config)?;
        let b = Builder {
            params,
            plan,
            eps: config.layer_norm_eps,
        };
        let embeddings = b.embeddings(&config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|l| b.layer(&config, l))
            .collect::<Result<_>>()?;
        let qa_outputs = b.linear(schema::QA_OUTPUTS)?;
        Ok(BertForQuestionAnswering {
            config,
            plan: plan.clone(),
            embeddings,
            layers,
            qa_outputs,
        })
    }

    /// How this model runs.
    pub fn plan(&self) -> &RunPlan {
        &self.plan
    }

    /// The device the parameters live on (batches must be made there).
    pub fn device(&self) -> &candle_core::Device {
        &self.plan.device
    }

    /// Start and end logits, each `[batch, len]`. `dropout`: Some in training.
    pub fn forward(
        &self,
        batch: &Batch,
        mut dropout: Option<&mut DropoutRng>,
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
        let mut x = maybe_dropout(e.norm.forward(&x)?, dropout.as_deref_mut(), e.dropout)?;
        let mask = AttentionMask::new(&batch.attention_mask, self.plan.attention)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, dropout.as_deref_mut())?;
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
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let probs_dropout = dropout
            .as_deref_mut()
            .and_then(|rng| rng.next(self.attention_dropout));
        let context = match mask {
            AttentionMask::Host(host) => {
                let core =
                    AttentionCore::new(self.heads, host.clone(), probs_dropout, self.precision);
                match self.core {
                    Kernel::FusedForwardOnly => qkv.apply_op1_no_bwd(&core)?,
                    _ => core.forward(&qkv)?,
                }
            }
            AttentionMask::Additive(additive) => {
                let kernel = self.softmax;
                let softmax = |s: &Tensor| softmax(s, kernel);
                attention::composed(&qkv, self.heads, additive, probs_dropout, softmax)?
            }
        };
        let dropout = dropout.and_then(|rng| rng.next(self.hidden_dropout));
        self.norm
            .forward_residual(&self.output.forward(&context)?, x, dropout)
    }
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let attended = self.attention.forward(x, mask, dropout.as_deref_mut())?;
        let hidden = gelu(&self.intermediate.forward(&attended)?, self.gelu)?;
        let dropout = dropout.and_then(|rng| rng.next(self.hidden_dropout));
        self.norm
            .forward_residual(&self.output.forward(&hidden)?, &attended, dropout)
    }
}
