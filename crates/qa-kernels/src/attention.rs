//! The attention core fused for the CPU: `softmax(Q K^T * scale + mask)`, dropout, `@ V`, with
//! its backward pass beside it.
//!
//! Composed from candle ops this is ~10 passes over `[batch, heads, len, len]` maps (scores,
//! scale, mask, softmax, dropout, and in backward the same again plus a zeros + add per map
//! for gradient accumulation), the maps are all kept for backward (~0.4 GB per MiniLM step at
//! 8 x 384), and the per-head matmuls run on transposed copies. Fused, each (batch row, head)
//! is one task: two small GEMMs straight on the strided `[batch, len, 3 * hidden]` QKV
//! projection, the softmax and dropout in between on a `len x len` scratch that stays in the
//! thread's cache. A differentiated forward pass (`AttentionCore::forward`) keeps the
//! probabilities for backward (one `Q K^T` and softmax per head fewer there, ~5% of a training
//! step); the dropout mask it keeps as one bit per probability (`kept`), not redrawn.
//!
//! The dropout mask is indexed as the composed path's `[batch, heads, len, len]` probabilities
//! are, so both paths (and a GPU running the composed one) draw the same masks.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, written_by, DisjointWrites};
use crate::dropout::{pack_bits, unpack_bits, MaskLayout, PhiloxDropout, Runs};
use crate::matmul::{Gemm, Mat, Start, Threads};
use crate::precision::Precision;
use crate::vmath;

/// Additive attention mask `[batch, 1, 1, len]` from a 0/1 mask `[batch, len]`: 0 where
/// attended, f32::MIN on padding (HF's `finfo(float32).min`).
pub fn additive_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let (b, l) = attention_mask.dims2()?;
    let m = attention_mask.to_dtype(DType::F32)?;
    let masked = ((m.ones_like()? - &m)? * f32::MIN as f64)?;
    masked.reshape((b, 1, 1, l))
}

/// The attention core from candle ops over the same `[batch, len, 3 * hidden]` QKV:
/// `dropout(softmax(Q K^T * scale + mask)) @ V` with `softmax` of the caller's choice
/// (`crate::softmax`). The fused op's reference, and what runs on a GPU.
pub fn composed(
    qkv: &Tensor,
    heads: usize,
    mask: &Tensor,
    dropout: Option<PhiloxDropout>,
    softmax: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, l, w) = qkv.dims3()?;
    let (hidden, head_dim) = (w / 3, w / 3 / heads);
    let split = |i: usize| -> Result<Tensor> {
        qkv.narrow(D::Minus1, i * hidden, hidden)?
            .reshape((b, l, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
    let probs = softmax(&scores.broadcast_add(mask)?)?;
    let probs = match dropout {
        Some(d) => d.with_layout(MaskLayout::Probabilities).forward(&probs)?,
        None => probs,
    };
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, hidden))
}

/// Attention over a fused `[batch, len, 3 * hidden]` QKV projection (Q, K, V side by side,
/// each `heads x head_dim` wide) → the context `[batch, len, hidden]`.
#[derive(Debug, Clone)]
pub struct AttentionCore {
    pub heads: usize,
    /// Additive key mask, `[batch * len]`: 0 where attended, `f32::MIN` on padding.
    pub mask: Arc<[f32]>,
    /// Dropout on the probabilities (training).
    pub dropout: Option<PhiloxDropout>,
    /// The arithmetic of its per-head GEMMs.
    pub precision: Precision,
    /// The forward pass's dropout mask, one bit per probability, for backward (1.8 MB per
    /// MiniLM layer at 8 x 384, where redrawing it from Philox cost ~5% of a step).
    kept: OnceLock<Vec<u64>>,
    /// Whether the forward pass keeps its probabilities (before dropout) for backward: set by
    /// `forward`, the differentiable entry point.
    keep_probabilities: bool,
    /// The forward pass's probabilities, `[batch, heads, len, len]` (57 MB per MiniLM layer at
    /// 8 x 384); without them backward recomputes each head's from Q and K.
    probabilities: OnceLock<Vec<f32>>,
}

/// Sizes of one call, from the QKV shape.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    hidden: usize,
}

impl Geometry {
    /// How the `[batch, heads, len, len]` probabilities draw their dropout mask.
    fn probability_runs(&self) -> Result<Runs> {
        let dims = [self.batch, self.heads, self.len, self.len];
        Runs::of(&dims, MaskLayout::Probabilities)
    }

