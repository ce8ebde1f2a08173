//! HF Trainer's optimiser: torch AdamW (decoupled weight decay on weight matrices and
//! embeddings only), global-norm gradient clipping and the linear schedule with warm-up.
//! candle-nn's AdamW decays every tensor and has neither clipping nor schedules.
//!
//! On the CPU, gradients and moments are host f32 vectors, updated in parallel in the order of
//! torch's fused CPU kernel (scalars in f64, element arithmetic in f32), so a step matches
//! torch within float noise. On a GPU they are device tensors updated with tensor ops: nothing
//! crosses the bus, not even the clipping norm (it is read only when logged).

use std::cell::RefCell;
use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor, Var};
use qa_dist::{all_reduce_parts, Collective};
use qa_kernels::cpu::host_values;
use qa_kernels::vmath::{self, AdamWStep};
use qa_model::{Params, RunPlan};
use rayon::prelude::*;

/// AdamW hyper-parameters (lr comes from the schedule each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter: host vectors (CPU) or device tensors.
#[derive(Debug, Clone)]
pub enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    /// Both moments as flat CPU tensors (what a checkpoint stores).
    pub fn to_cpu(&self) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Moments::Host { m, v } => Ok((
                Tensor::from_slice(m, m.len(), &Device::Cpu)?,
                Tensor::from_slice(v, v.len(), &Device::Cpu)?,
            )),
            Moments::Device { m, v } => Ok((
                m.flatten_all()?.to_device(&Device::Cpu)?,
                v.flatten_all()?.to_device(&Device::Cpu)?,
            )),
        }
    }

    /// From flat tensors, kept where a step on `device` will use them.
    pub fn from_tensors(m: &Tensor, v: &Tensor, device: &Device) -> candle_core::Result<Self> {
        if device.is_cpu() {
            Ok(Moments::Host {
                m: m.flatten_all()?.to_vec1()?,
                v: v.flatten_all()?.to_vec1()?,
            })
        } else {
            Ok(Moments::Device {
                m: m.flatten_all()?.to_device(device)?,
                v: v.flatten_all()?.to_device(device)?,
            })
        }
    }
}

/// The gradients of one optimizer step by parameter name: host vectors on the CPU (clipped
/// and applied in parallel, in place), device tensors elsewhere (never copied to the host).
#[derive(Debug)]
pub enum Grads {
    Host(BTreeMap<String, Vec<f32>>),
    Device(BTreeMap<String, Tensor>),
}

/// A number the step computed: already on the host, or a device scalar read when needed
/// (reading it waits for the device, so a GPU run reads only at logging steps).
#[derive(Debug, Clone)]
pub enum Scalar {
    Host(f64),
    Device(Tensor),
}

impl Scalar {
    pub fn value(&self) -> candle_core::Result<f64> {
        match self {
            Scalar::Host(v) => Ok(*v),
            Scalar::Device(t) => Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?),
        }
    }
}

impl Grads {
    /// Every parameter's gradient from a backward pass (zeros where the loss does not
    /// reach), as host vectors when `host`, else as tensors where the parameters live.
    pub fn from_store(
        store: &GradStore,
        params: &BTreeMap<String, Var>,
        host: bool,
    ) -> candle_core::Result<Self> {
        let grad = |var: &Var| -> candle_core::Result<Tensor> {
            match store.get(var.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => var.zeros_like(),
            }
        };
        if host {
            let mut out = BTreeMap::new();
            for (name, var) in params {
                out.insert(name.clone(), host_values(&grad(var)?)?);
            }
            Ok(Grads::Host(out))
        } else {
            let mut out = BTreeMap::new();
            for (name, var) in params {
                out.insert(name.clone(), grad(var)?);
            }
            Ok(Grads::Device(out))
        }
    }

    /// Zero gradients for every parameter (a rank with no share of a micro-batch).
    pub fn zeros(params: &BTreeMap<String, Var>, host: bool) -> candle_core::Result<Self> {
        Self::from_store(&GradStore::default(), params, host)
    }

