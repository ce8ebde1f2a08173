//! The bf16 GEMM on AVX512-BF16: `dst (+)= lhs · rhs` with both inputs rounded to bf16
//! (`bf16::round_bits`) as they are packed, and each pair of products summed into f32 by
//! `vdpbf16ps` (`_mm512_dpbf16_ps`).
//!
//! Goto's blocking: for each block of `KC` k-pairs, the thread's columns of `rhs` are packed
//! once into `NR`-wide panels (pair-interleaved: the pair (k, k+1) of column j is one u32), and
//! for each block of `MC` rows of `lhs` the rows are packed as bf16 in k order (so a pair is a
//! u32 there too); the microkernel then multiplies an `MR x 2p` sliver by a `2p x NR` panel
//! into `MR x NR` f32 accumulators held in 24 zmm registers. Threads split the longer side of
//! the output (each packs its share of that operand and all of the other).

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use crate::bf16::round_bits;
use crate::cpu::DisjointWrites;
use crate::matmul::Mat;

/// Rows per microkernel tile.
const MR: usize = 12;
/// Columns per microkernel tile: two zmm registers of f32.
const NR: usize = 32;
/// k-pairs per block: a packed panel (`KC x NR` u32, 24 KB) stays in L1.
const KC: usize = 192;
/// Rows per packed block of `lhs` (`MC x 2 KC` bf16, 72 KB): stays in L2.
const MC: usize = MR * 8;

