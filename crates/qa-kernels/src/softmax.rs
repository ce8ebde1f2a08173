//! Softmax over the last dimension with its own backward (candle-nn's fused kernel has none):
//! one pass per row forward, one backward from the saved output; on a GPU a block per row
//! (`softmax.cu`). The attention's softmax on the CPU is fused into `attention` instead.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, last_dim};

/// Fused, differentiable softmax over the last dimension.
pub fn fused(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

/// candle-nn's kernel: the same forward, no backward (inference).
pub fn forward_only(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax_last_dim(&x.contiguous()?)
}

/// Composed from candle ops (the fused op's reference); the max is subtracted (and detached)
/// for stability.
pub fn composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Softmax over the last dimension (rows of any leading shape).
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let d = last_dim(l);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(yr, xr)| {
                let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                yr.iter_mut().for_each(|o| *o /= sum);
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::forward(s, l)
    }

    /// `dx = y * (g - sum(g * y))` per row, from the saved output.
    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// Softmax's backward: (y, grad of y) → grad of x.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        let d = last_dim(l1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(d)
            .zip(y.par_chunks(d).zip(g.par_chunks(d)))
            .for_each(|(dr, (yr, gr))| {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for j in 0..d {
                    dr[j] = yr[j] * (gr[j] - dot);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::backward((s1, l1), (s2, l2))
    }
}

/// The CUDA launches of `softmax.cu`.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::cpu::last_dim;
    use crate::cuda::{
        input, launch, output, storage,
        Arg::{Int, Ptr},
        Module,
    };

    const MODULE: Module = Module {
        name: "squad_qa_softmax",
        source: concat!(include_str!("block_reduce.cuh"), include_str!("softmax.cu")),
    };
    /// Threads per block (a multiple of 32, as `block_reduce` needs).
    const THREADS: u32 = 128;

    pub fn forward(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let d = last_dim(l);
        let rows = l.shape().elem_count() / d;
        let x = input(s, l)?;
        let (y, y_at) = output(s, rows * d)?;
        let args = [Ptr(x), Ptr(y_at), Int(d as i32)];
        // SAFETY: softmax_forward(x, y, d) reads and writes rows x d floats, a block per row.
        unsafe {
            launch(
                s,
                MODULE,
                "softmax_forward",
                ((rows as u32, 1), THREADS),
                &args,
            )?
        };
        Ok((storage(y, s), l.shape().clone()))
    }

    pub fn backward(
        (ys, yl): (&CudaStorage, &Layout),
        (gs, gl): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let d = last_dim(yl);
        let rows = yl.shape().elem_count() / d;
        let (y, g) = (input(ys, yl)?, input(gs, gl)?);
        let (dx, dx_at) = output(ys, rows * d)?;
        let args = [Ptr(y), Ptr(g), Ptr(dx_at), Int(d as i32)];
        // SAFETY: softmax_backward(y, g, dx, d) reads rows x d of y and g, writes rows x d of
        // dx, a block per row.
        unsafe {
            launch(
                ys,
                MODULE,
                "softmax_backward",
                ((rows as u32, 1), THREADS),
                &args,
            )?
        };
        Ok((storage(dx, ys), yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, values};
    use candle_core::{DType, Device, Var};

    /// Forward and input gradient of the fused softmax equal the composed one's, with an
    /// additive mask of f32::MIN as attention uses it.
    #[test]
    fn softmax_matches_the_composed_version_forward_and_backward() {
        let dev = Device::Cpu;
        let mut v = values(3 * 4 * 37, 0.9);
        v[5] = f32::MIN;
        v[40] = f32::MIN;
        let x = Var::from_vec(v, (3, 4, 37), &dev).unwrap();
        let probe = Tensor::from_vec(values(3 * 4 * 37, 4.2), (3, 4, 37), &dev).unwrap();
        let y_ref = composed(x.as_tensor()).unwrap();
        let y = fused(x.as_tensor()).unwrap();
        assert!(max_diff(&y, &y_ref) < 1e-6);
        let sums: Vec<f32> = y
            .sum(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        let g_ref = (&y_ref * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, r) = (
            g.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(a, r) < 1e-5, "grad {}", max_diff(a, r));
        assert_eq!(a.dtype(), DType::F32);
    }

    #[test]
    fn composed_rows_sum_to_one_and_masked_entries_vanish() {
        let x = Tensor::new(&[[1f32, 2., 3.], [0., f32::MIN, 0.]], &Device::Cpu).unwrap();
        let s: Vec<Vec<f32>> = composed(&x).unwrap().to_vec2().unwrap();
        assert!((s[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(s[1], vec![0.5, 0.0, 0.5]);
    }
}
