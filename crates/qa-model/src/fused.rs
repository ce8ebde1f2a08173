//! Fused LayerNorm and softmax with their own backward passes (candle-nn's fused kernels have
//! none). Composed from candle ops, a LayerNorm is ~9 kernels forward and ~20 backward, each a
//! full pass over the activations and, on a GPU, a launch; fused, it is one pass forward and
//! two backward, parallel over rows on the CPU, a block per row on a GPU. Forward and backward
//! sit side by side; `tests` checks both against the composed versions in `nn`.
//!
//! LayerNorm's backward returns one packed tensor, `[rows + 2 * PARTS, dim]`: the input
//! gradient, then `PARTS` partial sums each of the weight and bias gradients over fixed row
//! ranges (summed by one reduction afterwards), so the result does not depend on the thread
//! count or the device's scheduling.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether training uses the fused ops on `device`: always on the CPU; on a GPU only with
/// `SQUAD_QA_FUSED_CUDA=1` until `scripts/gpu_check.sh` has verified the CUDA kernels on a
/// GPU (they compile and load with NVRTC; their parity run is still to come). Elsewhere the
/// composed ops, verified on an H100, run.
pub fn enabled_on(device: &candle_core::Device) -> bool {
    static CUDA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    device.is_cpu()
        || *CUDA.get_or_init(|| std::env::var("SQUAD_QA_FUSED_CUDA").is_ok_and(|v| v == "1"))
}

/// Row ranges of the weight/bias gradient partial sums.
pub const PARTS: usize = 32;

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous inputs only");
    };
    Ok(&data[a..b])
}

/// Mean and 1 / sqrt(var + eps) of a row (accumulated in f64).
fn row_stats(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
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
        crate::cuda::layer_norm_forward(self.eps, (s1, l1), (s2, l2), (s3, l3))
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

/// The rows of partial sum `part` (of `PARTS`) when there are `rows` rows.
pub fn part_rows(part: usize, rows: usize) -> std::ops::Range<usize> {
    let per = rows.div_ceil(PARTS);
    (part * per).min(rows)..((part + 1) * per).min(rows)
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
                let (mut a, mut b) = (0f64, 0f64);
                for j in 0..d {
                    let gw = f64::from(gr[j] * w[j]);
                    a += gw;
                    b += gw * f64::from((xr[j] - mean) * rstd);
                }
                let (a, b) = ((a / d as f64) as f32, (b / d as f64) as f32);
                for j in 0..d {
                    let xhat = (xr[j] - mean) * rstd;
                    dxr[j] = rstd * (gr[j] * w[j] - a - xhat * b);
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
        crate::cuda::layer_norm_backward(self.eps, (s1, l1), (s2, l2), (s3, l3))
    }
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
        let d = l.shape().dims().last().copied().unwrap_or(1).max(1);
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
        crate::cuda::softmax_forward(s, l)
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
        let d = l1.shape().dims().last().copied().unwrap_or(1).max(1);
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
        crate::cuda::softmax_backward((s1, l1), (s2, l2))
    }
}

/// `y = x + bias` over the rows of `x` `[rows, n]`. Its backward passes the gradient through
/// to `x` as is and sums it over rows for `bias` in `PARTS` fixed row ranges (deterministic,
/// parallel), where candle's broadcast add runs a strided one-thread reduction.
#[derive(Debug, Clone, Copy)]
pub struct BiasAddOp;

