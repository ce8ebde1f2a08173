//! The end of each BERT sub-layer, `LayerNorm(dropout(h) + residual)`, as one CPU op with its
//! backward. Composed it is three graph nodes (dropout, add, LayerNorm): two more passes over
//! the activations forward, the dropout mask redrawn from Philox in backward, and for each of
//! the extra graph edges candle's gradient bookkeeping (a zeroed tensor plus an add, a full
//! pass each). Fused, forward is one pass per row; it keeps the normalised rows, their
//! `1 / std` and the mask as bits, so backward is one pass per row plus the weight and bias
//! partial sums, and gives the gradients of `h` and of `residual` at once.
//!
//! The arithmetic is that of the three ops it replaces, operation for operation: the mask of
//! `PhiloxDropout` (`MaskLayout::Rows`, the same counters), `h * multiplier + residual`, then
//! `LayerNormOp`'s forward and `LayerNormGrad`'s backward, so a step is bit-identical to
//! theirs (`composed` below, from candle ops, rounds LayerNorm differently).

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, InplaceOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, part_rows, zeroed, PARTS};
use crate::dropout::{pack_bits, unpack_bits, MaskLayout, PhiloxDropout, Runs};
use crate::layer_norm;
use crate::vmath::{layer_norm_grad_means, row_stats};

/// Rows per parallel task (the mask is drawn for a task's rows at once).
const TASK_ROWS: usize = 16;

/// The LayerNorm's parameters, `weight` and `bias` (each `[dim]`).
pub type NormParams<'a> = (&'a Tensor, &'a Tensor);

/// `LayerNorm(dropout(h) + residual)` over the last dimension, differentiable (CPU tensors).
pub fn fused(h: &Tensor, residual: &Tensor, norm: NormParams, op: ResidualNorm) -> Result<Tensor> {
    let (h, residual) = (h.contiguous()?, residual.contiguous()?);
    h.apply_op3(&residual, &stacked(norm)?, op)
}

/// The same without a backward graph or dropout (inference), written over `h`: the dense
/// layer's output, which nothing else reads. Returns `h`.
pub fn in_place(h: &Tensor, residual: &Tensor, norm: NormParams, eps: f64) -> Result<Tensor> {
    let (h, residual) = (h.contiguous()?, residual.contiguous()?);
    h.inplace_op3(&residual, &stacked(norm)?, &ResidualNormInPlace { eps })?;
    Ok(h)
}

/// Composed from the separate ops: the reference the fused op is tested against.
pub fn composed(
    h: &Tensor,
    residual: &Tensor,
    (weight, bias): NormParams,
    op: &ResidualNorm,
) -> Result<Tensor> {
    let dropped = match op.dropout {
        Some(d) => d.forward(h)?,
        None => h.clone(),
    };
    layer_norm::composed(&(dropped + residual)?, weight, bias, op.eps)
}

/// `[2, dim]`: weight, then bias (a custom op takes three tensors; stacking the two small
/// ones is a node whose backward splits their gradient again).
fn stacked((weight, bias): NormParams) -> Result<Tensor> {
    Tensor::stack(&[weight, bias], 0)
}

/// `(h, residual, [weight; bias])` → `LayerNorm(dropout(h) + residual)`.
#[derive(Debug, Clone)]
pub struct ResidualNorm {
    pub eps: f64,
    pub dropout: Option<PhiloxDropout>,
    /// What backward reads, kept by the forward pass.
    saved: Arc<OnceLock<Saved>>,
}

/// The forward pass's per-row results that backward needs.
#[derive(Debug)]
struct Saved {
    /// `(x - mean) / std` of every row of `x = dropout(h) + residual`.
    normed: Vec<f32>,
    /// `1 / std` of every row.
    rstd: Vec<f32>,
    /// The dropout mask, one bit per element (empty without dropout).
    kept: Vec<u64>,
}

impl ResidualNorm {
    /// The op for training: it keeps what its backward needs.
    pub fn new(eps: f64, dropout: Option<PhiloxDropout>) -> Self {
        ResidualNorm {
            eps,
            dropout,
            saved: Arc::default(),
        }
    }