    fn of(heads: usize, qkv: &Layout) -> Result<Self> {
        let (batch, len, width) = qkv.shape().dims3()?;
        if width % (3 * heads) != 0 {
            candle_core::bail!("attention: width {width} is not 3 x {heads} heads");
        }
        let hidden = width / 3;
        Ok(Geometry {
            batch,
            len,
            heads,
            head_dim: hidden / heads,
            hidden,
        })
    }

    fn units(&self) -> usize {
        self.batch * self.heads
    }

    /// Offsets of Q, K and V of `unit` (batch row, head) in the QKV buffer; rows are
    /// `3 * hidden` apart.
    fn qkv_offsets(&self, unit: usize) -> [usize; 3] {
        let (b, h) = (unit / self.heads, unit % self.heads);
        let base = b * self.len * 3 * self.hidden + h * self.head_dim;
        [base, base + self.hidden, base + 2 * self.hidden]
    }

    /// Offset of `unit`'s columns in a `[batch, len, hidden]` buffer.
    fn context_offset(&self, unit: usize) -> usize {
        let (b, h) = (unit / self.heads, unit % self.heads);
        b * self.len * self.hidden + h * self.head_dim
    }
}

impl AttentionCore {
    pub fn new(
        heads: usize,
        mask: Arc<[f32]>,
        dropout: Option<PhiloxDropout>,
        precision: Precision,
    ) -> Self {
        AttentionCore {
            heads,
            mask,
            dropout,
            precision,
            kept: OnceLock::new(),
            keep_probabilities: false,
            probabilities: OnceLock::new(),
        }
    }

    /// `dst[m, n]` (rows `dst_rs` apart) = `lhs · rhs` on this thread, in the op's precision:
    /// each (batch row, head) is its own parallel task.
    ///
    /// # Safety
    /// As `Gemm::run`'s.
    unsafe fn matmul(
        &self,
        (m, n, k): (usize, usize, usize),
        dst: *mut f32,
        dst_rs: usize,
        lhs: Mat,
        rhs: Mat,
    ) {
        let gemm = Gemm {
            precision: self.precision,
            threads: Threads::One,
            start: Start::Zero,
        };
        // SAFETY: the caller's contract.
        unsafe { gemm.run((m, n, k), dst, dst_rs, lhs, rhs) }
    }

    /// The context for `qkv` (differentiable: the probabilities are kept for backward).
    pub fn forward(&self, qkv: &Tensor) -> Result<Tensor> {
        let mut op =
            AttentionCore::new(self.heads, self.mask.clone(), self.dropout, self.precision);
        op.keep_probabilities = true;
        qkv.contiguous()?.apply_op1(op)
    }

    /// `scores` (`Q K^T` of `unit`, `len x len`) → `softmax(scores * scale + mask)` in place.
    fn probabilities(&self, g: &Geometry, unit: usize, scores: &mut [f32]) {
        let scale = (1.0 / (g.head_dim as f64).sqrt()) as f32;
        let mask = &self.mask[(unit / g.heads) * g.len..][..g.len];
        for row in scores.chunks_mut(g.len) {
            crate::vmath::softmax_row(row, mask, scale);
        }
    }

    /// The dropout multipliers of `unit`'s `len x len` probabilities: from the bits the
    /// forward pass kept, else drawn (false without dropout).
    fn fill_multipliers(&self, g: &Geometry, unit: usize, out: &mut [f32]) -> bool {
        let Some(d) = &self.dropout else {
            return false;
        };
        let n = g.len * g.len;
        match self.kept.get() {
            Some(bits) => {
                let words = n.div_ceil(64);
                unpack_bits(&bits[unit * words..][..words], d.scale(), &mut out[..n]);
            }
            None => {
                // The length was checked when the op ran forward (cpu_fwd).
                let runs = g.probability_runs().expect("at most MAX_POSITIONS tokens");
                d.fill_tensor(&runs, (unit * n) as u64, &mut out[..n]);
            }
        }
        true
    }

    /// One (batch row, head): its probabilities (`l x l` at `probs`, written here) and context
    /// columns = dropout(probabilities) · V; the dropout mask's bits go to `kept`.
    ///
    /// # Safety
    /// `probs` must be `l x l` writable elements of this task's.
    unsafe fn forward_unit(
        &self,
        g: &Geometry,
        qkv: &[f32],
        (unit, kept): (usize, &mut [u64]),
        (probs, multipliers): (*mut f32, &mut [f32]),
        out: DisjointWrites,
    ) {
        let (l, d) = (g.len, g.head_dim);
        let [q, k, v] = g
            .qkv_offsets(unit)
            .map(|o| Mat::rows(qkv[o..].as_ptr(), 3 * g.hidden));
        // SAFETY: the views lie inside `qkv`, `probs` is this task's (written by the product
        // before it is read); the context columns of `unit` are written by this task only.
        unsafe {
            self.matmul((l, l, d), probs, l, q, k.t());
            let probs = std::slice::from_raw_parts_mut(probs, l * l);
            self.probabilities(g, unit, probs);
            let dropped = if self.fill_multipliers(g, unit, multipliers) {
                pack_bits(multipliers, kept);
                vmath::mul_in_place(multipliers, probs);
                &*multipliers
            } else {
                probs
            };
            let dst = out.0.add(g.context_offset(unit));
            self.matmul((l, d, l), dst, g.hidden, Mat::rows(dropped.as_ptr(), l), v);
        }
    }
}