impl CustomOp2 for BiasAddOp {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let bias = contiguous_f32(s2, l2, self.name())?;
        let n = bias.len().max(1);
        let rows_per_task = (CHUNK / n).max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(rows_per_task * n)
            .zip(x.par_chunks(rows_per_task * n))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(n).zip(xc.chunks(n)) {
                    for ((o, &v), &b) in yr.iter_mut().zip(xr).zip(bias) {
                        *o = v + b;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let partials = grad.contiguous()?.apply_op1_no_bwd(&ColumnPartialSums)?;
        Ok((
            Some(grad.clone()),
            Some(partials.sum(0)?.reshape(bias.shape())?),
        ))
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
        let n = l.shape().dims().last().copied().unwrap_or(1).max(1);
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

/// `x + bias` over the last dimension of a `[rows, n]` `x`: fused on the CPU (it has no CUDA
/// kernel), candle's broadcast add elsewhere.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op2(bias, BiasAddOp)
    } else {
        x.broadcast_add(bias)
    }
}

/// GELU (erf form) with vectorised erf (`crate::vmath`), element-parallel.
#[derive(Debug, Clone, Copy)]
pub struct GeluOp;

/// Elements per parallel task of the element-wise ops.
const CHUNK: usize = 1 << 14;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| crate::vmath::gelu(xc, yc));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
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
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(dc, (xc, gc))| crate::vmath::gelu_backward(xc, gc, dc));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// GELU (erf): fused with its backward on the CPU (it has no CUDA kernel), candle's kernel
/// elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        x.gelu_erf()
    }
}

/// Fused, differentiable LayerNorm over the last dimension.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(weight, bias, LayerNormOp { eps })
}

/// Fused, differentiable softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

/// The kernels of the CUDA versions (one block per row; `PARTS` partial-sum blocks).
#[cfg(feature = "cuda")]
pub(crate) const CUDA_SOURCE: &str = r#"
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float shared[32];
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_down_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? shared[lane] : (is_max ? __int_as_float(0xff800000) : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            const float other = __shfl_down_sync(0xffffffffu, v, o);
            v = is_max ? fmaxf(v, other) : v + other;
        }
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    return shared[0];
}

// stats[2 * row] = mean, stats[2 * row + 1] = 1 / sqrt(var + eps)
extern "C" __global__ void layer_norm_stats(const float* x, float* stats, int d, float eps) {
    const float* xr = x + (size_t)blockIdx.x * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float mean = block_reduce(s, false) / d;
    float v = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) { const float c = xr[j] - mean; v += c * c; }
    const float var = block_reduce(v, false) / d;
    if (threadIdx.x == 0) { stats[2 * blockIdx.x] = mean; stats[2 * blockIdx.x + 1] = rsqrtf(var + eps); }
}

extern "C" __global__ void layer_norm_apply(const float* x, const float* stats, const float* w,
                                            const float* b, float* y, int d) {
    const size_t row = blockIdx.x;
    const float mean = stats[2 * row], rstd = stats[2 * row + 1];
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        y[row * d + j] = (x[row * d + j] - mean) * rstd * w[j] + b[j];
}

extern "C" __global__ void layer_norm_grad_input(const float* x, const float* stats, const float* w,
                                                 const float* g, float* dx, int d) {
    const size_t row = blockIdx.x;
    const float mean = stats[2 * row], rstd = stats[2 * row + 1];
    float a = 0.0f, b = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float gw = g[row * d + j] * w[j];
        a += gw;
        b += gw * ((x[row * d + j] - mean) * rstd);
    }
    a = block_reduce(a, false) / d;
    b = block_reduce(b, false) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float xhat = (x[row * d + j] - mean) * rstd;
        dx[row * d + j] = rstd * (g[row * d + j] * w[j] - a - xhat * b);
    }
}

// grid (ceil(d / blockDim), parts): partial sums of g * xhat and g over each part's rows.
extern "C" __global__ void layer_norm_grad_params(const float* x, const float* stats, const float* g,
                                                  float* dw, float* db, int rows, int d, int parts) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    const int per = (rows + parts - 1) / parts;
    const int start = min(blockIdx.y * per, rows), end = min((int)(blockIdx.y + 1) * per, rows);
    float sw = 0.0f, sb = 0.0f;
    for (int r = start; r < end; r++) {
        const float gv = g[(size_t)r * d + j];
        sw += gv * ((x[(size_t)r * d + j] - stats[2 * r]) * stats[2 * r + 1]);
        sb += gv;
    }
    dw[(size_t)blockIdx.y * d + j] = sw;
    db[(size_t)blockIdx.y * d + j] = sb;
}