    /// One task's rows: the output `y`, the normalised rows, their `1 / std` and, with
    /// dropout, the mask of elements `first..` of the tensor as bits.
    fn forward_rows(
        &self,
        (h, residual): (&[f32], &[f32]),
        norm: (&[f32], &[f32]),
        mask: Option<(&Runs, u64)>,
        kept: &mut [u64],
        (y, normed, rstd): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        if let (Some(dropout), Some((runs, first))) = (self.dropout, mask) {
            let mut multipliers = vec![0f32; h.len()];
            dropout.fill_tensor(runs, first, &mut multipliers);
            for (((y, &r), &h), &m) in y.iter_mut().zip(residual).zip(h).zip(&multipliers) {
                *y = r + h * m;
            }
            pack_bits(&multipliers, kept);
        } else {
            y.iter_mut()
                .zip(residual)
                .zip(h)
                .for_each(|((y, &r), &h)| *y = r + h);
        }
        let d = norm.0.len();
        for ((row, normed), rstd) in y.chunks_mut(d).zip(normed.chunks_mut(d)).zip(rstd) {
            *rstd = normalize_row(row, norm, self.eps, Some(normed));
        }
    }
}

/// `row = LayerNorm(row)` with `norm`'s weight and bias in place; the normalised values
/// `(x - mean) / std` also into `normed` when given. Returns `1 / std`.
fn normalize_row(
    row: &mut [f32],
    (w, b): (&[f32], &[f32]),
    eps: f64,
    mut normed: Option<&mut [f32]>,
) -> f32 {
    let (mean, rstd) = row_stats(row, eps);
    for j in 0..row.len() {
        let n = (row[j] - mean) * rstd;
        if let Some(normed) = normed.as_deref_mut() {
            normed[j] = n;
        }
        row[j] = n * w[j] + b[j];
    }
    rstd
}

/// The shapes of `(h, residual, [weight; bias])`, checked: the LayerNorm's width.
fn checked_width(l1: &Layout, l2: &Layout, l3: &Layout) -> Result<usize> {
    let d = l3.dims().get(1).copied().unwrap_or(0);
    if l1.shape() != l2.shape()
        || l3.dims() != [2, d]
        || !l1.shape().elem_count().is_multiple_of(d.max(1))
    {
        candle_core::bail!(
            "residual-norm: h {:?}, residual {:?}, params {:?}",
            l1.dims(),
            l2.dims(),
            l3.dims()
        );
    }
    Ok(d)
}

