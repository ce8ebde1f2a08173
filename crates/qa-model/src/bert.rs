//! HF `BertForQuestionAnswering` in candle: embeddings (word + position + token type,
//! LayerNorm, dropout), encoder layers (self-attention with the padding mask, GELU (erf),
//! LayerNorm), and `qa_outputs = Linear(hidden, 2)` giving start/end logits. Each op runs the
//! kernel the model's `RunPlan` chose when it was built.

use candle_core::{Result, Tensor, D};
use qa_kernels::attention::{self, AttentionCore};
use qa_kernels::dense::DenseOp;
use qa_kernels::embedding::{self, EmbeddingSum};

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
    /// The word, position and token type tables, `[rows, hidden]` each.
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    /// Their sum: fused on the CPU.
    kernel: Kernel,
    pad_id: u32,
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

    fn embeddings(&self, c: &BertConfig) -> Result<Embeddings> {
        let table = |prefix: &str| self.tensor(&format!("{prefix}.weight"));
        Ok(Embeddings {
            word: table(schema::WORD_EMBEDDINGS)?,
            position: table(schema::POSITION_EMBEDDINGS)?,
            token_type: table(schema::TOKEN_TYPE_EMBEDDINGS)?,
            kernel: self.plan.embeddings,
            pad_id: c.pad_token_id,
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
        let x = e.sum(batch)?;
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

impl Embeddings {
    /// `word[id] + position[t] + token_type[type]` for each token of `batch`.
    fn sum(&self, batch: &Batch) -> Result<Tensor> {
        let tables = (&self.word, &self.position, &self.token_type);
        let (ids, types) = (&batch.input_ids, &batch.token_type_ids);
        let fused = || EmbeddingSum::new(ids, types, self.pad_id);
        match self.kernel {
            Kernel::Fused => fused()?.forward(tables),
            Kernel::FusedForwardOnly => tables.0.apply_op3_no_bwd(tables.1, tables.2, &fused()?),
            _ => embedding::composed(tables, ids, types, self.pad_id),
        }
    }
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