thread_local! {
    /// Each thread's packed rows and panels, reused across calls.
    static PACKED: RefCell<(Vec<u16>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst [m, n]` (rows `dst_rs` apart) = `lhs · rhs` (+ `dst` when `accumulate`) on `threads`
/// threads; `m, n, k` > 0.
///
/// # Safety
/// As `Gemm::run`'s, and the CPU must have AVX512-F and AVX512-BF16.
pub unsafe fn gemm(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) {
    let dst = DisjointWrites(dst);
    let (n_tiles, m_tiles) = (n.div_ceil(NR), m.div_ceil(MR));
    // Each thread packs its own share of one operand and all of the other: split the larger
    // side, so the smaller operand is the one packed twice.
    let by_columns = n >= m;
    let (tiles, tile) = if by_columns { (n_tiles, NR) } else { (m_tiles, MR) };
    let tasks = threads.min(tiles);
    let range = |t: usize, len: usize| (t * tiles / tasks * tile).min(len)..((t + 1) * tiles / tasks * tile).min(len);
    let run = |t: usize| {
        let (rows, cols) = match by_columns {
            true => (0..m, range(t, n)),
            false => (range(t, m), 0..n),
        };
        let block = Block { k, dst, dst_rs, accumulate, lhs, rhs };
        // SAFETY: tasks write disjoint rows or columns of dst; the rest is the caller's.
        unsafe { block.run(rows, cols) }
    };
    match tasks {
        1 => run(0),
        _ => (0..tasks).into_par_iter().for_each(run),
    }
}

/// One thread's part of a product.
#[derive(Clone, Copy)]
struct Block {
    k: usize,
    dst: DisjointWrites,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
}

impl Block {
    /// `dst[rows, cols]`.
    unsafe fn run(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        PACKED.with(|cell| {
            let mut fresh = Default::default();
            let mut held = cell.try_borrow_mut();
            let (packed_rows, panels) = match held.as_deref_mut() {
                Ok(buffers) => buffers,
                Err(_) => &mut fresh,
            };
            // SAFETY: the caller's contract.
            unsafe { self.run_with(rows, cols, packed_rows, panels) }
        })
    }

    unsafe fn run_with(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        packed_rows: &mut Vec<u16>,
        panels: &mut Vec<u32>,
    ) {
        let pairs = self.k.div_ceil(2);
        for k0 in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - k0);
            // SAFETY: the reads stay inside lhs and rhs, the writes inside dst[rows, cols].
            unsafe {
                pack_panels(self.rhs, self.k, k0..k0 + kc, cols.clone(), panels);
                for m0 in rows.clone().step_by(MC) {
                    let m_end = (m0 + MC).min(rows.end);
                    pack_rows(self.lhs, self.k, k0..k0 + kc, m0..m_end, packed_rows);
                    let accumulate = self.accumulate || k0 > 0;
                    self.tiles(kc, (m0..m_end, cols.clone()), packed_rows, panels, accumulate);
                }
            }
        }
    }

    /// Every `MR x NR` tile of `dst[rows, cols]` from the packed rows and panels.
    unsafe fn tiles(
        &self,
        kc: usize,
        (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
        packed_rows: &[u16],
        panels: &[u32],
        accumulate: bool,
    ) {
        for (jt, j0) in cols.clone().step_by(NR).enumerate() {
            let panel = &panels[jt * kc * NR..][..kc * NR];
            for (it, i0) in rows.clone().step_by(MR).enumerate() {
                let sliver = &packed_rows[it * MR * 2 * kc..][..MR * 2 * kc];
                let (h, w) = (MR.min(rows.end - i0), NR.min(cols.end - j0));
                // SAFETY: (i0, j0) + (h, w) lies inside dst[rows, cols].
                let c = unsafe { self.dst.0.add(i0 * self.dst_rs + j0) };
                // SAFETY: the sliver and panel hold kc pairs; c is h x w with rows dst_rs apart.
                unsafe { tile(kc, sliver, panel, (c, self.dst_rs), (h, w), accumulate) };
            }
        }
    }
}

/// Rows `rows` of `lhs`, k-pairs `pairs`, as bf16 in k order: `MR` rows after another per
/// tile, each `2 * pairs.len()` long (zero past `k` and past the last row). Reads run along
/// whichever of rows and columns is contiguous.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_rows(lhs: Mat, k: usize, pairs: std::ops::Range<usize>, rows: std::ops::Range<usize>, out: &mut Vec<u16>) {
    let width = 2 * pairs.len();
    let tiles = rows.len().div_ceil(MR);
    out.clear();
    out.resize(tiles * MR * width, 0);
    let (k0, k1) = (2 * pairs.start, (2 * pairs.end).min(k));
    if lhs.cs == 1 || lhs.rs != 1 {
        for (r, row) in out.chunks_exact_mut(width).take(rows.len()).enumerate() {
            let i = rows.start + r;
            match lhs.cs {
                // SAFETY: row i, columns k0..k1 lie inside lhs.
                1 => round_into(unsafe { std::slice::from_raw_parts(lhs.ptr.offset(i as isize * lhs.rs + k0 as isize), k1 - k0) }, row),
                // SAFETY: i < m and kk < k.
                _ => row.iter_mut().zip(k0..k1).for_each(|(x, kk)| *x = round_bits(unsafe { lhs.at(i, kk) })),
            }
        }
        return;
    }
    // Stored transposed: each k is a contiguous run over the rows.
    for kk in k0..k1 {
        // SAFETY: column kk, rows `rows`, lies inside lhs (rs == 1).
        let column = unsafe { std::slice::from_raw_parts(lhs.ptr.offset(kk as isize * lhs.cs + rows.start as isize), rows.len()) };
        for (r, &v) in column.iter().enumerate() {
            out[r * width + kk - k0] = round_bits(v);
        }
    }
}

/// `dst[i] = round_bits(src[i])` (vectorised: the rounding is integer arithmetic).
#[inline(always)]
fn round_into(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = round_bits(s);
    }
}

/// Columns `cols` of `rhs`, k-pairs `pairs`, as `NR`-wide panels: for each pair p, the `NR`
/// columns' (row 2p, row 2p + 1) as one u32 each (zero past `k` and past the last column).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_panels(rhs: Mat, k: usize, pairs: std::ops::Range<usize>, cols: std::ops::Range<usize>, out: &mut Vec<u32>) {
    let kc = pairs.len();
    let tiles = cols.len().div_ceil(NR);
    out.clear();
    out.resize(tiles * kc * NR, 0);
    let value = |kk: usize, j: usize| {
        // SAFETY: j < n; kk is checked against k.
        if kk < k { round_bits(unsafe { rhs.at(kk, j) }) } else { 0 }
    };
    let (k0, k1) = (2 * pairs.start, (2 * pairs.end).min(k));
    for (t, panel) in out.chunks_exact_mut(kc * NR).enumerate() {
        let j0 = cols.start + t * NR;
        let width = NR.min(cols.end - j0);
        if rhs.rs == 1 && rhs.cs != 1 {
            // Stored transposed (a weight read as W^T): each column's pairs are adjacent.
            let mut rounded = [0u16; 2 * KC];
            for dj in 0..width {
                // SAFETY: column j0 + dj, rows k0..k1, lies inside rhs (rs == 1).
                let column = unsafe { std::slice::from_raw_parts(rhs.ptr.offset((j0 + dj) as isize * rhs.cs + k0 as isize), k1 - k0) };
                round_into(column, &mut rounded[..k1 - k0]);
                rounded[k1 - k0..].fill(0);
                for p in 0..kc {
                    panel[p * NR + dj] = u32::from(rounded[2 * p]) | u32::from(rounded[2 * p + 1]) << 16;
                }
            }
            continue;
        }
        if rhs.cs == 1 {
            // Row-major: the two rows of a pair are contiguous runs over the columns.
            let (mut even, mut odd) = ([0u16; NR], [0u16; NR]);
            for (p, pair_row) in panel.chunks_exact_mut(NR).enumerate() {
                let kk = 2 * (pairs.start + p);
                for (rounded, row) in [(&mut even, kk), (&mut odd, kk + 1)] {
                    match row < k {
                        // SAFETY: row `row`, columns j0..j0 + width, lies inside rhs.
                        true => round_into(unsafe { std::slice::from_raw_parts(rhs.ptr.offset(row as isize * rhs.rs + j0 as isize), width) }, rounded),
                        false => rounded.fill(0),
                    }
                }
                for ((x, &e), &o) in pair_row.iter_mut().zip(&even).zip(&odd).take(width) {
                    *x = u32::from(e) | u32::from(o) << 16;
                }
            }
            continue;
        }
        for (p, pair_row) in panel.chunks_exact_mut(NR).enumerate() {
            let kk = 2 * (pairs.start + p);
            for (dj, x) in pair_row.iter_mut().take(width).enumerate() {
                let j = j0 + dj;
                *x = u32::from(value(kk, j)) | u32::from(value(kk + 1, j)) << 16;
            }
        }
    }
}

/// `c [h, w]` (+)= sliver `[MR, 2 kc]` · panel `[2 kc, NR]`, the top-left `h x w` of the tile.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(kc: usize, sliver: &[u16], panel: &[u32], (c, c_rs): (*mut f32, usize), (h, w): (usize, usize), accumulate: bool) {
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let a = sliver.as_ptr() as *const i32;
    let b = panel.as_ptr();
    for p in 0..kc {
        // SAFETY: the panel holds kc rows of NR u32, the sliver MR rows of kc pairs.
        unsafe {
            let b_lo: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b_hi: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            for r in 0..MR {
                let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * kc + p)));
                lo[r] = _mm512_dpbf16_ps(lo[r], pair, b_lo);
                hi[r] = _mm512_dpbf16_ps(hi[r], pair, b_hi);
            }
        }
    }
    if h == MR && w == NR {
        for r in 0..MR {
            // SAFETY: the tile is whole: row r has NR writable elements at c + r * c_rs.
            unsafe {
                let row = c.add(r * c_rs);
                let (mut x, mut y) = (lo[r], hi[r]);
                if accumulate {
                    x = _mm512_add_ps(x, _mm512_loadu_ps(row));
                    y = _mm512_add_ps(y, _mm512_loadu_ps(row.add(16)));
                }
                _mm512_storeu_ps(row, x);
                _mm512_storeu_ps(row.add(16), y);
            }
        }
        return;
    }
    let mut whole = [0f32; MR * NR];
    for r in 0..MR {
        // SAFETY: `whole` has MR rows of NR.
        unsafe {
            _mm512_storeu_ps(whole.as_mut_ptr().add(r * NR), lo[r]);
            _mm512_storeu_ps(whole.as_mut_ptr().add(r * NR + 16), hi[r]);
        }
    }
    for r in 0..h {
        // SAFETY: row r of the partial tile has w writable elements.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * c_rs), w) };
        for (x, &v) in row.iter_mut().zip(&whole[r * NR..]) {
            *x = if accumulate { *x + v } else { v };
        }
    }
}