impl CustomOp1 for AttentionCore {
    fn name(&self) -> &'static str {
        "attention-core"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(s, layout, self.name())?;
        let g = Geometry::of(self.heads, layout)?;
        if self.dropout.is_some() {
            g.probability_runs()?;
        }
        let words = match self.dropout {
            Some(_) => (g.len * g.len).div_ceil(64),
            None => 1,
        };
        let mut kept = vec![0u64; g.units() * words];
        let area = g.len * g.len;
        let kept_len = if self.keep_probabilities {
            g.units() * area
        } else {
            0
        };
        let mut probabilities = Vec::with_capacity(kept_len);
        let kept_probs = self
            .keep_probabilities
            .then_some(DisjointWrites(probabilities.as_mut_ptr()));
        // SAFETY: the units write all of the context, each its head's columns of its batch
        // row, and (when kept) each its own `area` of the probabilities (`forward_unit`).
        let context = unsafe {
            written_by(g.batch * g.len * g.hidden, |context| {
                let out = DisjointWrites(context);
                // The multipliers, and the probabilities where they are not kept.
                let scratch_maps = if kept_probs.is_some() { 1 } else { 2 };
                kept.par_chunks_mut(words).enumerate().for_each_init(
                    || vec![0f32; scratch_maps * area],
                    |scratch, unit| {
                        let (multipliers, own) = scratch.split_at_mut(area);
                        let probs = match kept_probs {
                            Some(all) => all.0.add(unit.0 * area),
                            None => own.as_mut_ptr(),
                        };
                        self.forward_unit(&g, qkv, unit, (probs, multipliers), out)
                    },
                )
            })
        };
        if self.keep_probabilities {
            // SAFETY: the units wrote every element (above).
            unsafe { probabilities.set_len(kept_len) };
            let _ = self.probabilities.set(probabilities);
        }
        if self.dropout.is_some() {
            // Each op is applied once (a second forward would keep the first's bits).
            let _ = self.kept.set(kept);
        }
        Ok((
            CpuStorage::F32(context),
            Shape::from((g.batch, g.len, g.hidden)),
        ))
    }

    fn bwd(&self, qkv: &Tensor, _context: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad_op = AttentionCoreGrad(self);
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &grad_op)?))
    }
}

/// The attention core's backward: (QKV, grad of the context) → grad of QKV.
#[derive(Debug, Clone, Copy)]
pub struct AttentionCoreGrad<'a>(pub &'a AttentionCore);

impl AttentionCoreGrad<'_> {
    /// One (batch row, head): its Q, K and V columns of the QKV gradient.
    fn backward_unit(
        &self,
        g: &Geometry,
        (qkv, grad): (&[f32], &[f32]),
        unit: usize,
        scratch: &mut [f32],
        out: DisjointWrites,
    ) {
        let op = &self.0;
        let (l, d, w) = (g.len, g.head_dim, 3 * g.hidden);
        let (work, rest) = scratch.split_at_mut(l * l);
        let (multipliers, own) = rest.split_at_mut(l * l);
        let offsets = g.qkv_offsets(unit);
        let [q, k, v] = offsets.map(|o| Mat::rows(qkv[o..].as_ptr(), w));
        let dctx = Mat::rows(grad[g.context_offset(unit)..].as_ptr(), g.hidden);
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        // SAFETY: as in `forward_unit`; `dst(i)` is this unit's Q/K/V columns of the output.
        unsafe {
            let dst = |i: usize| out.0.add(offsets[i]);
            let probs: &[f32] = match op.probabilities.get() {
                Some(all) => &all[unit * l * l..][..l * l],
                None => {
                    op.matmul((l, l, d), own.as_mut_ptr(), l, q, k.t());
                    op.probabilities(g, unit, own);
                    own
                }
            };
            let dropout = op.fill_multipliers(g, unit, multipliers);
            // dV = dropout(P)^T · dContext
            let dropped = if dropout {
                vmath::mul(probs, multipliers, work);
                Mat::rows(work.as_ptr(), l)
            } else {
                Mat::rows(probs.as_ptr(), l)
            };
            op.matmul((l, d, l), dst(2), w, dropped.t(), dctx);
            // dP = (dContext · V^T) ∘ mask; dS = P ∘ (dP - rowsum(P ∘ dP)) * scale
            op.matmul((l, l, d), work.as_mut_ptr(), l, dctx, v.t());
            if dropout {
                vmath::mul_in_place(work, multipliers);
            }
            for (dp, p) in work.chunks_mut(l).zip(probs.chunks(l)) {
                vmath::softmax_backward_row(dp, p, scale);
            }
            let ds = Mat::rows(work.as_ptr(), l);
            op.matmul((l, d, l), dst(0), w, ds, k); // dQ = dS · K
            op.matmul((l, d, l), dst(1), w, ds.t(), q); // dK = dS^T · Q
        }
    }
}

