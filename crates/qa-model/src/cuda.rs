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

use self::Arg::{Float, Int, Ptr};

const FUSED: &str = "squad_qa_fused";
const ROW_THREADS: u32 = 128;

/// Device address of a contiguous f32 storage at its layout's start.
fn input(s: &CudaStorage, l: &Layout) -> Result<u64> {
    let Some((start, _)) = l.contiguous_offsets() else {
        candle_core::bail!("fused kernels take contiguous inputs only");
    };
    let stream = s.device.cuda_stream();
    let base = s.as_cuda_slice::<f32>()?.device_ptr(&stream).0;
    Ok(base + 4 * start as u64)
}

/// A new uninitialised f32 buffer of `n` elements and its address.
fn output(s: &CudaStorage, n: usize) -> Result<(cudarc::driver::CudaSlice<f32>, u64)> {
    let buf = unsafe { s.device.alloc::<f32>(n.max(1))? };
    let stream = s.device.cuda_stream();
    let at = buf.device_ptr(&stream).0;
    Ok((buf, at))
}

/// A kernel argument: a device address, a count or a scalar.
enum Arg {
    Ptr(u64),
    Int(i32),
    Float(f32),
}

/// Launches kernel `name` of the fused module with `args` in order, `ROW_THREADS` per block.
fn launch(s: &CudaStorage, name: &str, grid: (u32, u32), args: &[Arg]) -> Result<()> {
    let source = ptx(FUSED, crate::fused::CUDA_SOURCE)?;
    let f = s.device.get_or_load_custom_func(name, FUSED, source)?;
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
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.map_err(launch_error)?;
    Ok(())
}

fn layer_norm_stats(
    x: &CudaStorage,
    at: u64,
    rows: usize,
    d: i32,
    eps: f32,
) -> Result<cudarc::driver::CudaSlice<f32>> {
    let (stats, stats_at) = output(x, 2 * rows)?;
    launch(
        x,
        "layer_norm_stats",
        (rows as u32, 1),
        &[Ptr(at), Ptr(stats_at), Int(d), Float(eps)],
    )?;
    Ok(stats)
}

pub(crate) fn layer_norm_forward(
    eps: f64,
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let d = wl.shape().elem_count();
    let rows = xl.shape().elem_count() / d.max(1);
    let (x, w, b) = (input(xs, xl)?, input(ws, wl)?, input(bs, bl)?);
    let (d32, eps) = (d as i32, eps as f32);
    let stats = layer_norm_stats(xs, x, rows, d32, eps)?;
    let stream = xs.device.cuda_stream();
    let stats_at = stats.device_ptr(&stream).0;
    let (y, y_at) = output(xs, rows * d)?;
    let args = [Ptr(x), Ptr(stats_at), Ptr(w), Ptr(b), Ptr(y_at), Int(d32)];
    launch(xs, "layer_norm_apply", (rows as u32, 1), &args)?;
    drop(stats); // freed in stream order, after the kernels that read it
    Ok((
        CudaStorage::wrap_cuda_slice(y, xs.device.clone()),
        xl.shape().clone(),
    ))
}

pub(crate) fn layer_norm_backward(
    eps: f64,
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    use crate::fused::PARTS;
    let d = wl.shape().elem_count();
    let rows = xl.shape().elem_count() / d.max(1);
    let (x, w, g) = (input(xs, xl)?, input(ws, wl)?, input(gs, gl)?);
    let (d32, eps) = (d as i32, eps as f32);
    let stats = layer_norm_stats(xs, x, rows, d32, eps)?;
    let stream = xs.device.cuda_stream();
    let stats_at = stats.device_ptr(&stream).0;
    let (out, dx) = output(xs, (rows + 2 * PARTS) * d)?;
    let (dw, db) = (
        dx + 4 * (rows * d) as u64,
        dx + 4 * ((rows + PARTS) * d) as u64,
    );
    let args = [Ptr(x), Ptr(stats_at), Ptr(w), Ptr(g), Ptr(dx), Int(d32)];
    launch(xs, "layer_norm_grad_input", (rows as u32, 1), &args)?;
    let (rows32, parts) = (rows as i32, PARTS as i32);
    let col_blocks = (d as u32).div_ceil(ROW_THREADS);
    let args = [
        Ptr(x),
        Ptr(stats_at),
        Ptr(g),
        Ptr(dw),
        Ptr(db),
        Int(rows32),
        Int(d32),
        Int(parts),
    ];
    launch(
        xs,
        "layer_norm_grad_params",
        (col_blocks, PARTS as u32),
        &args,
    )?;
    drop(stats);
    let shape = Shape::from((rows + 2 * PARTS, d));
    Ok((CudaStorage::wrap_cuda_slice(out, xs.device.clone()), shape))
}

pub(crate) fn softmax_forward(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let d = l.shape().dims().last().copied().unwrap_or(1).max(1);
    let rows = l.shape().elem_count() / d;
    let x = input(s, l)?;
    let (y, y_at) = output(s, rows * d)?;
    let d32 = d as i32;
    launch(
        s,
        "softmax_forward",
        (rows as u32, 1),
        &[Ptr(x), Ptr(y_at), Int(d32)],
    )?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, s.device.clone()),
        l.shape().clone(),
    ))
}

pub(crate) fn softmax_backward(
    (ys, yl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let d = yl.shape().dims().last().copied().unwrap_or(1).max(1);
    let rows = yl.shape().elem_count() / d;
    let (y, g) = (input(ys, yl)?, input(gs, gl)?);
    let (dx, dx_at) = output(ys, rows * d)?;
    let d32 = d as i32;
    launch(
        ys,
        "softmax_backward",
        (rows as u32, 1),
        &[Ptr(y), Ptr(g), Ptr(dx_at), Int(d32)],
    )?;
    Ok((
        CudaStorage::wrap_cuda_slice(dx, ys.device.clone()),
        yl.shape().clone(),
    ))
}
