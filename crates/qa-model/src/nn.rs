//! Building blocks with a backward pass. candle-nn's fused LayerNorm and softmax have none
//! (training would silently freeze everything below them) and its dropout draws from
//! candle's unseedable RNG: training uses our fused ops (`crate::fused`, each with its
//! backward), the composed versions here are their tested reference, and dropout masks come
//! from a seeded counter-based generator (`crate::dropout`).

use candle_core::{DType, Result, Tensor, D};

use crate::dropout::PhiloxDropout;

/// `y = x W^T + b` over the last dimension. Unlike candle-nn's `Linear` (one matmul per
/// batch row against a broadcast weight), the leading dimensions are flattened into one
/// large matmul, which the gemm kernel parallelises far better.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, as torch stores it.
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().expect("at least one dimension");
        let rows = x.elem_count() / in_dim.max(1);
        let x = x.reshape((rows, in_dim))?;
        let y = if x.device().is_cpu() {
            // One op with its own backward (`crate::dense`); it has no CUDA kernel.
            x.contiguous()?
                .apply_op3(&self.weight, &self.bias, crate::dense::DenseOp)?
        } else {
            x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?
        };
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
}

impl LayerNorm {
    /// The fused LayerNorm with its own backward (`crate::fused`) for training; candle-nn's
    /// kernel (no backward) for `inference`.
    pub fn forward_with(&self, x: &Tensor, inference: bool) -> Result<Tensor> {
        if inference {
            candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
        } else if crate::fused::enabled_on(x.device()) {
            crate::fused::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else {
            self.forward(x)
        }
    }

    /// Composed from candle ops: the reference the fused op is tested against.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension: fused with its own backward (`crate::fused`) for
/// training; candle-nn's kernel (no backward) for `inference`.
pub fn softmax_last_dim_with(x: &Tensor, inference: bool) -> Result<Tensor> {
    if inference {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)
    } else if crate::fused::enabled_on(x.device()) {
        crate::fused::softmax_last_dim(x)
    } else {
        softmax_last_dim(x)
    }
}

/// Composed softmax (the fused op's reference); the max is subtracted (and detached) for stability.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Dropout masks for training from a counter-based generator (`crate::dropout`): each call's
/// mask is a pure function of (seed, optimizer step, call number within the step, element),
/// the same on the CPU and a GPU, drawn in parallel where it is used and recomputed (not
/// stored) for backward. Its whole state is the step, so a run resumes from (seed, step).
#[derive(Debug, Clone)]
pub struct DropoutRng {
    seed: u64,
    step: u64,
    call: u64,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        DropoutRng {
            seed,
            step: 0,
            call: 0,
        }
    }

    /// Called before each optimizer step (0-based `step`).
    pub fn begin_step(&mut self, step: usize) {
        self.step = step as u64;
        self.call = 0;
    }

    /// Zeroes each element with probability `p`, scales the rest by 1 / (1 - p).
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self.next(p) {
            Some(op) => op.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// The next call's mask (None when `p` is 0), for an op that applies it itself.
    pub fn next(&mut self, p: f64) -> Option<PhiloxDropout> {
        if p <= 0.0 {
            return None;
        }
        let op = PhiloxDropout {
            seed: self.seed,
            // 2^20 calls per step (BERT-base makes 37), 2^44 steps.
            stream: (self.step << 20) | self.call,
            p: p as f32,
        };
        self.call += 1;
        Some(op)
    }
}

/// Applies dropout when training (`rng` is Some), else passes `x` through.
pub fn maybe_dropout(x: Tensor, rng: Option<&mut DropoutRng>, p: f64) -> Result<Tensor> {
    match rng {
        Some(rng) => rng.dropout(&x, p),
        None => Ok(x),
    }
}

/// Additive attention mask `[batch, 1, 1, len]`: 0 where attended, f32::MIN on padding (HF's
/// `finfo(float32).min`).
pub fn additive_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let (b, l) = attention_mask.dims2()?;
    let m = attention_mask.to_dtype(DType::F32)?;
    let masked = ((m.ones_like()? - &m)? * f32::MIN as f64)?;
    masked.reshape((b, 1, 1, l))
}

/// The additive mask for the composed attention and, on the CPU where the fused attention
/// core runs (it has no CUDA kernel), its host copy (`[batch * len]`).
#[derive(Debug, Clone)]
pub struct AttentionMask {
    pub additive: Tensor,
    pub host: Option<std::sync::Arc<[f32]>>,
}

impl AttentionMask {
    pub fn new(attention_mask: &Tensor) -> Result<Self> {
        let additive = additive_mask(attention_mask)?;
        let host = if attention_mask.device().is_cpu() {
            Some(additive.flatten_all()?.to_vec1::<f32>()?.into())
        } else {
            None
        };
        Ok(AttentionMask { additive, host })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_matches_definition_and_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 3., 4., -1., 0., 1., 5.], (2, 4), &dev).unwrap();
        let ln = LayerNorm {
            weight: Var::from_vec(vec![1f32, 2., 1., 1.], 4, &dev)
                .unwrap()
                .as_tensor()
                .clone(),
            bias: Tensor::zeros(4, DType::F32, &dev).unwrap(),
            eps: 1e-12,
        };
        let y = ln.forward(x.as_tensor()).unwrap();
        let row: Vec<f32> = y.get(0).unwrap().to_vec1().unwrap();
        let sd = (1.25f32).sqrt();
        let want = [-1.5 / sd, 2.0 * -0.5 / sd, 0.5 / sd, 1.5 / sd];
        for (a, b) in row.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{row:?}");
        }
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(&ln.weight).is_some(),
            "LayerNorm weight gets a gradient"
        );
        assert!(grads.get(x.as_tensor()).is_some());
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let x = Tensor::new(&[[1f32, 2., 3.], [0., f32::MIN, 0.]], &Device::Cpu).unwrap();
        let s: Vec<Vec<f32>> = softmax_last_dim(&x).unwrap().to_vec2().unwrap();
        assert!((s[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(s[1], vec![0.5, 0.0, 0.5]);
    }

    #[test]
    fn dropout_is_seeded_per_step_and_call() {
        let x = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
        let draw = |rng: &mut DropoutRng| -> Vec<Vec<f32>> {
            rng.dropout(&x, 0.5).unwrap().to_vec2().unwrap()
        };
        let mut a = DropoutRng::new(7);
        a.begin_step(3);
        let (first, second) = (draw(&mut a), draw(&mut a));
        assert_ne!(first, second, "each call its own mask");
        // A fresh generator at the same step (a resumed run) draws the same masks.
        let mut resumed = DropoutRng::new(7);
        resumed.begin_step(3);
        assert_eq!(draw(&mut resumed), first);
        assert_eq!(draw(&mut resumed), second);
        resumed.begin_step(4);
        assert_ne!(draw(&mut resumed), first, "another step, other masks");
        let kept = first.iter().flatten().filter(|&&v| v == 2.0).count();
        assert!(
            (80..180).contains(&kept),
            "about half kept and scaled by 2: {kept}"
        );
    }
}
