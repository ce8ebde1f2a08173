//! How the model runs, decided once when it is built: where (the device), whether a backward
//! pass follows (train or inference), which kernel each op uses, and the choices a user makes
//! (`RunOptions`, from CLI flags). Carried as one value (`RunPlan`) by the model and whatever
//! else must agree with it (the optimizer, batching); nothing below asks the device again.

use candle_core::Device;
use qa_kernels::Precision;

use crate::error::{ModelError, Result};

/// Whether a backward pass follows the forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Inference,
}

/// How one op of the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Our fused op with its backward (`qa_kernels`).
    Fused,
    /// Our fused op, applied without recording a backward graph (inference).
    FusedForwardOnly,
    /// Composed from candle ops (differentiable): where there is no fused kernel.
    Composed,
    /// candle-nn's forward kernel, which has no backward (inference only).
    CandleForwardOnly,
}

/// The run choices a user makes (CLI flags); everything else follows from device and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Train with our fused LayerNorm/softmax CUDA kernels on a GPU. Off by default until a
    /// GPU check has verified them (`scripts/gpu_check.sh`); the CPU always uses its own.
    pub fused_cuda_norm: bool,
    /// Clip and step AdamW on a GPU with the fused kernels (three launches per step); off: one
    /// set of tensor ops per parameter (for comparisons).
    pub fused_cuda_adamw: bool,
    /// The arithmetic of every GEMM (forward and backward): f32, or bf16 inputs with f32
    /// sums on a CPU with AVX512-BF16.
    pub precision: Precision,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            fused_cuda_norm: false,
            fused_cuda_adamw: true,
            precision: Precision::F32,
        }
    }
}

/// The one decision of how the model runs.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub device: Device,
    pub mode: Mode,
    pub options: RunOptions,
    /// Dense layers (`x W^T + b`): fused on the CPU.
    pub dense: Kernel,
    /// LayerNorm, and the softmax of the composed attention.
    pub norm: Kernel,
    /// GELU (erf): fused on the CPU.
    pub gelu: Kernel,
    /// `LayerNorm(dropout(h) + residual)` ending each sub-layer: one fused op on the CPU,
    /// else the dropout op, an add and the LayerNorm of `norm`.
    pub residual_norm: Kernel,
    /// The attention core: the fused CPU kernel (`qa_kernels::attention`), else composed.
    pub attention: Kernel,
    /// The embedding sum (word + position + token type): fused on the CPU
    /// (`qa_kernels::embedding`), else composed.
    pub embeddings: Kernel,
    /// Gradients, optimizer moments and a step's loss live on the host (read at once), not
    /// on the device (read only when logged, so the host never waits on a GPU).
    pub host: bool,
}

impl RunPlan {
    pub fn new(device: Device, mode: Mode, options: RunOptions) -> Self {
        let cpu = device.is_cpu();
        let on_cpu = |kernel| if cpu { kernel } else { Kernel::Composed };
        let norm = match mode {
            Mode::Inference => Kernel::CandleForwardOnly,
            Mode::Train if cpu || options.fused_cuda_norm => Kernel::Fused,
            Mode::Train => Kernel::Composed,
        };
        // Our CPU ops that inference applies without a backward graph.
        let cpu_op = on_cpu(match mode {
            Mode::Train => Kernel::Fused,
            Mode::Inference => Kernel::FusedForwardOnly,
        });
        RunPlan {
            device,
            mode,
            options,
            dense: on_cpu(Kernel::Fused),
            norm,
            gelu: cpu_op,
            residual_norm: cpu_op,
            attention: cpu_op,
            embeddings: cpu_op,
            host: cpu,
        }
    }

    /// Training on the CPU with the default options (tests, benchmarks).
    pub fn cpu_train() -> Self {
        RunPlan::new(Device::Cpu, Mode::Train, RunOptions::default())
    }

    /// Inference on `device` (evaluation, answering) in `precision`: no other user option
    /// changes it.
    pub fn inference(device: Device, precision: Precision) -> Self {
        let options = RunOptions {
            precision,
            ..RunOptions::default()
        };
        RunPlan::new(device, Mode::Inference, options)
    }

    /// Inference on the CPU.
    pub fn cpu_inference() -> Self {
        RunPlan::inference(Device::Cpu, Precision::F32)
    }

