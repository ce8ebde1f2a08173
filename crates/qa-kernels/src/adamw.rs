//! Gradient clipping and AdamW on a GPU in three kernel launches per step, whatever the number
//! of parameter tensors (`adamw.cu`): the per-tensor version costs ~15 candle ops per tensor
//! (~1,800 launches for BERT's 104 tensors), which on a GPU is launch overhead, not arithmetic.
//!
//! `clip`: 1. `sum_squares`, one block row per tensor, each block a fixed-order partial sum
//! (f64); 2. `clip_coefficient`, one block summing the partials in a fixed order: the global
//! norm and torch's clip factor, both left on the device. `update`: 3. `adamw`, every tensor's
//! update in place with its gradient scaled by that factor.
//!
//! Deterministic (no atomics), so a GPU run resumes bit-exactly. The kernels reach the tensors
//! through a `Table` of device pointers uploaded each step (the gradients are new tensors each
//! step); they are compiled once per process with NVRTC.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Device, Result, Tensor, Var};

use crate::cuda::{address, cuda_device, launch_error, Module};

/// Threads per block of every kernel here; `adamw.cu` sizes its shared memory with it (the
/// source is compiled with this value as `THREADS`).
macro_rules! threads {
    () => {
        256
    };
}
const THREADS: u32 = threads!();
const MODULE: Module = Module {
    name: "squad_qa_fused_adamw",
    source: concat!(
        "#define THREADS ",
        threads!(),
        "\n",
        include_str!("adamw.cu")
    ),
};
/// Blocks per tensor of `sum_squares` and `adamw` (each grid-strides over its tensor).
const BLOCKS_PER_TENSOR: u32 = 64;

/// The scalars of one update, as the kernels take them.
pub struct StepScalars {
    pub decay: f32,
    pub step_size: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub bias2_sqrt: f32,
    pub eps: f32,
}

/// One parameter's tensors for `update` (all contiguous f32 on the device, flat or not).
pub struct ParamSlot<'a> {
    pub param: &'a Var,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub grad: &'a Tensor,
    pub decays: bool,
}

/// The columns of the pointer table, `tensors` entries each, in upload order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Params,
    FirstMoments,
    SecondMoments,
    Grads,
    Sizes,
    Decays,
}

/// A table of `u64` columns on the device: device addresses, element counts or flags, one
/// entry per tensor; each kernel takes the columns it reads as separate pointer arguments.
struct Table {
    buffer: CudaSlice<u64>,
    columns: Vec<Column>,
    tensors: usize,
}

impl Table {
    fn upload(dev: &CudaDevice, columns: Vec<(Column, Vec<u64>)>) -> Result<Self> {
        let tensors = columns.first().map_or(0, |(_, c)| c.len());
        let flat: Vec<u64> = columns
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        Ok(Table {
            buffer: dev.clone_htod(&flat)?,
            columns: columns.into_iter().map(|(c, _)| c).collect(),
            tensors,
        })
    }

    /// The device address of `column`'s first entry.
    fn column(&self, dev: &CudaDevice, column: Column) -> u64 {
        let at = self
            .columns
            .iter()
            .position(|&c| c == column)
            .expect("column uploaded");
        let base = self.buffer.device_ptr(&dev.cuda_stream()).0;
        base + (at * self.tensors * 8) as u64
    }
}