    /// Sums the gradients and `loss` over all ranks (in `qa_dist::BUCKET`s); for one rank,
    /// returns `loss` as it is. Device gradients are summed as one flat device tensor (by
    /// NCCL where the collectives have it, else through the host).
    pub fn all_reduce<C: Collective + ?Sized>(
        &mut self,
        comm: &C,
        loss: Scalar,
    ) -> candle_core::Result<Scalar> {
        if comm.world() == 1 {
            return Ok(loss);
        }
        let mut total = [loss.value()? as f32];
        match self {
            Grads::Host(grads) => {
                let mut parts: Vec<&mut [f32]> =
                    grads.values_mut().map(Vec::as_mut_slice).collect();
                parts.push(&mut total);
                all_reduce_parts(comm, &mut parts);
            }
            Grads::Device(grads) => return all_reduce_device(comm, grads, loss),
        }
        Ok(Scalar::Host(f64::from(total[0])))
    }

    /// Adds another micro-batch's gradients (gradient accumulation).
    pub fn add(&mut self, other: Grads) -> candle_core::Result<()> {
        match (self, other) {
            (Grads::Host(acc), Grads::Host(more)) => {
                for (name, add) in more {
                    let a = acc.get_mut(&name).expect("same parameters");
                    a.par_iter_mut()
                        .zip(add.par_iter())
                        .for_each(|(a, b)| *a += b);
                }
            }
            (Grads::Device(acc), Grads::Device(more)) => {
                for (name, add) in more {
                    let a = acc.get_mut(&name).expect("same parameters");
                    *a = (&*a + add)?;
                }
            }
            _ => candle_core::bail!("gradients on different devices"),
        }
        Ok(())
    }
}

/// Device gradients and the loss as one flat tensor, summed over ranks, cut back in place;
/// the loss stays on the device.
fn all_reduce_device<C: Collective + ?Sized>(
    comm: &C,
    grads: &mut BTreeMap<String, Tensor>,
    loss: Scalar,
) -> candle_core::Result<Scalar> {
    let loss = match loss {
        Scalar::Device(t) => t.to_dtype(DType::F32)?.reshape(1)?,
        Scalar::Host(v) => {
            let device = grads
                .values()
                .next()
                .map_or(Device::Cpu, |t| t.device().clone());
            Tensor::from_vec(vec![v as f32], 1, &device)?
        }
    };
    let mut flat: Vec<Tensor> = grads
        .values()
        .map(Tensor::flatten_all)
        .collect::<candle_core::Result<_>>()?;
    flat.push(loss);
    let sum = comm.all_reduce_tensor(&Tensor::cat(&flat, 0)?)?;
    let mut at = 0;
    for t in grads.values_mut() {
        let n = t.elem_count();
        *t = sum.narrow(0, at, n)?.reshape(t.shape())?;
        at += n;
    }
    Ok(Scalar::Device(sum.narrow(0, at, 1)?.squeeze(0)?))
}

