#!/usr/bin/env bash
# Builds the binaries with candle's CUDA backend (cargo feature `cuda`) into their own target
# directory, so the CPU build (`make test`, CI) is untouched:
#   scripts/build_cuda.sh [cargo args...]        -> $CUDA_TARGET_DIR/release/{qa-train,qa-eval,qa-infer,...}
#                                                  (+ the GPU test binary, + clippy of the CUDA code)
#
# With a CUDA toolkit installed (nvcc on PATH, libcuda/cublas/curand where the linker looks),
# this is a plain `cargo build --release --features cuda`. Without one (no GPU, no driver:
# a build machine), set SQUAD_CUDA_FROM_PYPI=1 and the toolchain comes from pinned PyPI wheels
# (CUDA 13.0, nvcc 13.0.88: PTX that driver 580 loads; a link-time libcuda stub), see
# ../shared/cuda/README.md or scripts/cuda_toolchain.sh (NCCL from the nvidia-nccl-cu13 wheel). The first build takes ~20 minutes
# (candle-kernels' PTX); later ones only rebuild what changed.
#
# CUDA_COMPUTE_CAP picks the GPU generation (90 = H100/H200, 80 = A100, 89 = L4/4090);
# with a toolkit and a GPU present candle reads it from nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/cuda}
if [ "${SQUAD_CUDA_FROM_PYPI:-0}" = 1 ] || ! command -v nvcc >/dev/null; then
  cargo fetch --locked
  # shellcheck source=cuda_toolchain.sh
  source scripts/cuda_toolchain.sh "${SQUAD_CUDA_PREFIX:-$HOME/.cache/squad-qa-cuda}"
fi
command -v nvcc >/dev/null || { echo "build_cuda: no nvcc (install the CUDA toolkit, or set SQUAD_CUDA_FROM_PYPI=1)" >&2; exit 1; }
echo "build_cuda: $(nvcc --version | tail -1); CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-auto}; target $CARGO_TARGET_DIR" >&2
FEATURES=qa-train/cuda,qa-eval/cuda,qa-infer/cuda,qa-serve/cuda
# With MPI (mpicc found, or MPI=1): data-parallel training with NCCL on the GPUs.
MPI=${MPI-$(command -v mpicc >/dev/null && echo 1)}
[ -n "$MPI" ] && FEATURES=$FEATURES,qa-train/nccl,qa-eval/mpi
cargo build --release --locked --bins --features $FEATURES "$@"
# The GPU parity tests (crates/qa-train/tests/gpu.rs), in the release profile so they reuse
# the binaries' dependencies; scripts/gpu_bundle.sh carries them. SQUAD_CUDA_TESTS=0 skips.
if [ "${SQUAD_CUDA_TESTS:-1}" = 1 ]; then
  cargo test --release --locked --workspace --no-run --test gpu --features $FEATURES "$@"
fi
# Lints of the CUDA-only code (CI's clippy cannot see it). SQUAD_CUDA_CLIPPY=0 skips.
if [ "${SQUAD_CUDA_CLIPPY:-1}" = 1 ]; then
  cargo clippy --release --locked --workspace --all-targets --features $FEATURES "$@" -- -D warnings
fi