impl CustomOp3 for ResidualNorm {
    fn name(&self) -> &'static str {
        "residual-norm"
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
        let (h, residual) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        let params = contiguous_f32(s3, l3, self.name())?;
        let d = checked_width(l1, l2, l3)?;
        let (w, b) = params.split_at(d);
        let rows = h.len() / d;
        let runs = match self.dropout {
            Some(_) => Some(Runs::of(l1.dims(), MaskLayout::Rows)?),
            None => None,
        };
        // Each task of TASK_ROWS rows keeps its mask in words of its own.
        let span = TASK_ROWS * d;
        let words = if runs.is_some() { span.div_ceil(64) } else { 1 };
        let n = h.len();
        let (mut y, mut normed, mut rstd) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(rows),
        );
        let mut kept = vec![0u64; rows.div_ceil(TASK_ROWS) * words];
        y.spare_capacity_mut()[..n]
            .par_chunks_mut(span)
            .zip(normed.spare_capacity_mut()[..n].par_chunks_mut(span))
            .zip(rstd.spare_capacity_mut()[..rows].par_chunks_mut(TASK_ROWS))
            .zip(kept.par_chunks_mut(words))
            .zip(h.par_chunks(span).zip(residual.par_chunks(span)))
            .enumerate()
            .for_each(|(t, ((((y, normed), rstd), kept), (h, residual)))| {
                let mask = runs.as_ref().map(|r| (r, (t * span) as u64));
                let out = (zeroed(y), zeroed(normed), zeroed(rstd));
                self.forward_rows((h, residual), (w, b), mask, kept, out);
            });
        // SAFETY: the tasks' chunks cover all three buffers, each chunk initialised (`zeroed`).
        unsafe {
            y.set_len(n);
            normed.set_len(n);
            rstd.set_len(rows);
        }
        // Each op runs forward once (a second forward would keep the first's).
        let _ = self.saved.set(Saved { normed, rstd, kept });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        h: &Tensor,
        _residual: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = &self.saved;
        if saved.get().is_none() {
            candle_core::bail!("residual-norm: backward of an op that never ran forward");
        }
        let d = params.dim(1)?;
        let rows = h.elem_count() / d;
        let grad_op = ResidualNormGrad {
            saved: saved.clone(),
            dropout: self.dropout,
        };
        let packed = grad
            .contiguous()?
            .apply_op2_no_bwd(&params.detach(), &grad_op)?;
        let dx = packed.narrow(0, 0, rows)?;
        let (dh, partials) = match self.dropout {
            Some(_) => (packed.narrow(0, rows, rows)?, 2 * rows),
            None => (dx.clone(), rows),
        };
        let dw = packed.narrow(0, partials, PARTS)?.sum(0)?;
        let db = packed.narrow(0, partials + PARTS, PARTS)?.sum(0)?;
        Ok((
            Some(dh.reshape(h.shape())?),
            Some(dx.reshape(h.shape())?),
            Some(Tensor::stack(&[dw, db], 0)?),
        ))
    }
}

/// `h = LayerNorm(h + residual)` in place (`in_place`): inference, with no dropout and nothing
/// kept for a backward pass, and no output buffer of its own.
#[derive(Debug, Clone, Copy)]
pub struct ResidualNormInPlace {
    pub eps: f64,
}

impl InplaceOp3 for ResidualNormInPlace {
    fn name(&self) -> &'static str {
        "residual-norm-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let d = checked_width(l1, l2, l3)?;
        let residual = contiguous_f32(s2, l2, self.name())?;
        let (w, b) = contiguous_f32(s3, l3, self.name())?.split_at(d);
        let (CpuStorage::F32(h), Some((start, end))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("{}: contiguous f32 h only", self.name());
        };
        let span = TASK_ROWS * d;
        h[start..end]
            .par_chunks_mut(span)
            .zip(residual.par_chunks(span))
            .for_each(|(y, residual)| {
                y.iter_mut().zip(residual).for_each(|(y, &r)| *y += r);
                for row in y.chunks_mut(d) {
                    normalize_row(row, (w, b), self.eps, None);
                }
            });
        Ok(())
    }
}

/// The backward: (grad of y, `[weight; bias]`) → packed `[rows (+ rows) + 2 * PARTS, dim]`:
/// the gradient of `x = dropout(h) + residual` (that of `residual`), with dropout the
/// gradient of `h` (the same masked), then the weight's and the bias's partial sums.
#[derive(Debug, Clone)]
struct ResidualNormGrad {
    saved: Arc<OnceLock<Saved>>,
    dropout: Option<PhiloxDropout>,
}