/// `clip_grad_norm` on device tensors: the norm (f32 scalar) and the scaling factor stay on
/// the device, so clipping needs no host round trip.
fn clip_device_grads(
    grads: &mut BTreeMap<String, Tensor>,
    max_norm: f64,
) -> candle_core::Result<Tensor> {
    let squares = grads
        .values()
        .map(|g| g.sqr()?.sum_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
    if max_norm > 0.0 {
        // min(1, max_norm / (norm + 1e-6)), as torch's clamp(max=1.0).
        let coef = (norm.affine(1.0, 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)?;
        for g in grads.values_mut() {
            *g = g.broadcast_mul(&coef)?;
        }
    }
    Ok(norm)
}

/// HF Trainer's AdamW. Built once per run with the parameters' weight-decay groups and the
/// way its updates run (host vectors, device tensors, or the fused CUDA kernels), both fixed
/// from then on. A step is `clip_grad_norm`, then `step`.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimiser steps taken (torch's `step`, the bias-correction exponent).
    pub steps: u64,
    pub moments: BTreeMap<String, Moments>,
    /// Whether each parameter gets weight decay (HF's groups: `qa_model::params::decays`).
    decays: BTreeMap<String, bool>,
    /// The clip factor of host gradients, applied by the next `step` as it reads them (a
    /// pass over every gradient fewer than scaling them in place).
    host_clip: Option<f32>,
    #[cfg(feature = "cuda")]
    fused: Option<fused::FusedSlot>,
}

impl AdamW {
    /// An optimizer for `params` (their decay groups fixed now), stepping as `plan` runs: the
    /// fused CUDA kernels when the plan asks for them.
    pub fn new(config: AdamWConfig, params: &Params, plan: &RunPlan) -> Self {
        let decays = params
            .vars
            .keys()
            .map(|name| (name.clone(), qa_model::params::decays(name)))
            .collect();
        #[cfg(not(feature = "cuda"))]
        let _ = plan;
        AdamW {
            config,
            steps: 0,
            moments: BTreeMap::new(),
            decays,
            host_clip: None,
            #[cfg(feature = "cuda")]
            fused: plan.fused_cuda_adamw().then(fused::FusedSlot::default),
        }
    }

    /// torch `clip_grad_norm_` over all of `grads` (on the host, and on a GPU with the fused
    /// kernels, as a factor the next `step` applies; else in place); returns the norm before
    /// clipping. `max_norm <= 0` disables clipping.
    pub fn clip_grad_norm(
        &mut self,
        grads: &mut Grads,
        max_norm: f64,
    ) -> candle_core::Result<Scalar> {
        #[cfg(feature = "cuda")]
        if let (Some(slot), Grads::Device(g)) = (self.fused.as_mut(), &mut *grads) {
            if let Some(norm) = slot.clip(g, max_norm)? {
                return Ok(Scalar::Device(norm));
            }
        }
        match grads {
            Grads::Host(g) => {
                let norm = global_norm(g);
                self.host_clip = clip_factor(norm, max_norm);
                Ok(Scalar::Host(norm))
            }
            Grads::Device(g) => Ok(Scalar::Device(clip_device_grads(g, max_norm)?)),
        }
    }

    /// The flat moments of a device parameter, zeros at its first step.
    fn device_moments(&mut self, name: &str, grad: &Tensor) -> candle_core::Result<&mut Moments> {
        if !self.moments.contains_key(name) {
            let zeros = || Tensor::zeros(grad.elem_count(), DType::F32, grad.device());
            let (m, v) = (zeros()?, zeros()?);
            self.moments
                .insert(name.to_string(), Moments::Device { m, v });
        }
        Ok(self.moments.get_mut(name).expect("inserted above"))
    }

    fn update_scalars(&self, lr: f64) -> Update {
        let c = self.config;
        let t = self.steps as i32;
        Update {
            step_size: lr / (1.0 - c.beta1.powi(t)),
            bias2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
        }
    }

    /// Multiplier of a parameter at decoupled weight decay with rate `lr`.
    fn decay(&self, name: &str, lr: f64) -> f64 {
        if self.decays.get(name).copied().unwrap_or(false) {
            1.0 - lr * self.config.weight_decay
        } else {
            1.0
        }
    }

    /// One update of every parameter with its (clipped) gradient in `grads`.
    pub fn step(&mut self, params: &Params, grads: &Grads, lr: f64) -> candle_core::Result<()> {
        self.steps += 1;
        #[cfg(feature = "cuda")]
        if let Grads::Device(g) = grads {
            if self.fused.as_ref().is_some_and(|s| s.clipped()) {
                return self.fused_step(params, g, lr);
            }
        }
        let update = self.update_scalars(lr);
        let grad_scale = self.host_clip.take().unwrap_or(1.0);
        for (name, var) in &params.vars {
            let decay = self.decay(name, lr);
            let missing = || candle_core::Error::Msg(format!("no gradient for {name}"));
            match grads {
                Grads::Host(g) => {
                    let g = g.get(name).ok_or_else(missing)?;
                    let moments =
                        self.moments
                            .entry(name.clone())
                            .or_insert_with(|| Moments::Host {
                                m: vec![0.0; g.len()],
                                v: vec![0.0; g.len()],
                            });
                    let Moments::Host { m, v } = moments else {
                        candle_core::bail!("{name}: optimizer state is on another device");
                    };
                    update.host(var, (m, v), (g, grad_scale), decay)?;
                }
                Grads::Device(g) => {
                    let g = g.get(name).ok_or_else(missing)?;
                    let moments = self.device_moments(name, g)?;
                    let Moments::Device { m, v } = moments else {
                        candle_core::bail!("{name}: optimizer state is on another device");
                    };
                    update.device(var, m, v, g, decay)?;
                }
            }
        }
        Ok(())
    }

    /// `step` through the fused CUDA kernels, with the factor of the `clip_grad_norm` before.
    #[cfg(feature = "cuda")]
    fn fused_step(
        &mut self,
        params: &Params,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> candle_core::Result<()> {
        use qa_kernels::adamw::{ParamSlot, StepScalars};
        let grads = fused::contiguous(grads)?;
        for (name, g) in &grads {
            self.device_moments(name, g)?;
        }
        let u = self.update_scalars(lr);
        let scalars = StepScalars {
            decay: (1.0 - lr * self.config.weight_decay) as f32,
            step_size: u.step_size as f32,
            beta1: u.beta1 as f32,
            beta2: u.beta2 as f32,
            bias2_sqrt: u.bias2_sqrt as f32,
            eps: u.eps as f32,
        };
        let mut slots = Vec::with_capacity(params.vars.len());
        for (name, var) in &params.vars {
            let grad = grads
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))?;
            let Some(Moments::Device { m, v }) = self.moments.get(name) else {
                candle_core::bail!("{name}: optimizer state is on another device");
            };
            let decays = self.decays.get(name).copied().unwrap_or(false);
            slots.push(ParamSlot {
                param: var,
                m,
                v,
                grad,
                decays,
            });
        }
        let slot = self.fused.as_mut().expect("checked by step");
        slot.update(&slots, &scalars)
    }
}

