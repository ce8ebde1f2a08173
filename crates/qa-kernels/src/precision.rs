//! The arithmetic of the model's GEMMs, chosen once per run (`--precision`, YAML
//! `train.precision` / `eval.precision`) and carried as a value by every op that multiplies.

use std::fmt;
use std::str::FromStr;

/// How GEMMs multiply. Everything else (LayerNorm, softmax, GELU, the loss, master weights,
/// AdamW moments, checkpoints) stays f32 in both.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 inputs, f32 products and sums.
    #[default]
    F32,
    /// Inputs rounded to bf16 (round-to-nearest-even), products summed in f32: what PyTorch's
    /// CPU autocast does. Needs AVX512-BF16.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// Whether this CPU runs `self`'s GEMMs.
    pub fn supported(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => bf16_gemm_supported(),
        }
    }

    /// `Ok` where this CPU runs `self`'s GEMMs, else the one-line reason.
    pub fn require_supported(self) -> Result<(), UnsupportedPrecision> {
        match self.supported() {
            true => Ok(()),
            false => Err(UnsupportedPrecision(self)),
        }
    }
}

/// Whether the CPU has the instructions of the bf16 GEMM (AVX512-F and AVX512-BF16).
pub fn bf16_gemm_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A precision this CPU cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedPrecision(pub Precision);

impl fmt::Display for UnsupportedPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "precision {} needs a CPU with AVX512-BF16 (this one has none); use --precision f32",
            self.0
        )
    }
}

impl std::error::Error for UnsupportedPrecision {}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.to_string() == s)
            .ok_or_else(|| format!("unknown precision {s:?} (expected f32 or bf16)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_parse_from_what_they_print() {
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert!("fp16".parse::<Precision>().unwrap_err().contains("fp16"));
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn f32_runs_everywhere_and_bf16_says_why_not() {
        assert!(Precision::F32.require_supported().is_ok());
        let message = UnsupportedPrecision(Precision::Bf16).to_string();
        assert!(message.contains("AVX512-BF16") && !message.contains('\n'));
    }
}
