//! A dense layer `y = x W^T + b` as one CPU op. Composed from candle ops it is a transpose
//! node, a matmul into a zeroed buffer and a broadcast add; in backward the weight gradient
//! then comes out transposed and is added into a fresh zeroed tensor through candle's strided
//! (one-thread) path, and the bias gradient is a strided one-thread reduction. Here the
//! GEMM adds the bias where it stores its first block of k (`Start::Row`); backward gives `dW` in
//! `W`'s own layout from one GEMM, `dx` from another, `db` from parallel fixed-range sums.
//! All three GEMMs run in the op's `Precision`.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, last_dim, part_rows, written_by, PARTS};
#[cfg(target_arch = "x86_64")]
use crate::matmul::PackedRhs;
use crate::matmul::{Gemm, Mat, Start, Threads};
use crate::precision::Precision;

/// `x [..., in] W^T + b` → `[..., out]` as one differentiable op (CPU tensors), as `op` says.
/// Any leading dimensions are rows of one GEMM, so the caller needs no reshape (each is a
/// graph node whose backward is a zeros + add over the whole activation).
pub fn fused(x: &Tensor, weight: &Tensor, bias: &Tensor, op: &DenseOp) -> Result<Tensor> {
    x.contiguous()?.apply_op3(weight, bias, op.clone())
}

/// The same from candle ops: the reference, and what runs on a GPU.
pub fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

/// `(x [..., in], weight [out, in], bias [out])` → `[..., out]`.
#[derive(Debug, Clone)]
pub struct DenseOp {
    pub precision: Precision,
    /// In inference, the weight packed for our GEMM at the op's first forward and reused
    /// after (`None` inside where our kernel cannot run in this precision).
    #[cfg(target_arch = "x86_64")]
    packed: Option<Arc<OnceLock<Option<PackedRhs>>>>,
}

impl DenseOp {
    /// The op for training: each product packs the weight (it changes every step).
    pub fn new(precision: Precision) -> Self {
        DenseOp {
            precision,
            #[cfg(target_arch = "x86_64")]
            packed: None,
        }
    }

    /// The op for inference: the weight is packed once, at the first forward that runs on our
    /// kernel (as the GEMM reads it, `W^T`), so products of a few rows (one window) do not
    /// repack it each call. The weight must not change after that first forward.
    pub fn inference(precision: Precision) -> Self {
        DenseOp {
            precision,
            #[cfg(target_arch = "x86_64")]
            packed: Some(Arc::default()),
        }
    }
}