extern "C" __global__ void softmax_forward(const float* x, float* y, int d) {
    const size_t row = blockIdx.x;
    float m = __int_as_float(0xff800000);  // -inf (NVRTC has no math.h)
    for (int j = threadIdx.x; j < d; j += blockDim.x) m = fmaxf(m, x[row * d + j]);
    m = block_reduce(m, true);
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float e = expf(x[row * d + j] - m);
        y[row * d + j] = e;
        s += e;
    }
    s = block_reduce(s, false);
    for (int j = threadIdx.x; j < d; j += blockDim.x) y[row * d + j] /= s;
}

extern "C" __global__ void softmax_backward(const float* y, const float* g, float* dx, int d) {
    const size_t row = blockIdx.x;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += y[row * d + j] * g[row * d + j];
    dot = block_reduce(dot, false);
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        dx[row * d + j] = y[row * d + j] * (g[row * d + j] - dot);
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.731 + seed).sin() * 3.0)
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        d.to_scalar::<f32>().unwrap()
    }

    /// Forward and every gradient of the fused LayerNorm equal the composed one's.
    #[test]
    fn layer_norm_matches_the_composed_version_forward_and_backward() {
        let dev = Device::Cpu;
        let (rows, d) = (70, 48); // more rows than PARTS, not a multiple of it
        let x = Var::from_vec(values(rows * d, 0.3), (2, rows / 2, d), &dev).unwrap();
        let w = Var::from_vec(values(d, 1.7), d, &dev).unwrap();
        let b = Var::from_vec(values(d, 2.9), d, &dev).unwrap();
        let probe = Tensor::from_vec(values(rows * d, 5.1), (2, rows / 2, d), &dev).unwrap();
        let composed = crate::nn::LayerNorm {
            weight: w.as_tensor().clone(),
            bias: b.as_tensor().clone(),
            eps: 1e-12,
        };
        let y_ref = composed.forward(x.as_tensor()).unwrap();
        let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        assert!(
            max_diff(&y, &y_ref) < 1e-5,
            "forward {}",
            max_diff(&y, &y_ref)
        );
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
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, r) = (
                g.get(v.as_tensor()).unwrap(),
                g_ref.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), r.dims(), "{name}");
            assert!(max_diff(a, r) < 1e-3, "grad {name}: {}", max_diff(a, r));
        }
    }

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
        let y_ref = crate::nn::softmax_last_dim(x.as_tensor()).unwrap();
        let y = softmax_last_dim(x.as_tensor()).unwrap();
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
    }

    /// The fused bias add and its gradients equal candle's broadcast add's.
    #[test]
    fn bias_add_matches_broadcast_add_forward_and_backward() {
        let dev = Device::Cpu;
        let (rows, n) = (1000, 37); // more rows than PARTS, not a multiple of it
        let x = Var::from_vec(values(rows * n, 0.1), (rows, n), &dev).unwrap();
        let b = Var::from_vec(values(n, 0.8), n, &dev).unwrap();
        let probe = Tensor::from_vec(values(rows * n, 3.4), (rows, n), &dev).unwrap();
        let fused = x.as_tensor().apply_op2(b.as_tensor(), BiasAddOp).unwrap();
        let reference = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        assert_eq!(max_diff(&fused, &reference), 0.0);
        let grads = |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (g, r) = (grads(&fused), grads(&reference));
        for v in [&x, &b] {
            let (a, want) = (g.get(v.as_tensor()).unwrap(), r.get(v.as_tensor()).unwrap());
            assert_eq!(a.dims(), want.dims());
            assert!(max_diff(a, want) < 1e-4, "{}", max_diff(a, want));
        }
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
            let y = layer_norm(&x, &w, &b, 1e-5).unwrap();
            (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let x = Var::from_vec(xs.clone(), (2, d), &dev).unwrap();
        let y = layer_norm(x.as_tensor(), &w, &b, 1e-5).unwrap();
        let grads = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let analytic: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let h = 1e-2f32;
        for i in 0..xs.len() {
            let (mut up, mut down) = (xs.clone(), xs.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 2e-2 * (1.0 + numeric.abs()),
                "x[{i}]: {numeric} vs {}",
                analytic[i]
            );
        }
    }
}
