//! CUDA plumbing the ops share (the CUDA build only): CUDA C compiled to PTX with NVRTC at
//! first use, once per process and module, then loaded through candle's module cache; device
//! addresses of tensors and storages; one launch helper. It imports no op: each op module
//! holds its own source and launches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{CudaStorage, DType, Layout, Result, Storage, Tensor};

/// A CUDA module: its name in candle's module cache and its CUDA C source.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub name: &'static str,
    pub source: &'static str,
}

impl Module {
    /// The module's PTX (compiled once per process).
    pub fn ptx(&self) -> Result<&'static str> {
        static CACHE: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .expect("not poisoned");
        if let Some(ptx) = cache.get(self.name) {
            return Ok(ptx);
        }
        let ptx = cudarc::nvrtc::compile_ptx(self.source)
            .map_err(|e| candle_core::Error::Msg(format!("NVRTC, module {}: {e}", self.name)))?
            .to_src();
        let ptx: &'static str = Box::leak(ptx.into_boxed_str());
        cache.insert(self.name, ptx);
        Ok(ptx)
    }

    /// Kernel `kernel` of this module on `device`, compiled and loaded at first use.
    pub fn function(&self, device: &CudaDevice, kernel: &str) -> Result<Kernel> {
        let func = device
            .get_or_load_custom_func(kernel, self.name, self.ptx()?)?
            .into_cuda_function();
        Ok(Kernel {
            func,
            stream: device.cuda_stream(),
        })
    }
}

/// A loaded kernel and the stream it launches on (candle's own pair is not nameable).
pub struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    /// A launch builder: push the kernel's arguments in order, then `launch`.
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

pub fn launch_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA kernel launch: {e}"))
}

/// The CUDA device of `device`, or an error naming `op`.
pub fn cuda_device<'a>(device: &'a candle_core::Device, op: &str) -> Result<&'a CudaDevice> {
    match device {
        candle_core::Device::Cuda(d) => Ok(d),
        _ => candle_core::bail!("{op} runs on CUDA devices only"),
    }
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

/// Device address of a contiguous f32 storage at its layout's start.
pub fn input(s: &CudaStorage, l: &Layout) -> Result<u64> {
    let Some((start, _)) = l.contiguous_offsets() else {
        candle_core::bail!("fused kernels take contiguous inputs only");
    };
    let stream = s.device.cuda_stream();
    let base = s.as_cuda_slice::<f32>()?.device_ptr(&stream).0;
    Ok(base + 4 * start as u64)
}

/// A new uninitialised f32 buffer of `n` elements on `s`'s device, and its address.
pub fn output(s: &CudaStorage, n: usize) -> Result<(CudaSlice<f32>, u64)> {
    // SAFETY: every kernel that gets this buffer writes all `n` elements before anything
    // reads them (each launcher says so).
    let buf = unsafe { s.device.alloc::<f32>(n.max(1))? };
    let stream = s.device.cuda_stream();
    let at = buf.device_ptr(&stream).0;
    Ok((buf, at))
}

/// A kernel argument: a device address, a count or a scalar.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    Int(i32),
    Float(f32),
}

/// Launches `kernel` of `module` on `s`'s device with `args` in order, `threads` per block.
///
/// # Safety
/// `args` must match the kernel's parameter list in number, order and type, and every
/// address must point to a live buffer large enough for what the kernel reads and writes at
/// this grid size.
pub unsafe fn launch(
    s: &CudaStorage,
    module: Module,
    kernel: &str,
    (grid, threads): ((u32, u32), u32),
    args: &[Arg],
) -> Result<()> {
    let f = module.function(&s.device, kernel)?;
    let mut b = f.builder();
    for a in args {
        match a {
            Arg::Ptr(v) => b.arg(v),
            Arg::Int(v) => b.arg(v),
            Arg::Float(v) => b.arg(v),
        };
    }
    let cfg = LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the caller guarantees the arguments match the kernel (this function's contract).
    unsafe { b.launch(cfg) }.map_err(launch_error)?;
    Ok(())
}

/// Wraps a kernel's output buffer as candle storage.
pub fn storage(buf: CudaSlice<f32>, like: &CudaStorage) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(buf, like.device.clone())
}
