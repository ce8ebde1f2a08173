//! What the CPU kernels share: f32 views of candle storage, fixed row ranges for
//! deterministic partial sums, and a pointer tasks write disjoint parts
//! through.

use candle_core::{CpuStorage, Layout, Result};

/// Row ranges of the partial sums of parameter gradients (LayerNorm weight and bias, dense
/// bias): fixed ranges summed in a fixed order, so a gradient does not depend on the thread
/// count or the device's scheduling.
pub const PARTS: usize = 32;

/// Elements per parallel task of the element-wise ops.
pub const CHUNK: usize = 1 << 14;

/// The rows of partial sum `part` (of `PARTS`) when there are `rows` rows.
pub fn part_rows(part: usize, rows: usize) -> std::ops::Range<usize> {
    let per = rows.div_ceil(PARTS);
    (part * per).min(rows)..((part + 1) * per).min(rows)
}

/// The f32 elements of a contiguous CPU tensor; `op` names the caller in the error.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous inputs only");
    };
    Ok(&data[a..b])
}

/// The size of the last dimension (1 for a scalar).
pub fn last_dim(l: &Layout) -> usize {
    l.shape().dims().last().copied().unwrap_or(1).max(1)
}

/// A `len`-element buffer that `write` fills, without the zero-fill of `vec![0.0; len]` (a
/// pass over every output of the GEMM ops, ~2% of a step).
///
/// # Safety
/// `write` must write every one of the `len` elements through the pointer it is given and read
/// none of them before writing it.
pub unsafe fn written_by(len: usize, write: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    write(out.as_mut_ptr());
    // SAFETY: `write` initialised all `len` elements (the caller's contract).
    unsafe { out.set_len(len) };
    out
}

/// An output buffer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub struct DisjointWrites(pub *mut f32);
// SAFETY: the pointer is only written through by tasks that each own a disjoint part of the
// buffer (every user says which part), and the buffer outlives the tasks.
unsafe impl Send for DisjointWrites {}
// SAFETY: as for Send: no two tasks write the same element, none reads another's.
unsafe impl Sync for DisjointWrites {}
