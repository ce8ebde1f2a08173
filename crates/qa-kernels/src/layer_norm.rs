//! LayerNorm over the last dimension with its own backward (candle-nn's fused kernel has
//! none). Composed from candle ops a LayerNorm is ~9 kernels forward and ~20 backward, each
//! a full pass over the activations and, on a GPU, a launch; fused, it is one pass forward and
//! two backward, parallel over rows on the CPU, a block per row on a GPU (`layer_norm.cu`).
//!
//! The backward returns one packed tensor, `[rows + 2 * PARTS, dim]`: the input gradient,
//! then `PARTS` partial sums each of the weight and bias gradients over fixed row ranges
//! (summed by one reduction afterwards), so the result does not depend on the thread count or
//! the device's scheduling.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, part_rows, PARTS};
use crate::vmath::{layer_norm_grad_means, row_stats};

/// Fused, differentiable LayerNorm: `y = (x - mean) / sqrt(var + eps) * weight + bias`.
pub fn fused(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(weight, bias, LayerNormOp { eps })
}

/// candle-nn's kernel: the same forward, no backward (inference).
pub fn forward_only(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32)
}

/// Composed from candle ops (biased variance, as torch): the reference the fused op is tested
/// against.
pub fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormOp {
    pub eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let (w, b) = (
            contiguous_f32(s2, l2, self.name())?,
            contiguous_f32(s3, l3, self.name())?,
        );
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(yr, xr)| {
                let (mean, rstd) = row_stats(xr, self.eps);
                for j in 0..d {
                    yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::forward(self.eps, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rows = x.elem_count() / weight.elem_count();
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, PARTS)?.sum(0)?;
        let db = packed.narrow(0, rows + PARTS, PARTS)?.sum(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// LayerNorm's backward: (x, weight, grad of y) → packed `[rows + 2 * PARTS, dim]`.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormGrad {
    pub eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let (w, g) = (
            contiguous_f32(s2, l2, self.name())?,
            contiguous_f32(s3, l3, self.name())?,
        );
        let d = w.len();
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2 * PARTS) * d];
        let (dx, partials) = out.split_at_mut(rows * d);
        let (dw, db) = partials.split_at_mut(PARTS * d);
        dx.par_chunks_mut(d)
            .zip(x.par_chunks(d).zip(g.par_chunks(d)))
            .for_each(|(dxr, (xr, gr))| {
                let (mean, rstd) = row_stats(xr, self.eps);
                // dx is written with x's normalised row first, then overwritten.
                for j in 0..d {
                    dxr[j] = (xr[j] - mean) * rstd;
                }
                let (a, b) = layer_norm_grad_means(gr, w, dxr);
                for j in 0..d {
                    dxr[j] = rstd * (gr[j] * w[j] - a - dxr[j] * b);
                }
            });
        dw.par_chunks_mut(d)
            .zip(db.par_chunks_mut(d))
            .enumerate()
            .for_each(|(part, (dwp, dbp))| {
                for r in part_rows(part, rows) {
                    let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for j in 0..d {
                        dwp[j] += gr[j] * ((xr[j] - mean) * rstd);
                        dbp[j] += gr[j];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((rows + 2 * PARTS, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::backward(self.eps, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The CUDA launches of `layer_norm.cu`.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr};
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::cpu::PARTS;
    use crate::cuda::{
        input, launch, output, storage,
        Arg::{Float, Int, Ptr},
        Module,
    };

    const MODULE: Module = Module {
        name: "squad_qa_layer_norm",
        source: concat!(
            include_str!("block_reduce.cuh"),
            include_str!("layer_norm.cu")
        ),
    };
    /// Threads per block (a multiple of 32, as `block_reduce` needs).
    const THREADS: u32 = 128;

    /// Per row: mean and 1 / sqrt(var + eps), `[rows, 2]`.
    fn stats(x: &CudaStorage, at: u64, rows: usize, d: i32, eps: f32) -> Result<CudaSlice<f32>> {
        let (stats, stats_at) = output(x, 2 * rows)?;
        let args = [Ptr(at), Ptr(stats_at), Int(d), Float(eps)];
        // SAFETY: layer_norm_stats(x, stats, d, eps) reads rows x d floats at `at` and writes
        // both stats of each row (one block per row).
        unsafe {
            launch(
                x,
                MODULE,
                "layer_norm_stats",
                ((rows as u32, 1), THREADS),
                &args,
            )?
        };
        Ok(stats)
    }

    pub fn forward(
        eps: f64,
        (xs, xl): (&CudaStorage, &Layout),
        (ws, wl): (&CudaStorage, &Layout),
        (bs, bl): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let d = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / d.max(1);
        let (x, w, b) = (input(xs, xl)?, input(ws, wl)?, input(bs, bl)?);
        let (d32, eps) = (d as i32, eps as f32);
        let stats = stats(xs, x, rows, d32, eps)?;
        let stats_at = stats.device_ptr(&xs.device.cuda_stream()).0;
        let (y, y_at) = output(xs, rows * d)?;
        let args = [Ptr(x), Ptr(stats_at), Ptr(w), Ptr(b), Ptr(y_at), Int(d32)];
        // SAFETY: layer_norm_apply(x, stats, w, b, y, d) reads rows x d of x, the row stats,
        // d of w and b, and writes all rows x d of y (one block per row).
        unsafe {
            launch(
                xs,
                MODULE,
                "layer_norm_apply",
                ((rows as u32, 1), THREADS),
                &args,
            )?
        };
        drop(stats); // freed in stream order, after the kernels that read it
        Ok((storage(y, xs), xl.shape().clone()))
    }

    pub fn backward(
        eps: f64,
        (xs, xl): (&CudaStorage, &Layout),
        (ws, wl): (&CudaStorage, &Layout),
        (gs, gl): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let d = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / d.max(1);
        let (x, w, g) = (input(xs, xl)?, input(ws, wl)?, input(gs, gl)?);
        let (d32, eps) = (d as i32, eps as f32);
        let stats = stats(xs, x, rows, d32, eps)?;
        let stats_at = stats.device_ptr(&xs.device.cuda_stream()).0;
        let (out, dx) = output(xs, (rows + 2 * PARTS) * d)?;
        let dw = dx + 4 * (rows * d) as u64;
        let db = dx + 4 * ((rows + PARTS) * d) as u64;
        let args = [Ptr(x), Ptr(stats_at), Ptr(w), Ptr(g), Ptr(dx), Int(d32)];
        // SAFETY: layer_norm_grad_input(x, stats, w, g, dx, d) reads rows x d of x and g and
        // writes the first rows x d of `out` (one block per row).
        unsafe {
            launch(
                xs,
                MODULE,
                "layer_norm_grad_input",
                ((rows as u32, 1), THREADS),
                &args,
            )?
        };
        let col_blocks = (d as u32).div_ceil(THREADS);
        let args = [
            Ptr(x),
            Ptr(stats_at),
            Ptr(g),
            Ptr(dw),
            Ptr(db),
            Int(rows as i32),
            Int(d32),
            Int(PARTS as i32),
        ];
        let grid = ((col_blocks, PARTS as u32), THREADS);
        // SAFETY: layer_norm_grad_params(x, stats, g, dw, db, rows, d, parts) on a
        // (ceil(d / THREADS), PARTS) grid writes the PARTS x d partial sums each of dw and db,
        // the remaining 2 x PARTS x d elements of `out`.
        unsafe { launch(xs, MODULE, "layer_norm_grad_params", grid, &args)? };
        drop(stats);
        Ok((storage(out, xs), Shape::from((rows + 2 * PARTS, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_finite_differences, assert_grads_close, flat, max_diff, probe_grads, values,
    };
    use candle_core::{Device, Var};

    /// Forward and every gradient of the fused LayerNorm equal the composed one's.
    #[test]
    fn layer_norm_matches_the_composed_version_forward_and_backward() {
        let dev = Device::Cpu;
        let (rows, d) = (70, 48); // more rows than PARTS, not a multiple of it
        let x = Var::from_vec(values(rows * d, 0.3), (2, rows / 2, d), &dev).unwrap();
        let w = Var::from_vec(values(d, 1.7), d, &dev).unwrap();
        let b = Var::from_vec(values(d, 2.9), d, &dev).unwrap();
        let probe = Tensor::from_vec(values(rows * d, 5.1), (2, rows / 2, d), &dev).unwrap();
        let y_ref = composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        let y = fused(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        assert!(
            max_diff(&y, &y_ref) < 1e-5,
            "forward {}",
            max_diff(&y, &y_ref)
        );
        let (g, g_ref) = (probe_grads(&y, &probe), probe_grads(&y_ref, &probe));
        assert_grads_close(&g, &g_ref, &[("x", &x), ("weight", &w), ("bias", &b)], 1e-3);
    }

    /// A finite-difference check of the fused LayerNorm's input gradient (f64 arithmetic is
    /// not available to the op, so the step is large and the tolerance loose).
    #[test]
    fn layer_norm_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let d = 8;
        let xs = values(2 * d, 0.5);
        let w = Tensor::from_vec(values(d, 1.1), d, &dev).unwrap();
        let b = Tensor::from_vec(values(d, 2.2), d, &dev).unwrap();
        let probe = Tensor::from_vec(values(2 * d, 3.3), (2, d), &dev).unwrap();
        let loss = |v: &[f32]| -> f32 {
            let x = Tensor::from_vec(v.to_vec(), (2, d), &dev).unwrap();
            let y = fused(&x, &w, &b, 1e-5).unwrap();
            (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), (2, d), &dev).unwrap();
        let y = fused(x.as_tensor(), &w, &b, 1e-5).unwrap();
        let analytic = flat(probe_grads(&y, &probe).get(x.as_tensor()).unwrap());
        assert_finite_differences(loss, &xs, &analytic, 1e-2, 2e-2);
    }

    /// The composed reference itself: the definition on a hand-computed row, and gradients
    /// for the weight and the input (the LayerNorm trap: a kernel without backward).
    #[test]
    fn composed_layer_norm_matches_definition_and_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 3., 4., -1., 0., 1., 5.], (2, 4), &dev).unwrap();
        let weight = Var::from_vec(vec![1f32, 2., 1., 1.], 4, &dev).unwrap();
        let bias = Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
        let y = composed(x.as_tensor(), weight.as_tensor(), &bias, 1e-12).unwrap();
        let row: Vec<f32> = y.get(0).unwrap().to_vec1().unwrap();
        let sd = (1.25f32).sqrt();
        let want = [-1.5 / sd, 2.0 * -0.5 / sd, 0.5 / sd, 1.5 / sd];
        for (a, b) in row.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{row:?}");
        }
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(weight.as_tensor()).is_some(),
            "weight gets a gradient"
        );
        assert!(grads.get(x.as_tensor()).is_some());
    }
}
