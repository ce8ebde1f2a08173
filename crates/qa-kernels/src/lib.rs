//! Fused candle ops with their backward passes, one module per op: the op struct, its CPU
//! forward, its CUDA forward where it has one (CUDA C in a `.cu` file beside it), its backward,
//! the composed candle version it is tested against (and that runs where the op has no
//! kernel), and its tests. `cpu` and `cuda` are the plumbing the ops share; they import no op.
//!
//! Why fused ops: candle-nn's fused LayerNorm and softmax have no backward (training would
//! silently freeze everything below them), and composed from candle ops the attention, dense
//! layer and GELU make many passes over the activations (and on a GPU, many launches).

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512_gemm;
pub mod bf16;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dense;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod layer_norm;
pub mod matmul;
pub mod precision;
pub mod residual_norm;
pub mod softmax;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vmath;

pub use matmul::{Gemm, Mat, Start, Threads};
pub use precision::Precision;

#[cfg(feature = "cuda")]
pub mod adamw;