impl CustomOp2 for ResidualNormGrad {
    fn name(&self) -> &'static str {
        "residual-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s1, l1, self.name())?;
        let params = contiguous_f32(s2, l2, self.name())?;
        let saved = self.saved.get().expect("checked by bwd");
        let d = params.len() / 2;
        let w = &params[..d];
        let rows = g.len() / d;
        let input_grads = if self.dropout.is_some() { 2 } else { 1 };
        let len = (input_grads * rows + 2 * PARTS) * d;
        let mut out = Vec::with_capacity(len);
        let (dx, rest) = out.spare_capacity_mut()[..len].split_at_mut(rows * d);
        let (dh, partials) = rest.split_at_mut((input_grads - 1) * rows * d);
        let normed = &saved.normed;
        // The zip below covers all of dx only if the saved rows match the gradient's.
        assert_eq!((normed.len(), saved.rstd.len()), (g.len(), rows));
        dx.par_chunks_mut(d)
            .zip(g.par_chunks(d).zip(normed.par_chunks(d)))
            .zip(saved.rstd.par_iter())
            .for_each(|((dxr, (gr, nr)), &rstd)| {
                let dxr = zeroed(dxr);
                let (a, b) = layer_norm_grad_means(gr, w, nr);
                for j in 0..d {
                    dxr[j] = rstd * (gr[j] * w[j] - a - nr[j] * b);
                }
            });
        // SAFETY: the rows above covered dx, each initialised (`zeroed`).
        let dx = unsafe { &*(dx as *const [MaybeUninit<f32>] as *const [f32]) };
        if let Some(dropout) = self.dropout {
            let span = TASK_ROWS * d;
            let words = span.div_ceil(64);
            dh.par_chunks_mut(span)
                .zip(dx.par_chunks(span))
                .enumerate()
                .for_each(|(t, (dh, dx))| {
                    let dh = zeroed(dh);
                    unpack_bits(&saved.kept[t * words..][..words], dropout.scale(), dh);
                    dh.iter_mut().zip(dx).for_each(|(m, &g)| *m *= g);
                });
        }
        let partials = zeroed(partials);
        let (dw, db) = partials.split_at_mut(PARTS * d);
        dw.par_chunks_mut(d)
            .zip(db.par_chunks_mut(d))
            .enumerate()
            .for_each(|(part, (dwp, dbp))| {
                for r in part_rows(part, rows) {
                    let (gr, nr) = (&g[r * d..(r + 1) * d], &normed[r * d..(r + 1) * d]);
                    for j in 0..d {
                        dwp[j] += gr[j] * nr[j];
                        dbp[j] += gr[j];
                    }
                }
            });
        // SAFETY: dx, dh (with dropout; empty without) and the partials, initialised above,
        // are all of the `len` elements.
        unsafe { out.set_len(len) };
        let shape = Shape::from((input_grads * rows + 2 * PARTS, d));
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_finite_differences, assert_grads_close, flat, max_diff, probe_grads, values,
    };
    use candle_core::{Device, Var};

    /// 70 rows (more than a task's, not a multiple of it) of 48: two batch rows of 35 tokens.
    const DIMS: (usize, usize, usize) = (2, 35, 48);

    fn dropout(p: f32) -> Option<PhiloxDropout> {
        Some(PhiloxDropout {
            seed: 11,
            stream: 3,
            p,
            first_row: 4,
            layout: MaskLayout::Rows,
        })
    }

    struct Inputs {
        h: Var,
        residual: Var,
        weight: Var,
        bias: Var,
        probe: Tensor,
    }

    fn inputs() -> Inputs {
        let (dev, (b, l, d)) = (Device::Cpu, DIMS);
        let var = |n, seed, shape: &[usize]| Var::from_vec(values(n, seed), shape, &dev).unwrap();
        Inputs {
            h: var(b * l * d, 0.3, &[b, l, d]),
            residual: var(b * l * d, 1.1, &[b, l, d]),
            weight: var(d, 1.7, &[d]),
            bias: var(d, 2.9, &[d]),
            probe: Tensor::from_vec(values(b * l * d, 5.1), (b, l, d), &dev).unwrap(),
        }
    }

    impl Inputs {
        fn norm(&self) -> NormParams<'_> {
            (self.weight.as_tensor(), self.bias.as_tensor())
        }

        fn vars(&self) -> [(&'static str, &Var); 4] {
            [
                ("h", &self.h),
                ("residual", &self.residual),
                ("weight", &self.weight),
                ("bias", &self.bias),
            ]
        }
    }

    /// Bit for bit what the model computed before the fusion: the dropout op, an add and the
    /// fused LayerNorm, forward and every gradient, with and without dropout.
    #[test]
    fn residual_norm_is_bit_identical_to_dropout_add_and_fused_layer_norm() {
        let x = inputs();
        for dropout in [None, dropout(0.3)] {
            let op = ResidualNorm::new(1e-12, dropout);
            let y = fused(x.h.as_tensor(), x.residual.as_tensor(), x.norm(), op).unwrap();
            let dropped = match dropout {
                Some(d) => d.forward(x.h.as_tensor()).unwrap(),
                None => x.h.as_tensor().clone(),
            };
            let sum = (dropped + x.residual.as_tensor()).unwrap();
            let reference =
                layer_norm::fused(&sum, x.weight.as_tensor(), x.bias.as_tensor(), 1e-12).unwrap();
            assert_eq!(flat(&y), flat(&reference), "forward, dropout {dropout:?}");
            let (g, r) = (probe_grads(&y, &x.probe), probe_grads(&reference, &x.probe));
            assert_grads_close(&g, &r, &x.vars(), 0.0);
        }
    }

    /// Forward and every gradient match the composed candle ops'; with dropout some of `h`'s
    /// gradient is exactly 0 (dropped) and the rest is the residual's scaled.
    #[test]
    fn residual_norm_matches_the_composed_version() {
        let x = inputs();
        for dropout in [None, dropout(0.3)] {
            let op = ResidualNorm::new(1e-12, dropout);
            let y = fused(
                x.h.as_tensor(),
                x.residual.as_tensor(),
                x.norm(),
                op.clone(),
            )
            .unwrap();
            let reference =
                composed(x.h.as_tensor(), x.residual.as_tensor(), x.norm(), &op).unwrap();
            assert!(max_diff(&y, &reference) < 1e-5, "forward {dropout:?}");
            let (g, r) = (probe_grads(&y, &x.probe), probe_grads(&reference, &x.probe));
            assert_grads_close(&g, &r, &x.vars(), 1e-3);
            let dh = flat(g.get(x.h.as_tensor()).unwrap());
            let dropped = dh.iter().filter(|&&v| v == 0.0).count();
            match dropout {
                Some(_) => assert!((12..40).contains(&(dropped * 100 / dh.len())), "{dropped}"),
                None => assert_eq!(dropped, 0),
            }
        }
    }

    /// The inference op computes the training op's forward bit for bit, over `h` itself.
    #[test]
    fn in_place_matches_the_training_forward() {
        let x = inputs();
        let (h, residual) = (x.h.as_tensor(), x.residual.as_tensor());
        let trained = fused(h, residual, x.norm(), ResidualNorm::new(1e-5, None)).unwrap();
        let h = h.copy().unwrap();
        let y = in_place(&h, residual, x.norm(), 1e-5).unwrap();
        assert_eq!(flat(&y), flat(&trained));
        assert_eq!(flat(&h), flat(&trained), "written over h");
    }

    /// A finite-difference check of `h`'s gradient through the dropout mask (fixed by its
    /// counters) and the normalisation.
    #[test]
    fn residual_norm_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let d = 8;
        let hs = values(2 * d, 0.5);
        let residual = Tensor::from_vec(values(2 * d, 0.9), (1, 2, d), &dev).unwrap();
        let w = Tensor::from_vec(values(d, 1.1), d, &dev).unwrap();
        let b = Tensor::from_vec(values(d, 2.2), d, &dev).unwrap();
        let probe = Tensor::from_vec(values(2 * d, 3.3), (1, 2, d), &dev).unwrap();
        let op = ResidualNorm::new(1e-5, dropout(0.25));
        let loss = |v: &[f32]| -> f32 {
            let h = Tensor::from_vec(v.to_vec(), (1, 2, d), &dev).unwrap();
            let y = fused(&h, &residual, (&w, &b), op.clone()).unwrap();
            (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let h = Var::from_vec(hs.clone(), (1, 2, d), &dev).unwrap();
        let y = fused(h.as_tensor(), &residual, (&w, &b), op.clone()).unwrap();
        let analytic = flat(probe_grads(&y, &probe).get(h.as_tensor()).unwrap());
        assert!(analytic.contains(&0.0), "some of h dropped");
        assert_finite_differences(loss, &hs, &analytic, 1e-2, 2e-2);
    }
}
