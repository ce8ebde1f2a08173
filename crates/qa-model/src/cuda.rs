//! Our own CUDA kernels (the CUDA build only): CUDA C compiled to PTX with NVRTC at first use,
//! once per process and module, then loaded through candle's module cache.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};

use crate::dropout::PhiloxDropout;

/// The PTX of `source` (compiled once per `module` name).
pub fn ptx(module: &'static str, source: &'static str) -> Result<&'static str> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("not poisoned");
    if let Some(ptx) = cache.get(module) {
        return Ok(ptx);
    }
    let ptx = cudarc::nvrtc::compile_ptx(source)
        .map_err(|e| candle_core::Error::Msg(format!("NVRTC, module {module}: {e}")))?
        .to_src();
    let ptx: &'static str = Box::leak(ptx.into_boxed_str());
    cache.insert(module, ptx);
    Ok(ptx)
}

pub fn launch_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA kernel launch: {e}"))
}

/// The device address of a contiguous f32/f64 CUDA tensor's first element.
pub fn address(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("not a CUDA tensor");
    };
    if !layout.is_contiguous() {
        candle_core::bail!("not a contiguous tensor");
    }
    let stream = s.device.cuda_stream();
    let base = match t.dtype() {
        DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        DType::F64 => s.as_cuda_slice::<f64>()?.device_ptr(&stream).0,
        other => candle_core::bail!("unsupported dtype {other:?}"),
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// `PhiloxDropout` on a GPU: one thread per four elements, grid-stride.
pub(crate) fn philox_dropout(
    op: &PhiloxDropout,
    storage: &CudaStorage,
    layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    const MODULE: &str = "squad_qa_dropout";
    let dev = &storage.device;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("philox-dropout: contiguous input only");
    };
    let x = storage.as_cuda_slice::<f32>()?.slice(start..end);
    let n = (end - start) as u64;
    let mut y = unsafe { dev.alloc::<f32>(n as usize)? };
    let f = dev.get_or_load_custom_func(
        "philox_dropout",
        MODULE,
        ptx(MODULE, crate::dropout::CUDA_SOURCE)?,
    )?;
    let (key, stream, p, scale) = op.kernel_scalars();
    let threads = 256u32;
    let blocks = (n.div_ceil(4).div_ceil(u64::from(threads))).clamp(1, 4096) as u32;
    let mut b = f.builder();
    b.arg(&x).arg(&mut y).arg(&n);
    b.arg(&key[0])
        .arg(&key[1])
        .arg(&stream[0])
        .arg(&stream[1])
        .arg(&p)
        .arg(&scale);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.map_err(launch_error)?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        layout.shape().clone(),
    ))
}
