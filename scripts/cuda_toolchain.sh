# Build-time CUDA 13.0 toolchain from PyPI wheels, for candle's `cuda` feature on a machine
# without a GPU, driver or CUDA toolkit. Sourced by scripts/build_cuda.sh (SQUAD_CUDA_FROM_PYPI=1):
#   source scripts/cuda_toolchain.sh [PREFIX]      (default $HOME/.cache/squad-qa-cuda)
# Versions match torch's cu130 wheels and driver 580 (CUDA 13.0, PTX ISA 9.0): do NOT use
# nvcc >= 13.1 for such a driver, its PTX (ISA 9.1+) does not load there.
# Needs the crates downloaded first (`cargo fetch`): the libcuda stub is generated from cudarc's
# list of driver symbols.
_prefix=${1:-$HOME/.cache/squad-qa-cuda}
if [ ! -x "$_prefix/venv/bin/nvcc-ok" ]; then
  python3 -m venv "$_prefix/venv"
  "$_prefix/venv/bin/pip" install -q \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3
  _nv=$(echo "$_prefix"/venv/lib/python3*/site-packages/nvidia/cu13)
  mkdir -p "$_prefix/link"
  # A link-time-only libcuda.so (soname libcuda.so.1): the driver's real one is used at run time.
  grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs \
    | awk '{print $4}' | sort -u | sed 's/.*/void &(void){}/' > "$_prefix/link/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$_prefix/link/libcuda.so" "$_prefix/link/cuda_stub.c"
  # Unversioned names for -lcudart -lnvrtc -lcurand -lcublas -lcublasLt (wheels ship .so.N).
  ln -sf "$_nv/lib/libcudart.so.13"   "$_prefix/link/libcudart.so"
  ln -sf "$_nv/lib/libnvrtc.so.13"    "$_prefix/link/libnvrtc.so"
  ln -sf "$_nv/lib/libcurand.so.10"   "$_prefix/link/libcurand.so"
  ln -sf "$_nv/lib/libcublas.so.13"   "$_prefix/link/libcublas.so"
  ln -sf "$_nv/lib/libcublasLt.so.13" "$_prefix/link/libcublasLt.so"
  touch "$_prefix/venv/bin/nvcc-ok"
fi
# NCCL for the data-parallel GPU build (qa-train/nccl): headers are not needed (cudarc has
# its own bindings, for NCCL 2.30), only a libnccl.so to link against.
if [ ! -e "$_prefix/venv/bin/nccl-ok" ]; then
  "$_prefix/venv/bin/pip" install -q nvidia-nccl-cu13==2.30.7
  _nccl=$(echo "$_prefix"/venv/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2)
  [ -e "$_nccl" ] || _nccl=$(echo "$_prefix"/venv/lib/python3*/site-packages/nvidia/cu13/lib/libnccl.so.2)
  ln -sf "$_nccl" "$_prefix/link/libnccl.so"
  touch "$_prefix/venv/bin/nccl-ok"
fi
_nv=$(echo "$_prefix"/venv/lib/python3*/site-packages/nvidia/cu13)
export PATH="$_nv/bin:$PATH"                          # nvcc (cudaforge looks it up on PATH)
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}       # no nvidia-smi here; 90 -> sm_90a (H100/H200)
export CUDARC_CUDA_VERSION=13000                      # cudarc's CUDA 13.0 bindings
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-1}      # nvcc jobs in candle-kernels' build script
export LIBRARY_PATH="$_prefix/link${LIBRARY_PATH:+:$LIBRARY_PATH}"