fn grid(tensors: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (BLOCKS_PER_TENSOR, tensors as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Buffers reused from step to step: the partial sums and the clip factor.
pub struct FusedAdamW {
    partials: Tensor,
    coef: Tensor,
}

impl FusedAdamW {
    /// Compiles and loads the kernels on `device`; an error (no NVRTC, a driver too old for
    /// its PTX) tells the caller to use the per-tensor path instead.
    pub fn new(device: &Device, tensors: usize) -> Result<Self> {
        let dev = cuda_device(device, "fused AdamW")?;
        for f in ["sum_squares", "clip_coefficient", "adamw"] {
            MODULE.function(dev, f)?;
        }
        Ok(FusedAdamW {
            partials: Tensor::zeros(tensors * BLOCKS_PER_TENSOR as usize, DType::F64, device)?,
            coef: Tensor::zeros(1, DType::F32, device)?,
        })
    }

    /// The global norm of `grads` (a device scalar), and the factor `update` scales them by:
    /// `min(1, max_norm / (norm + 1e-6))`, or 1 when `max_norm <= 0`.
    pub fn clip(&mut self, grads: &[&Tensor], max_norm: f32) -> Result<Tensor> {
        let device = grads[0].device().clone();
        let dev = cuda_device(&device, "fused AdamW")?;
        if self.partials.elem_count() != grads.len() * BLOCKS_PER_TENSOR as usize {
            *self = FusedAdamW::new(&device, grads.len())?;
        }
        let table = Table::upload(
            dev,
            vec![
                (
                    Column::Grads,
                    grads.iter().map(|g| address(g)).collect::<Result<_>>()?,
                ),
                (
                    Column::Sizes,
                    grads.iter().map(|g| g.elem_count() as u64).collect(),
                ),
            ],
        )?;
        let (grads_at, sizes_at) = (
            table.column(dev, Column::Grads),
            table.column(dev, Column::Sizes),
        );
        let norm = Tensor::zeros((), DType::F32, &device)?;
        let (partials, coef, norm_at) = (
            address(&self.partials)?,
            address(&self.coef)?,
            address(&norm)?,
        );
        let f = MODULE.function(dev, "sum_squares")?;
        let mut b = f.builder();
        b.arg(&grads_at).arg(&sizes_at).arg(&partials);
        // SAFETY: sum_squares(grads, sizes, partials) reads each table entry's `size` floats
        // and writes tensors x BLOCKS_PER_TENSOR partials, the size of `self.partials`.
        unsafe { b.launch(grid(grads.len())) }.map_err(launch_error)?;
        let count = (grads.len() as u32 * BLOCKS_PER_TENSOR) as i32;
        let f = MODULE.function(dev, "clip_coefficient")?;
        let mut b = f.builder();
        b.arg(&partials)
            .arg(&count)
            .arg(&max_norm)
            .arg(&norm_at)
            .arg(&coef);
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: clip_coefficient(partials, count, max_norm, norm, coef) reads `count`
        // partials and writes one float each to `norm` and `self.coef`.
        unsafe { b.launch(one_block) }.map_err(launch_error)?;
        Ok(norm)
    }

    /// AdamW on every slot in place, gradients scaled by the factor of the last `clip`.
    pub fn update(&mut self, slots: &[ParamSlot], s: &StepScalars) -> Result<()> {
        let device = slots[0].param.device().clone();
        let dev = cuda_device(&device, "fused AdamW")?;
        let column = |f: &dyn Fn(&ParamSlot) -> Result<u64>| -> Result<Vec<u64>> {
            slots.iter().map(f).collect()
        };
        let table = Table::upload(
            dev,
            vec![
                (Column::Params, column(&|p| address(p.param.as_tensor()))?),
                (Column::FirstMoments, column(&|p| address(p.m))?),
                (Column::SecondMoments, column(&|p| address(p.v))?),
                (Column::Grads, column(&|p| address(p.grad))?),
                (Column::Sizes, column(&|p| Ok(p.param.elem_count() as u64))?),
                (Column::Decays, column(&|p| Ok(u64::from(p.decays)))?),
            ],
        )?;
        let columns = [
            Column::Params,
            Column::FirstMoments,
            Column::SecondMoments,
            Column::Grads,
            Column::Sizes,
            Column::Decays,
        ]
        .map(|c| table.column(dev, c));
        let coef = address(&self.coef)?;
        let f = MODULE.function(dev, "adamw")?;
        let mut b = f.builder();
        for c in &columns {
            b.arg(c);
        }
        b.arg(&coef)
            .arg(&s.decay)
            .arg(&s.step_size)
            .arg(&s.beta1)
            .arg(&s.beta2);
        b.arg(&s.bias2_sqrt).arg(&s.eps);
        // SAFETY: adamw(params, m, v, grads, sizes, decays, coef, decay, step_size, beta1,
        // beta2, bias2_sqrt, eps) takes exactly these arguments; each slot's four tensors hold
        // `size` contiguous floats (the caller made the gradients contiguous and the moments
        // flat copies of the parameter's size).
        unsafe { b.launch(grid(slots.len())) }.map_err(launch_error)?;
        Ok(())
    }
}