    /// The GEMMs' arithmetic.
    pub fn precision(&self) -> Precision {
        self.options.precision
    }

    /// The arithmetic of the attention's per-head products (`Q K^T`, `P V` and their
    /// backward): the run's precision in training (bf16 there as PyTorch's autocast runs its
    /// `bmm`s), f32 in inference, where only the dense layers' GEMMs take bf16 inputs.
    /// - Training, 2 Zen 4 cores, bf16, medians of 3 alternating runs: 15.57 -> 16.03
    ///   features/s at the default config (dynamic padding), 7.93 -> 8.36 padded to 384;
    ///   the full epoch (short features) 76.4 -> 73.4 minutes, one run each, together with
    ///   `cpu::host_values`'s parallel copy. F1 +0.20 on the 10k check (README,
    ///   `scripts/bf16_quality.sh`).
    /// - Inference: bf16 there moves more answers (one f32 checkpoint on 1,000 dev questions:
    ///   98.6% of the predictions as in f32 with them in bf16, 99.2% with them in f32) and,
    ///   measured on 2 Zen 5 cores, bought no speed.
    pub fn attention_precision(&self) -> Precision {
        match self.mode {
            Mode::Train => self.precision(),
            Mode::Inference => Precision::F32,
        }
    }

    /// Whether this plan can run here: bf16 GEMMs are our CPU kernels, on a CPU with
    /// AVX512-BF16 (the error is the one line a user sees).
    pub fn check(&self) -> Result<()> {
        let precision = self.precision();
        let unsupported = |message: String| ModelError::Precision { precision, message };
        if precision == Precision::Bf16 && !self.device.is_cpu() {
            return Err(unsupported("precision bf16 runs on the CPU only (our AVX512-BF16 GEMMs); use --precision f32 on a GPU".into()));
        }
        precision
            .require_supported()
            .map_err(|e| unsupported(e.to_string()))
    }

    /// The same device and options in another mode (the evaluation inside a training run).
    pub fn with_mode(&self, mode: Mode) -> Self {
        RunPlan::new(self.device.clone(), mode, self.options.clone())
    }

    /// Whether the fused CUDA AdamW is to be used (a GPU and the option on).
    pub fn fused_cuda_adamw(&self) -> bool {
        self.device.is_cuda() && self.options.fused_cuda_adamw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_trains_on_fused_kernels_and_infers_without_backward() {
        let train = RunPlan::cpu_train();
        let kernels = [train.dense, train.norm, train.gelu, train.attention];
        assert_eq!(kernels, [Kernel::Fused; 4]);
        assert_eq!(train.residual_norm, Kernel::Fused);
        let infer = train.with_mode(Mode::Inference);
        assert_eq!(infer.norm, Kernel::CandleForwardOnly);
        assert_eq!(infer.attention, Kernel::FusedForwardOnly);
        assert_eq!(infer.residual_norm, Kernel::FusedForwardOnly);
        assert_eq!(infer.dense, Kernel::Fused);
        assert!(!train.fused_cuda_adamw(), "no GPU, no CUDA kernels");
        assert_eq!(train.precision(), Precision::F32, "f32 unless asked");
        assert!(train.check().is_ok());
    }

    #[test]
    fn the_attention_takes_bf16_in_training_only() {
        let options = RunOptions {
            precision: Precision::Bf16,
            ..RunOptions::default()
        };
        let train = RunPlan::new(Device::Cpu, Mode::Train, options);
        assert_eq!(train.attention_precision(), Precision::Bf16);
        let infer = train.with_mode(Mode::Inference);
        assert_eq!(infer.attention_precision(), Precision::F32);
        assert_eq!(
            infer.precision(),
            Precision::Bf16,
            "the dense layers stay bf16"
        );
        let f32_train = RunPlan::cpu_train();
        assert_eq!(f32_train.attention_precision(), Precision::F32);
    }

    #[test]
    fn bf16_is_checked_against_the_cpu() {
        let plan = RunPlan::inference(Device::Cpu, Precision::Bf16);
        assert_eq!(
            plan.check().is_ok(),
            qa_kernels::precision::bf16_gemm_supported()
        );
        if let Err(e) = plan.check() {
            assert!(e.to_string().contains("AVX512-BF16"), "{e}");
        }
    }
}
