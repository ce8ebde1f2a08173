//! A dense layer `y = x W^T + b` as one CPU op. Composed from candle ops it is a transpose
//! node, a matmul into a zeroed buffer and a broadcast add; in backward the weight gradient
//! then comes out transposed and is added into a fresh zeroed tensor through candle's strided
//! (one-thread) path, and the bias gradient is a strided one-thread reduction. Here the
//! output is filled with the bias and the GEMM accumulates onto it; backward gives `dW` in
//! `W`'s own layout from one GEMM, `dx` from another, `db` from parallel fixed-range sums.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

use crate::fused::{contiguous_f32, ColumnPartialSums};

/// `(x [rows, in], weight [out, in], bias [out])` → `[rows, out]`.
#[derive(Debug, Clone, Copy)]
pub struct DenseOp;

fn parallelism() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
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
        let w = contiguous_f32(s2, l2, self.name())?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let (rows, k) = l1.shape().dims2()?;
        let (n, k_w) = l2.shape().dims2()?;
        if k != k_w || b.len() != n {
            candle_core::bail!(
                "dense: x {:?}, weight {:?}, bias {}",
                l1.dims(),
                l2.dims(),
                b.len()
            );
        }
        // Each row starts as the bias; the GEMM adds x W^T onto it.
        let mut y = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        // SAFETY: x is rows x k, W (read as W^T, k x n) n x k, y rows x n, all contiguous.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (x, weight) = (x.detach(), weight.detach());
        let dx = grad.matmul(&weight)?;
        let dw = grad.t()?.matmul(&x)?;
        let db = grad.apply_op1_no_bwd(&ColumnPartialSums)?.sum(0)?;
        Ok((Some(dx), Some(dw), Some(db.reshape(bias.shape())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.417 + seed).sin()).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Output and every gradient equal the composed `x W^T + b`'s.
    #[test]
    fn dense_matches_the_composed_version() {
        let dev = Device::Cpu;
        let (rows, k, n) = (67, 29, 41);
        let x = Var::from_vec(values(rows * k, 0.1), (rows, k), &dev).unwrap();
        let w = Var::from_vec(values(n * k, 1.2), (n, k), &dev).unwrap();
        let b = Var::from_vec(values(n, 2.3), n, &dev).unwrap();
        let probe = Tensor::from_vec(values(rows * n, 3.4), (rows, n), &dev).unwrap();
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let fused = xt.apply_op3(wt, bt, DenseOp).unwrap();
        let composed = xt
            .matmul(&wt.t().unwrap())
            .unwrap()
            .broadcast_add(bt)
            .unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (g, r) = (grads(&fused), grads(&composed));
        for v in [&x, &w, &b] {
            let (a, want) = (g.get(v.as_tensor()).unwrap(), r.get(v.as_tensor()).unwrap());
            assert_eq!(a.dims(), want.dims());
            assert!(max_diff(a, want) < 1e-4, "{}", max_diff(a, want));
        }
    }
}