/// The fused CUDA kernels of a run, loaded at the first step.
#[cfg(feature = "cuda")]
mod fused {
    use std::collections::BTreeMap;

    use candle_core::{Result, Tensor};
    use qa_kernels::adamw::{FusedAdamW, ParamSlot, StepScalars};

    /// The kernels once loaded (or the note that they could not be), and whether the last
    /// clip left a factor for the next update.
    #[derive(Default)]
    pub struct FusedSlot {
        kernels: Option<FusedAdamW>,
        unavailable: bool,
        clipped: bool,
    }

    impl std::fmt::Debug for FusedSlot {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FusedSlot(loaded: {})", self.kernels.is_some())
        }
    }

    impl FusedSlot {
        /// The global norm through the kernels; None when they cannot load (then the caller
        /// clips with tensor ops and steps tensor by tensor).
        pub fn clip(
            &mut self,
            grads: &mut BTreeMap<String, Tensor>,
            max_norm: f64,
        ) -> Result<Option<Tensor>> {
            if self.unavailable {
                return Ok(None);
            }
            let Some(first) = grads.values().next() else {
                return Ok(None);
            };
            if self.kernels.is_none() {
                match FusedAdamW::new(first.device(), grads.len()) {
                    Ok(k) => self.kernels = Some(k),
                    Err(e) => {
                        eprintln!("qa-train: warning: fused AdamW kernels unavailable ({e}); stepping tensor by tensor");
                        self.unavailable = true;
                        return Ok(None);
                    }
                }
            }
            *grads = contiguous(grads)?;
            let list: Vec<&Tensor> = grads.values().collect();
            let kernels = self.kernels.as_mut().expect("loaded above");
            let norm = kernels.clip(&list, max_norm as f32)?;
            self.clipped = true;
            Ok(Some(norm))
        }

        pub fn clipped(&self) -> bool {
            self.clipped
        }

        pub fn update(&mut self, slots: &[ParamSlot], scalars: &StepScalars) -> Result<()> {
            self.clipped = false;
            let kernels = self.kernels.as_mut().expect("loaded by clip");
            kernels.update(slots, scalars)
        }
    }

    /// Contiguous copies where needed (a gradient of a transposed weight is strided).
    pub fn contiguous(grads: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        grads
            .iter()
            .map(|(k, g)| Ok((k.clone(), g.contiguous()?)))
            .collect()
    }
}

