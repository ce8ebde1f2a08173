//! GELU (erf form, as BERT's `hidden_act: gelu`) with its backward, element-parallel, with
//! the vectorised erf of `vmath` (libm's `erff` is a scalar call). CPU only: elsewhere
//! candle's `gelu_erf` runs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, par_filled, CHUNK};

/// Fused, differentiable GELU (CPU tensors).
pub fn fused(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluOp)
}

/// GELU without a backward graph (inference), written over `x`, which nothing else may read
/// after (a dense layer's fresh output). Returns `x`.
pub fn in_place(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.inplace_op1(&GeluInPlace)?;
    Ok(x)
}

/// candle's GELU (erf): the reference, and what runs on a GPU.
pub fn composed(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// GELU (erf form) with vectorised erf (`crate::vmath`), element-parallel.
#[derive(Debug, Clone, Copy)]
pub struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let y = par_filled(x.len(), CHUNK, |r, y| crate::vmath::gelu(&x[r], y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// GELU over its input's own storage (`in_place`).
#[derive(Debug, Clone, Copy)]
pub struct GeluInPlace;

impl InplaceOp1 for GeluInPlace {
    fn name(&self) -> &'static str {
        "gelu-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (CpuStorage::F32(x), Some((start, end))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("{}: contiguous f32 only", self.name());
        };
        x[start..end]
            .par_chunks_mut(CHUNK)
            .for_each(crate::vmath::gelu_in_place);
        Ok(())
    }
}

/// GELU's backward: (x, grad of y) → grad of x.
#[derive(Debug, Clone, Copy)]
pub struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let dx = par_filled(x.len(), CHUNK, |r, dx| {
            crate::vmath::gelu_backward(&x[r.clone()], &g[r], dx)
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, values};
    use candle_core::{Device, Var};

    /// Forward and gradient of the fused GELU equal candle's `gelu_erf`'s.
    #[test]
    fn gelu_matches_candles_gelu_erf_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_vec(values(3 * 40_000, 0.4), (3, 40_000), &dev).unwrap();
        let probe = Tensor::from_vec(values(3 * 40_000, 2.7), (3, 40_000), &dev).unwrap();
        let fused = x.as_tensor().apply_op1(GeluOp).unwrap();
        let reference = x.as_tensor().gelu_erf().unwrap();
        assert!(max_diff(&fused, &reference) < 1e-6);
        let grad = |y: &Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        let (a, r) = (grad(&fused), grad(&reference));
        assert!(max_diff(&a, &r) < 1e-5, "grad {}", max_diff(&a, &r));
        let over = x.as_tensor().copy().unwrap();
        let y = in_place(&over).unwrap();
        let want: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
        for t in [&y, &over] {
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want,
                "in place"
            );
        }
    }
}
