//! The model's layers over `qa_kernels`, each with the kernel its `RunPlan` chose when the
//! model was built: on the CPU our fused ops (each with its backward), elsewhere the composed
//! candle versions, and for inference candle-nn's forward-only kernels where they exist.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use qa_kernels::dropout::PhiloxDropout;
use qa_kernels::residual_norm::{self, ResidualNorm};
use qa_kernels::{attention, dense, gelu, layer_norm, softmax};

use crate::plan::Kernel;

/// `y = x W^T + b` over the last dimension. Unlike candle-nn's `Linear` (one matmul per
/// batch row against a broadcast weight), the leading dimensions are flattened into one
/// large matmul, which the gemm kernel parallelises far better.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, as torch stores it.
    pub weight: Tensor,
    pub bias: Tensor,
    pub kernel: Kernel,
    /// The fused kernel's op: its precision, and in inference the weight packed once.
    pub op: dense::DenseOp,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.kernel {
            // Our op takes any leading dimensions as rows: no reshape nodes in the graph.
            Kernel::Fused | Kernel::FusedForwardOnly => {
                dense::fused(x, &self.weight, &self.bias, &self.op)
            }
            Kernel::Composed | Kernel::CandleForwardOnly => self.composed(x),
        }
    }

    /// candle's matmul over the leading dimensions flattened into rows.
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().expect("at least one dimension");
        let rows = x.elem_count() / in_dim.max(1);
        let y = dense::composed(&x.reshape((rows, in_dim))?, &self.weight, &self.bias)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(shape)
    }
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (biased
/// variance, as torch).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    pub kernel: Kernel,
    /// The kernel of `forward_residual`.
    pub residual: Kernel,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b, eps) = (&self.weight, &self.bias, self.eps);
        match self.kernel {
            Kernel::Fused | Kernel::FusedForwardOnly => layer_norm::fused(x, w, b, eps),
            Kernel::Composed => layer_norm::composed(x, w, b, eps),
            Kernel::CandleForwardOnly => layer_norm::forward_only(x, w, b, eps),
        }
    }

    /// `LayerNorm(dropout(h) + residual)`, the end of each sub-layer (`dropout`: training).
    /// Inference on the CPU writes the result over `h` (a dense layer's fresh output).
    pub fn forward_residual(
        &self,
        h: &Tensor,
        residual: &Tensor,
        dropout: Option<PhiloxDropout>,
    ) -> Result<Tensor> {
        let norm = (&self.weight, &self.bias);
        match self.residual {
            Kernel::Fused => {
                residual_norm::fused(h, residual, norm, ResidualNorm::new(self.eps, dropout))
            }
            Kernel::FusedForwardOnly if dropout.is_none() => {
                residual_norm::in_place(h, residual, norm, self.eps)
            }
            _ => {
                let dropped = match dropout {
                    Some(d) => d.forward(h)?,
                    None => h.clone(),
                };
                self.forward(&(dropped + residual)?)
            }
        }
    }
}

/// Softmax over the last dimension with `kernel`.
pub fn softmax(x: &Tensor, kernel: Kernel) -> Result<Tensor> {
    match kernel {
        Kernel::Fused | Kernel::FusedForwardOnly => softmax::fused(x),
        Kernel::Composed => softmax::composed(x),
        Kernel::CandleForwardOnly => softmax::forward_only(x),
    }
}

/// GELU (erf) with `kernel`; forward-only on the CPU it writes over `x` (a dense layer's
/// fresh output).
pub fn gelu(x: &Tensor, kernel: Kernel) -> Result<Tensor> {
    match kernel {
        Kernel::Fused => gelu::fused(x),
        Kernel::FusedForwardOnly => gelu::in_place(x),
        Kernel::Composed | Kernel::CandleForwardOnly => gelu::composed(x),
    }
}

/// The padding mask of a batch as the attention core of the plan takes it.
#[derive(Debug, Clone)]
pub enum AttentionMask {
    /// For the fused CPU core: additive values `[batch * len]` on the host.
    Host(Arc<[f32]>),
    /// For the composed core: additive `[batch, 1, 1, len]` where the batch lives.
    Additive(Tensor),
}

impl AttentionMask {
    /// From the 0/1 mask `[batch, len]`; `core` is the attention's kernel.
    pub fn new(attention_mask: &Tensor, core: Kernel) -> Result<Self> {
        let additive = attention::additive_mask(attention_mask)?;
        Ok(match core {
            Kernel::Fused | Kernel::FusedForwardOnly => {
                AttentionMask::Host(additive.flatten_all()?.to_vec1::<f32>()?.into())
            }
            Kernel::Composed | Kernel::CandleForwardOnly => AttentionMask::Additive(additive),
        })
    }
}