/// The scalars of one AdamW step (bias corrections folded in).
struct Update {
    step_size: f64,
    bias2_sqrt: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Update {
    /// In place on the parameter's storage and the host moments, in parallel, in torch's order
    /// of operations (`vmath::adamw`).
    fn host(
        &self,
        var: &Var,
        (m, v): (&mut [f32], &mut [f32]),
        (grad, grad_scale): (&[f32], f32),
        decay: f64,
    ) -> candle_core::Result<()> {
        let step = AdamWStep {
            decay: decay as f32,
            grad_scale,
            step_size: self.step_size as f32,
            beta2: self.beta2 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            bias2_sqrt: self.bias2_sqrt as f32,
            eps: self.eps as f32,
        };
        let op = HostAdamW {
            step,
            moments: RefCell::new((m, v)),
            grad,
        };
        var.as_tensor().inplace_op1(&op)
    }

    /// The same arithmetic as tensor ops where the parameter lives.
    fn device(
        &self,
        var: &Var,
        m: &mut Tensor,
        v: &mut Tensor,
        grad: &Tensor,
        decay: f64,
    ) -> candle_core::Result<()> {
        let grad = grad.flatten_all()?;
        let grad = &grad;
        *m = ((grad - &*m)? * (1.0 - self.beta1))?.add(m)?;
        *v = (v.affine(self.beta2, 0.0)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
        let denom = v.sqrt()?.affine(1.0 / self.bias2_sqrt, self.eps)?;
        let p = var.as_tensor().flatten_all()?.affine(decay, 0.0)?;
        var.set(&(p - (m.div(&denom)? * self.step_size)?)?.reshape(var.shape())?)
    }
}

/// One host AdamW step written straight into a parameter's storage (`Var::set` would copy a
/// new tensor in, after a copy out: two passes over every parameter per step).
struct HostAdamW<'a> {
    step: AdamWStep,
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
    grad: &'a [f32],
}

impl InplaceOp1 for HostAdamW<'_> {
    fn name(&self) -> &'static str {
        "adamw-host"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("adamw: contiguous f32 parameters only");
        };
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        let p = &mut data[start..end];
        if [m.len(), v.len(), self.grad.len()] != [p.len(); 3] {
            candle_core::bail!(
                "adamw: {} parameters, {} gradients",
                p.len(),
                self.grad.len()
            );
        }
        // Chunks of a fixed size: the arithmetic is per element, so any split gives the same bits.
        const CHUNK: usize = 1 << 14;
        let step = &self.step;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(self.grad.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| vmath::adamw(p, m, v, g, step));
        Ok(())
    }
}

