//! Gradient clipping and AdamW on a GPU in three kernel launches per step, whatever the number
//! of parameter tensors: the per-tensor version costs ~15 candle ops per tensor (~1,800
//! launches for BERT's 104 tensors), which on a GPU is launch overhead, not arithmetic.
//!
//! 1. `sum_squares`: one block row per tensor, each block a fixed-order partial sum (f64);
//! 2. `clip_coefficient`: one block sums the partials in a fixed order: the global norm and
//!    torch's clip factor `min(1, max_norm / (norm + 1e-6))`, both left on the device;
//! 3. `adamw`: every tensor's update in place, in the host path's order of operations.
//!
//! Deterministic (no atomics), so a GPU run resumes bit-exactly. The tensors are reached
//! through a table of device pointers uploaded each step (the gradients are new tensors each
//! step); kernels are compiled once per process with NVRTC.

use std::collections::BTreeMap;

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Device, Result, Tensor, Var};
use qa_model::cuda::{address, launch_error};

const MODULE: &str = "squad_qa_fused_adamw";
const THREADS: u32 = 256;
const BLOCKS_PER_TENSOR: u32 = 64;

const SOURCE: &str = r#"
extern "C" __global__ void sum_squares(const unsigned long long* table, int n, double* partials) {
    const int t = blockIdx.y;
    const float* g = (const float*)table[3 * n + t];
    const unsigned long long size = table[4 * n + t];
    double acc = 0.0;
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < size;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const double x = g[i];
        acc += x * x;
    }
    __shared__ double shared[256];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[t * gridDim.x + blockIdx.x] = shared[0];
}

extern "C" __global__ void clip_coefficient(const double* partials, int count, float max_norm,
                                            float* norm_out, float* coef_out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    __shared__ double shared[256];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double norm = sqrt(shared[0]);
        float coef = 1.0f;
        if (max_norm > 0.0f) {
            const double c = (double)max_norm / (norm + 1e-6);
            if (c < 1.0) coef = (float)c;
        }
        norm_out[0] = (float)norm;
        coef_out[0] = coef;
    }
}

// table: n pointers each to parameters, first moments, second moments, gradients, then n
// element counts and n weight-decay flags.
extern "C" __global__ void adamw(const unsigned long long* table, int n, const float* coef,
                                 float decay, float step_size, float beta1, float beta2,
                                 float bias2_sqrt, float eps) {
    const int t = blockIdx.y;
    float* p = (float*)table[t];
    float* m = (float*)table[n + t];
    float* v = (float*)table[2 * n + t];
    const float* g = (const float*)table[3 * n + t];
    const unsigned long long size = table[4 * n + t];
    const float d = table[5 * n + t] ? decay : 1.0f;
    const float c = coef[0];
    const float one_minus_b1 = 1.0f - beta1, one_minus_b2 = 1.0f - beta2;
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < size;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const float gi = g[i] * c;
        float pi = p[i] * d;
        float mi = m[i];
        mi += one_minus_b1 * (gi - mi);
        const float vi = v[i] * beta2 + one_minus_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float denom = __fsqrt_rn(vi) / bias2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
    }
}
"#;

fn cuda(device: &Device) -> Result<&CudaDevice> {
    match device {
        Device::Cuda(d) => Ok(d),
        _ => candle_core::bail!("fused AdamW runs on CUDA devices only"),
    }
}

fn ptx() -> Result<&'static str> {
    qa_model::cuda::ptx(MODULE, SOURCE)
}

/// The scalars of one step, as the kernels take them.
pub struct StepScalars {
    pub max_norm: f32,
    pub decay: f32,
    pub step_size: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub bias2_sqrt: f32,
    pub eps: f32,
}

/// Buffers reused from step to step.
pub struct FusedAdamW {
    partials: Tensor,
    coef: Tensor,
}

impl FusedAdamW {
    /// Compiles and loads the kernels on `device`; an error (no NVRTC, a driver too old for
    /// its PTX) tells the caller to use the per-tensor path instead.
    pub fn new(device: &Device, tensors: usize) -> Result<Self> {
        let ptx = ptx()?;
        let dev = cuda(device)?;
        for f in ["sum_squares", "clip_coefficient", "adamw"] {
            dev.get_or_load_custom_func(f, MODULE, ptx)?;
        }
        Ok(FusedAdamW {
            partials: Tensor::zeros(tensors * BLOCKS_PER_TENSOR as usize, DType::F64, device)?,
            coef: Tensor::zeros(1, DType::F32, device)?,
        })
    }

    /// Clips `grads` by their global norm and applies AdamW to `params` (moments `m`, `v`),
    /// all in place. Returns the norm before clipping, as a device scalar.
    pub fn step(
        &mut self,
        params: &[(&Var, &Tensor, &Tensor, &Tensor, bool)],
        s: &StepScalars,
    ) -> Result<Tensor> {
        let device = params[0].0.device().clone();
        let dev = cuda(&device)?;
        let n = params.len();
        if self.partials.elem_count() != n * BLOCKS_PER_TENSOR as usize {
            *self = FusedAdamW::new(&device, n)?;
        }
        let mut table = vec![0u64; 6 * n];
        for (i, (p, m, v, g, decays)) in params.iter().enumerate() {
            table[i] = address(p.as_tensor())?;
            table[n + i] = address(m)?;
            table[2 * n + i] = address(v)?;
            table[3 * n + i] = address(g)?;
            table[4 * n + i] = p.elem_count() as u64;
            table[5 * n + i] = u64::from(*decays);
        }
        let table = dev.clone_htod(&table)?;
        let norm = Tensor::zeros((), DType::F32, &device)?;
        let (partials, coef, norm_at) = (
            address(&self.partials)?,
            address(&self.coef)?,
            address(&norm)?,
        );
        let (n_i32, count) = (n as i32, (n as u32 * BLOCKS_PER_TENSOR) as i32);
        let grid = |y: u32| LaunchConfig {
            grid_dim: (BLOCKS_PER_TENSOR, y, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };

        let f = dev.get_or_load_custom_func("sum_squares", MODULE, ptx()?)?;
        let mut b = f.builder();
        b.arg(&table).arg(&n_i32).arg(&partials);
        unsafe { b.launch(grid(n as u32)) }.map_err(launch_error)?;

        let f = dev.get_or_load_custom_func("clip_coefficient", MODULE, ptx()?)?;
        let mut b = f.builder();
        b.arg(&partials)
            .arg(&count)
            .arg(&s.max_norm)
            .arg(&norm_at)
            .arg(&coef);
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(one_block) }.map_err(launch_error)?;

        let f = dev.get_or_load_custom_func("adamw", MODULE, ptx()?)?;
        let mut b = f.builder();
        b.arg(&table).arg(&n_i32).arg(&coef);
        b.arg(&s.decay)
            .arg(&s.step_size)
            .arg(&s.beta1)
            .arg(&s.beta2);
        b.arg(&s.bias2_sqrt).arg(&s.eps);
        unsafe { b.launch(grid(n as u32)) }.map_err(launch_error)?;
        Ok(norm)
    }
}

/// Contiguous copies where needed (a gradient of a transposed weight is strided).
pub fn contiguous(grads: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    grads
        .iter()
        .map(|(k, g)| Ok((k.clone(), g.contiguous()?)))
        .collect()
}