impl DenseOp {
    /// The weight (read as `W^T`, `k x n`) packed for `gemm`, in inference where our kernel
    /// runs a product of `rows` rows; packed at the first such call.
    ///
    /// # Safety
    /// `rhs` must cover `k x n` readable elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn packed_weight(
        &self,
        gemm: &Gemm,
        rows: usize,
        rhs: Mat,
        (k, n): (usize, usize),
    ) -> Option<&PackedRhs> {
        let cell = self
            .packed
            .as_ref()
            .filter(|_| gemm.uses_our_kernel(rows))?;
        // SAFETY: the caller's contract.
        let packed = cell.get_or_init(|| unsafe { PackedRhs::new(rhs, (k, n), self.precision) });
        packed.as_ref().filter(|p| p.shape() == (k, n))
    }

    /// Never packed off x86-64 (no kernel of ours there).
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn packed_weight(&self, _: &Gemm, _: usize, _: Mat, _: (usize, usize)) -> Option<()> {
        None
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
        let k = last_dim(l1);
        let rows = x.len() / k;
        let (n, k_w) = l2.shape().dims2()?;
        if k != k_w || b.len() != n {
            candle_core::bail!(
                "dense: x {:?}, weight {:?}, bias {}",
                l1.dims(),
                l2.dims(),
                b.len()
            );
        }
        let gemm = Gemm {
            precision: self.precision,
            threads: Threads::All,
            start: Start::Row(b),
        };
        let (lhs, rhs) = (Mat::rows(x.as_ptr(), k), Mat::rows(w.as_ptr(), k).t());
        // SAFETY: x is rows x k, W (read as W^T, k x n) n x k, y rows x n; the product writes
        // all of y (the start is a row, not y).
        let y = unsafe {
            written_by(rows * n, |y| {
                match self.packed_weight(&gemm, rows, rhs, (k, n)) {
                    #[cfg(target_arch = "x86_64")]
                    Some(packed) => gemm.run_packed(rows, y, n, lhs, packed),
                    _ => gemm.run((rows, n, k), y, n, lhs, rhs),
                }
            })
        };
        Ok((CpuStorage::F32(y), output_shape(l1, n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = weight.dim(0)?;
        let grad = grad.contiguous()?.reshape(((), n))?;
        let (x_rows, weight) = (x.detach().reshape(((), weight.dim(1)?))?, weight.detach());
        let product = |transpose_lhs| Product {
            precision: self.precision,
            transpose_lhs,
        };
        let dx = grad.apply_op2_no_bwd(&weight, &product(false))?;
        let dw = grad.apply_op2_no_bwd(&x_rows, &product(true))?;
        let db = grad.apply_op1_no_bwd(&ColumnPartialSums)?.sum(0)?;
        let dx = dx.reshape(x.shape())?;
        Ok((Some(dx), Some(dw), Some(db.reshape(bias.shape())?)))
    }
}

/// The input's shape with the last dimension `n`.
fn output_shape(x: &Layout, n: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    match dims.last_mut() {
        Some(last) => *last = n,
        None => dims.push(n),
    }
    Shape::from(dims)
}

/// `lhs · rhs` of two contiguous matrices (`lhs^T · rhs` when `transpose_lhs`), on all
/// threads in `precision`: the dense layer's backward products.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub precision: Precision,
    pub transpose_lhs: bool,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        let (a_rows, a_cols) = l1.shape().dims2()?;
        let (k, n) = l2.shape().dims2()?;
        let mut lhs = Mat::rows(a.as_ptr(), a_cols);
        let m = match self.transpose_lhs {
            true => {
                lhs = lhs.t();
                a_cols
            }
            false => a_rows,
        };
        if (if self.transpose_lhs { a_rows } else { a_cols }) != k {
            candle_core::bail!(
                "product: {:?} and {:?} (transpose {})",
                l1.dims(),
                l2.dims(),
                self.transpose_lhs
            );
        }
        let gemm = Gemm {
            precision: self.precision,
            threads: Threads::All,
            start: Start::Zero,
        };
        let rhs = Mat::rows(b.as_ptr(), n);
        // SAFETY: lhs is m x k, rhs k x n, out m x n, all inside their buffers; the product
        // writes all of out.
        let out = unsafe { written_by(m * n, |out| gemm.run((m, n, k), out, n, lhs, rhs)) };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `[rows, n]` → `[PARTS, n]`: sums of each of `PARTS` fixed row ranges.
#[derive(Debug, Clone, Copy)]
pub struct ColumnPartialSums;

impl CustomOp1 for ColumnPartialSums {
    fn name(&self) -> &'static str {
        "column-partial-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let n = last_dim(l);
        let rows = x.len() / n;
        let mut out = vec![0f32; PARTS * n];
        out.par_chunks_mut(n).enumerate().for_each(|(part, acc)| {
            for r in part_rows(part, rows) {
                for (a, &v) in acc.iter_mut().zip(&x[r * n..(r + 1) * n]) {
                    *a += v;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((PARTS, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_grads_close, max_diff, probe_grads, wave};
    use candle_core::{Device, Var};

    fn values(n: usize, seed: f32) -> Vec<f32> {
        wave(n, seed, 0.417, 1.0)
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
        let y = fused(xt, wt, bt, &DenseOp::new(Precision::F32)).unwrap();
        let reference = composed(xt, wt, bt).unwrap();
        assert!(max_diff(&y, &reference) < 1e-5);
        let (g, r) = (probe_grads(&y, &probe), probe_grads(&reference, &probe));
        assert_grads_close(&g, &r, &[("x", &x), ("weight", &w), ("bias", &b)], 1e-4);
        let inference = DenseOp::inference(Precision::F32);
        for _ in 0..2 {
            let packed = xt.apply_op3_no_bwd(wt, bt, &inference).unwrap();
            assert!(
                max_diff(&packed, &reference) < 1e-5,
                "with the weight packed once"
            );
        }
    }

    /// In bf16 the output is the composed one of bf16-rounded inputs (up to f32 summation),
    /// and each gradient the composed one within bf16's rounding of its two GEMM inputs.
    #[test]
    fn bf16_dense_matches_the_composed_version_of_rounded_inputs() {
        if !crate::precision::bf16_gemm_supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the bf16 GEMM kernel cannot run)");
            return;
        }
        let dev = Device::Cpu;
        let (rows, k, n) = (67, 29, 41);
        let rounded = |v: Vec<f32>| v.into_iter().map(crate::bf16::round).collect::<Vec<_>>();
        let x = Var::from_vec(rounded(values(rows * k, 0.1)), (rows, k), &dev).unwrap();
        let w = Var::from_vec(rounded(values(n * k, 1.2)), (n, k), &dev).unwrap();
        let b = Var::from_vec(values(n, 2.3), n, &dev).unwrap();
        let probe = Tensor::from_vec(rounded(values(rows * n, 3.4)), (rows, n), &dev).unwrap();
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let y = fused(xt, wt, bt, &DenseOp::new(Precision::Bf16)).unwrap();
        let reference = composed(xt, wt, bt).unwrap();
        assert!(max_diff(&y, &reference) < 1e-5);
        let inference = DenseOp::inference(Precision::Bf16);
        for _ in 0..2 {
            let packed = xt.apply_op3_no_bwd(wt, bt, &inference).unwrap();
            assert!(
                max_diff(&packed, &reference) < 1e-5,
                "with the weight packed once"
            );
        }
        // The probe is bf16 already; the upstream gradient of a sum-of-products is exactly it.
        let (g, r) = (probe_grads(&y, &probe), probe_grads(&reference, &probe));
        assert_grads_close(&g, &r, &[("x", &x), ("weight", &w), ("bias", &b)], 1e-4);
    }
}