/// Global L2 norm of all gradients (before clipping), accumulated in f64.
pub fn global_norm(grads: &BTreeMap<String, Vec<f32>>) -> f64 {
    grads
        .values()
        .map(|g| g.par_iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// torch `clip_grad_norm_`'s factor for gradients of global norm `norm`: `max_norm / (norm +
/// 1e-6)` where that is below 1, else none. `max_norm <= 0` disables clipping.
pub fn clip_factor(norm: f64, max_norm: f64) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (max_norm > 0.0 && coef < 1.0).then_some(coef as f32)
}

/// HF `get_linear_schedule_with_warmup`: linear warm-up from 0, then linear decay to 0 at
/// `total_steps`. `lr(step)` is the rate used by optimizer step `step` (0-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LinearSchedule {
    /// Warm-up: explicit steps win over the ratio (HF: `ceil(total * ratio)`).
    pub fn new(base_lr: f64, total_steps: usize, warmup_steps: usize, warmup_ratio: f64) -> Self {
        let warmup_steps = if warmup_steps > 0 {
            warmup_steps
        } else {
            (total_steps as f64 * warmup_ratio).ceil() as usize
        };
        LinearSchedule {
            base_lr,
            warmup_steps,
            total_steps,
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let remaining = self.total_steps.saturating_sub(step) as f64;
            (remaining / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_matches_hf_linear_with_warmup() {
        let s = LinearSchedule::new(2e-5, 3, 0, 0.0);
        let lrs: Vec<f64> = (0..4).map(|t| s.lr(t)).collect();
        let want = [2e-5, 2e-5 * 2.0 / 3.0, 2e-5 / 3.0, 0.0];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        let w = LinearSchedule::new(1.0, 10, 0, 0.25); // ceil(2.5) = 3 warm-up steps
        assert_eq!(w.warmup_steps, 3);
        assert_eq!(w.lr(0), 0.0);
        assert!((w.lr(1) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(w.lr(3), 1.0);
        assert!((w.lr(6) - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_max_norm_and_reports_the_raw_norm() {
        let g = BTreeMap::from([("a".to_string(), vec![3.0f32]), ("b".into(), vec![4.0])]);
        let norm = global_norm(&g);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((clip_factor(norm, 1.0).unwrap() - 0.2).abs() < 1e-6);
        assert_eq!(clip_factor(0.3, 1.0), None, "below the limit: untouched");
        assert_eq!(clip_factor(norm, 0.0), None, "disabled");
    }

    /// A host step applies the clip factor as torch does (the gradients scaled first): the
    /// same bits as stepping on gradients scaled beforehand.
    #[test]
    fn a_clipped_host_step_equals_a_step_on_scaled_gradients() {
        let dev = Device::Cpu;
        let grads = vec![3.0f32, -4.0, 0.25, 7.5];
        let run = |clip: bool| {
            let params = Params {
                vars: BTreeMap::from([(
                    "x.weight".to_string(),
                    Var::new(&[1.0f32, -1.0, 0.5, 2.0], &dev).unwrap(),
                )]),
            };
            // A large eps: Adam's step is otherwise nearly blind to the gradients' scale.
            let config = AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 0.5,
                weight_decay: 0.01,
            };
            let mut opt = AdamW::new(config, &params, &RunPlan::cpu_train());
            let factor = clip_factor(
                global_norm(&BTreeMap::from([("g".into(), grads.clone())])),
                1.0,
            );
            let scaled = match clip {
                true => grads.clone(),
                false => grads.iter().map(|g| g * factor.unwrap()).collect(),
            };
            let mut host = Grads::Host(BTreeMap::from([("x.weight".to_string(), scaled)]));
            if clip {
                opt.clip_grad_norm(&mut host, 1.0).unwrap();
            }
            opt.step(&params, &host, 0.01).unwrap();
            params.vars["x.weight"]
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn first_adamw_step_moves_by_lr_times_sign_and_decays_only_weights() {
        let dev = Device::Cpu;
        let params = Params {
            vars: BTreeMap::from([
                (
                    "x.weight".to_string(),
                    Var::new(&[1.0f32, -1.0, 0.5], &dev).unwrap(),
                ),
                ("x.bias".to_string(), Var::new(&[1.0f32], &dev).unwrap()),
            ]),
        };
        let grads = Grads::Host(BTreeMap::from([
            ("x.weight".to_string(), vec![0.5f32, -2.0, 0.0]),
            ("x.bias".to_string(), vec![1.0f32]),
        ]));
        let config = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(config, &params, &RunPlan::cpu_train());
        opt.step(&params, &grads, 0.01).unwrap();
        let w: Vec<f32> = params.vars["x.weight"].as_tensor().to_vec1().unwrap();
        let b: Vec<f32> = params.vars["x.bias"].as_tensor().to_vec1().unwrap();
        let decay = 1.0 - 0.01 * 0.1;
        let want = [1.0 * decay - 0.01, -decay + 0.01, 0.5 * decay];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        assert!((b[0] - 0.99).abs() < 1e-6, "bias not decayed: {b:?}");
        assert_eq!(opt.steps, 1);
    }

    /// The tensor path (what a GPU runs) equals the host path, here both on the CPU: two
    /// steps with clipping, decay on one tensor only.
    #[test]
    fn device_tensor_path_matches_the_host_path() {
        let dev = Device::Cpu;
        let init = [0.3f32, -1.2, 0.7, 2.0, -0.1, 0.0];
        let steps = [
            [0.5f32, -2.0, 0.1, 4.0, -3.0, 0.2],
            [-0.4, 1.0, 0.3, 0.0, 2.5, -1.0],
        ];
        let config = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let run = |host: bool| -> (Vec<f32>, Vec<f64>) {
            let params = Params {
                vars: BTreeMap::from([
                    ("a.weight".to_string(), Var::new(&init[..3], &dev).unwrap()),
                    ("a.bias".to_string(), Var::new(&init[3..], &dev).unwrap()),
                ]),
            };
            let mut opt = AdamW::new(config, &params, &RunPlan::cpu_train());
            let mut norms = vec![];
            for g in &steps {
                let mut grads = if host {
                    Grads::Host(BTreeMap::from([
                        ("a.weight".to_string(), g[..3].to_vec()),
                        ("a.bias".to_string(), g[3..].to_vec()),
                    ]))
                } else {
                    Grads::Device(BTreeMap::from([
                        ("a.weight".to_string(), Tensor::new(&g[..3], &dev).unwrap()),
                        ("a.bias".to_string(), Tensor::new(&g[3..], &dev).unwrap()),
                    ]))
                };
                norms.push(
                    opt.clip_grad_norm(&mut grads, 1.0)
                        .unwrap()
                        .value()
                        .unwrap(),
                );
                opt.step(&params, &grads, 0.01).unwrap();
            }
            let mut out: Vec<f32> = params.vars["a.weight"].as_tensor().to_vec1().unwrap();
            out.extend(params.vars["a.bias"].as_tensor().to_vec1::<f32>().unwrap());
            (out, norms)
        };
        let (host, host_norms) = run(true);
        let (device, device_norms) = run(false);
        for (a, b) in host.iter().zip(&device) {
            assert!((a - b).abs() < 1e-6, "{host:?} vs {device:?}");
        }
        for (a, b) in host_norms.iter().zip(&device_norms) {
            assert!(
                (a - b).abs() / a < 1e-6,
                "{host_norms:?} vs {device_norms:?}"
            );
        }
        assert!(host != init.to_vec(), "the parameters moved");
    }
}