impl CustomOp2 for AttentionCoreGrad<'_> {
    fn name(&self) -> &'static str {
        "attention-core-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(s1, l1, self.name())?;
        let grad = contiguous_f32(s2, l2, self.name())?;
        let g = Geometry::of(self.0.heads, l1)?;
        // Work and multipliers, and the probabilities where the forward pass did not keep them.
        let scratch_maps = 2 + usize::from(self.0.probabilities.get().is_none());
        // SAFETY: the units write all of the QKV gradient, each its head's Q, K and V columns
        // of its batch row (`backward_unit`).
        let dqkv = unsafe {
            written_by(qkv.len(), |dqkv| {
                let out = DisjointWrites(dqkv);
                (0..g.units()).into_par_iter().for_each_init(
                    || vec![0f32; scratch_maps * g.len * g.len],
                    |scratch, unit| self.backward_unit(&g, (qkv, grad), unit, scratch, out),
                )
            })
        };
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_finite_differences, flat, max_diff, probe_grads, wave};
    use candle_core::{Device, Var};

    fn values(n: usize, seed: f32) -> Vec<f32> {
        wave(n, seed, 0.613, 1.0)
    }

    /// The composed reference with the fused softmax, as the model runs it off the CPU.
    fn reference(qkv: &Tensor, op: &AttentionCore, mask: &Tensor) -> Tensor {
        composed(qkv, op.heads, mask, op.dropout, crate::softmax::fused).unwrap()
    }

    /// Forward and QKV gradient equal the composed path's, with padding and an odd length
    /// (rows not a multiple of the Philox block), with and without dropout.
    #[test]
    fn fused_attention_matches_the_composed_version() {
        let dev = Device::Cpu;
        let (b, l, heads, d) = (2, 13, 3, 4);
        let w = 3 * heads * d;
        let qkv = Var::from_vec(values(b * l * w, 0.2), (b, l, w), &dev).unwrap();
        let probe = Tensor::from_vec(values(b * l * heads * d, 1.3), (b, l, heads * d), &dev);
        let probe = probe.unwrap();
        // Row 0 attends to 10 tokens, row 1 to all 13.
        let keep: Vec<u32> = (0..b * l).map(|i| u32::from(i >= l || i < 10)).collect();
        let mask = additive_mask(&Tensor::from_vec(keep, (b, l), &dev).unwrap());
        let mask = mask.unwrap();
        let host: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
        for dropout in [
            None,
            Some(PhiloxDropout {
                seed: 3,
                stream: 9,
                p: 0.3,
                first_row: 5,
                layout: MaskLayout::Rows,
            }),
        ] {
            let op = AttentionCore::new(heads, host.clone().into(), dropout, Precision::F32);
            let fused = op.forward(qkv.as_tensor()).unwrap();
            let reference = reference(qkv.as_tensor(), &op, &mask);
            assert!(max_diff(&fused, &reference) < 1e-5, "forward {dropout:?}");
            let grad = |y: &Tensor| probe_grads(y, &probe).get(qkv.as_tensor()).unwrap().clone();
            let (a, r) = (grad(&fused), grad(&reference));
            assert!(
                max_diff(&a, &r) < 1e-5,
                "grad {dropout:?}: {}",
                max_diff(&a, &r)
            );
            let padded_key = a.narrow(1, 10, 3).unwrap().narrow(0, 0, 1).unwrap();
            let k_and_v = padded_key
                .narrow(D::Minus1, heads * d, 2 * heads * d)
                .unwrap();
            assert_eq!(
                k_and_v
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
    }

    /// Backward from the probabilities the forward pass kept (`forward`) and from ones it
    /// recomputes (the op applied directly keeps none) is the same gradient, bit for bit.
    #[test]
    fn kept_and_recomputed_probabilities_give_the_same_gradient() {
        let dev = Device::Cpu;
        let (b, l, heads, d) = (2, 11, 2, 4);
        let w = 3 * heads * d;
        let qkv = Var::from_vec(values(b * l * w, 0.8), (b, l, w), &dev).unwrap();
        let probe = Tensor::from_vec(values(b * l * heads * d, 0.3), (b, l, heads * d), &dev);
        let probe = probe.unwrap();
        let dropout = PhiloxDropout {
            seed: 7,
            stream: 2,
            p: 0.2,
            first_row: 0,
            layout: MaskLayout::Rows,
        };
        let mask: Arc<[f32]> = (0..b * l)
            .map(|i| if i < l - 2 { 0.0 } else { f32::MIN })
            .collect();
        for dropout in [None, Some(dropout)] {
            let op = AttentionCore::new(heads, mask.clone(), dropout, Precision::F32);
            let kept = op.forward(qkv.as_tensor()).unwrap();
            let recomputed = qkv.as_tensor().apply_op1(op.clone()).unwrap();
            let grad = |y: &Tensor| flat(probe_grads(y, &probe).get(qkv.as_tensor()).unwrap());
            let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(flat(&kept)), bits(flat(&recomputed)), "{dropout:?}");
            assert_eq!(bits(grad(&kept)), bits(grad(&recomputed)), "{dropout:?}");
        }
    }

    /// A finite-difference check of the QKV gradient without dropout.
    #[test]
    fn fused_attention_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (b, l, heads, d) = (1, 5, 2, 2);
        let w = 3 * heads * d;
        let xs = values(b * l * w, 0.7);
        let probe = Tensor::from_vec(values(b * l * heads * d, 2.1), (b, l, heads * d), &dev);
        let probe = probe.unwrap();
        let op = AttentionCore::new(heads, vec![0.0; b * l].into(), None, Precision::F32);
        let loss = |v: &[f32]| -> f32 {
            let x = Tensor::from_vec(v.to_vec(), (b, l, w), &dev).unwrap();
            let y = op.forward(&x).unwrap();
            (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), (b, l, w), &dev).unwrap();
        let y = op.forward(x.as_tensor()).unwrap();
        let analytic = flat(probe_grads(&y, &probe).get(x.as_tensor()).unwrap());
        assert_finite_differences(loss, &xs, &analytic, 1e-2, 1e-2);
    }

    /// In bf16 (every per-head GEMM's inputs rounded) forward and gradient stay within
    /// bf16's relative precision (2^-8, a few roundings deep) of the f32 op's, with dropout.
    #[test]
    fn bf16_attention_stays_within_bf16_rounding_of_f32() {
        if !crate::precision::bf16_gemm_supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the bf16 GEMM kernel cannot run)");
            return;
        }
        let dev = Device::Cpu;
        let (b, l, heads, d) = (2, 45, 2, 32);
        let w = 3 * heads * d;
        let qkv = Var::from_vec(values(b * l * w, 0.4), (b, l, w), &dev).unwrap();
        let probe = Tensor::from_vec(values(b * l * heads * d, 1.9), (b, l, heads * d), &dev);
        let probe = probe.unwrap();
        let mask: Vec<f32> = (0..b * l)
            .map(|i| if i % l < 40 { 0.0 } else { f32::MIN })
            .collect();
        let dropout = PhiloxDropout {
            seed: 5,
            stream: 1,
            p: 0.1,
            first_row: 0,
            layout: MaskLayout::Rows,
        };
        let run = |precision| {
            let op = AttentionCore::new(heads, mask.clone().into(), Some(dropout), precision);
            let y = op.forward(qkv.as_tensor()).unwrap();
            let g = probe_grads(&y, &probe)
                .get(qkv.as_tensor())
                .unwrap()
                .clone();
            (y, g)
        };
        let ((y32, g32), (y16, g16)) = (run(Precision::F32), run(Precision::Bf16));
        let scale = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_keepdim(0)
                .unwrap()
                .max_keepdim(1)
                .unwrap()
                .max_keepdim(2)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap()[0][0][0]
        };
        let (dy, dg) = (
            max_diff(&y16, &y32) / scale(&y32),
            max_diff(&g16, &g32) / scale(&g32),
        );
        assert!(
            dy < 0.03 && dg < 0.03,
            "relative differences: forward {dy}, gradient {dg}"
        );
        assert!(dy > 0.0 && dg > 0.0, "bf16 rounded nothing");
    }
}
