//! What the CPU kernels share: f32 views of candle storage, fixed row ranges for
//! deterministic partial sums, and a pointer tasks write disjoint parts
//! through.

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

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

/// A chunk of a new buffer, zeroed by the task about to fill it (while the chunk is in its
/// cache) and handed out initialised.
pub fn zeroed<T: Copy + Default>(chunk: &mut [MaybeUninit<T>]) -> &mut [T] {
    chunk.fill(MaybeUninit::new(T::default()));
    // SAFETY: every element was just initialised, and MaybeUninit<T> has T's layout.
    unsafe { &mut *(chunk as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// A `len`-element buffer whose chunks of `chunk` elements `fill(range, values)` computes in
/// parallel. Each task zeroes its own chunk first (`zeroed`) instead of one thread zeroing all
/// of it up front as `vec![0.0; len]` does: that memset left the other core idle, ~3% of a
/// training step.
pub fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(Range<usize>, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, values)| {
            let start = i * chunk;
            fill(start..start + values.len(), zeroed(values))
        });
    // SAFETY: the chunks cover the `len` elements and `zeroed` initialised each of them.
    unsafe { out.set_len(len) };
    out
}

/// A buffer of consecutive `parts` (element ranges from 0, each starting where the last
/// ended) that `fill(part, values)` computes in parallel, each part zeroed by its own task
/// first (as in `par_filled`).
pub fn par_filled_parts(
    parts: &[Range<usize>],
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let len = parts.last().map_or(0, |p| p.end);
    let mut out = Vec::with_capacity(len);
    let mut rest = &mut out.spare_capacity_mut()[..len];
    let mut chunks = Vec::with_capacity(parts.len());
    let mut at = 0;
    for part in parts {
        assert_eq!(part.start, at, "parts must follow each other");
        let (chunk, tail) = rest.split_at_mut(part.len());
        chunks.push(chunk);
        (rest, at) = (tail, part.end);
    }
    chunks
        .into_par_iter()
        .enumerate()
        .for_each(|(i, values)| fill(i, zeroed(values)));
    // SAFETY: the parts cover the `len` elements and `zeroed` initialised each of them.
    unsafe { out.set_len(len) };
    out
}

/// A tensor's values on the host, in order. A contiguous f32 CPU tensor is copied by parallel
/// tasks: a step's gradients are 91 MB for MiniLM, which `to_vec1` copies on one thread while
/// the other core idles.
pub fn host_values(t: &Tensor) -> Result<Vec<f32>> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(par_copied(&data[a..b]));
        }
    }
    t.flatten_all()?.to_vec1()
}

/// A copy of `data` made by parallel tasks, each writing its chunk once (no zero-fill first:
/// a pass over a step's 91 MB of gradients).
fn par_copied(data: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    out.spare_capacity_mut()[..data.len()]
        .par_chunks_mut(CHUNK)
        .zip(data.par_chunks(CHUNK))
        .for_each(|(dst, src)| {
            // SAFETY: `dst` and `src` are chunks of the same length of two distinct buffers.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len())
            }
        });
    // SAFETY: the chunks cover the `len` elements and each was written from `data`.
    unsafe { out.set_len(data.len()) };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel copy is the input, element for element, for lengths around the chunk.
    #[test]
    fn par_copied_copies_every_element() {
        for len in [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 5] {
            let data: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            assert_eq!(par_copied(&data), data, "len {len}");
        }
    }
}
