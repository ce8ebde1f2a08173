//! Our GEMM for AVX-512, in f32 (`vfmadd231ps`) or bf16 (`vdpbf16ps`: inputs rounded to bf16
//! by `bf16::round_bits` as they are packed, each pair of products summed into f32):
//! `dst (+)= lhs · rhs`, one code path for both, `BF16` choosing at compile time.
//!
//! Goto's blocking over *units*: a u32 holding one f32, or a bf16 pair (k, k+1) of one row or
//! column. For each block of `KC` units of k, the thread's columns of `rhs` are packed once
//! into `NR`-wide panels, and each block of `MC` rows of `lhs` into units too, each unit's rows
//! side by side (`MR`-row slivers of a row-major lhs transposed in registers; a transposed lhs
//! read in order); the microkernel multiplies an `MR`-row sliver by a panel into `MR x NR` f32
//! accumulators held in 24 zmm registers. Threads split the longer side of the output (each
//! packs its share of that operand and all of the other).

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::bf16::round_bits;
use crate::cpu::DisjointWrites;
use crate::matmul::{Mat, Start};

/// Rows per microkernel tile.
const MR: usize = 12;
/// Columns per microkernel tile: two zmm registers of f32.
const NR: usize = 32;
/// Units of k per block: a packed panel (`KC x NR` u32, 24 KB) stays in L1.
const KC: usize = 192;
/// Rows per packed block of `lhs` (`MC x KC` u32, 72 KB): stays in L2.
const MC: usize = MR * 8;

/// k values per unit.
const fn per_unit(bf16: bool) -> usize {
    if bf16 {
        2
    } else {
        1
    }
}

thread_local! {
    /// Each thread's packed rows and panels, reused across calls.
    static PACKED: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst [m, n]` (rows `dst_rs` apart) = `start + lhs · rhs` on `threads` threads; `m, n, k`
/// > 0.
///
/// # Safety
/// As `Gemm::run`'s, and the CPU must have AVX512-F (and AVX512-BF16 for `BF16`).
pub unsafe fn gemm<const BF16: bool>(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    start: Start<'_>,
    (lhs, rhs): (Mat, Rhs<'_>),
) {
    let block = Block::<BF16> {
        k,
        dst: DisjointWrites(dst),
        dst_rs,
        start,
        lhs,
        rhs,
    };
    // Each thread packs its own share of one operand and all of the other: split the larger
    // side, so the smaller operand is the one packed twice; with rhs packed already, split
    // the rows unless there are too few to share.
    let by_columns = match rhs {
        Rhs::Strided(_) => n >= m,
        Rhs::Packed(_) => m < MR * threads,
    };
    let (len, tile) = if by_columns { (n, NR) } else { (m, MR) };
    let tiles = len.div_ceil(tile);
    let tasks = threads.min(tiles);
    let share =
        |t: usize| (t * tiles / tasks * tile).min(len)..((t + 1) * tiles / tasks * tile).min(len);
    let run = |t: usize| {
        let (rows, cols) = match by_columns {
            true => (0..m, share(t)),
            false => (share(t), 0..n),
        };
        // SAFETY: tasks write disjoint rows or columns of dst; the rest is the caller's.
        unsafe { block.run(rows, cols) }
    };
    match tasks {
        1 => run(0),
        _ => (0..tasks).into_par_iter().for_each(run),
    }
}

/// The right operand: a matrix to pack as the product goes, or one packed beforehand.
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    Strided(Mat),
    Packed(&'a PackedRhs),
}

/// `rhs [k, n]` packed once into the panels of every k-block, for a weight that many products
/// multiply by (inference): layout `[k-block][column tile][unit][NR]`.
#[derive(Debug)]
pub struct PackedRhs {
    pub bf16: bool,
    pub k: usize,
    pub n: usize,
    panels: Vec<u32>,
}

impl PackedRhs {
    /// # Safety
    /// `rhs` must cover `k x n` readable elements; the CPU must have AVX512-F.
    pub unsafe fn new<const BF16: bool>(rhs: Mat, (k, n): (usize, usize)) -> Self {
        let units = k.div_ceil(per_unit(BF16));
        let (mut panels, mut block_panels) = (Vec::new(), Vec::new());
        for u0 in (0..units).step_by(KC) {
            // SAFETY: the caller's contract.
            unsafe {
                pack_panels::<BF16>(rhs, k, u0..(u0 + KC).min(units), 0..n, &mut block_panels)
            };
            panels.extend_from_slice(&block_panels);
        }
        PackedRhs {
            bf16: BF16,
            k,
            n,
            panels,
        }
    }

    /// The panels of the k-block starting at unit `u0`, from the tile of column `j0` on.
    fn block(&self, u0: usize, kc: usize, j0: usize) -> &[u32] {
        let tiles = self.n.div_ceil(NR);
        &self.panels[u0 * tiles * NR + j0 / NR * kc * NR..]
    }
}

/// One product, of which a thread computes `dst[rows, cols]`.
#[derive(Clone, Copy)]
struct Block<'a, const BF16: bool> {
    k: usize,
    dst: DisjointWrites,
    dst_rs: usize,
    start: Start<'a>,
    lhs: Mat,
    rhs: Rhs<'a>,
}

// SAFETY: a packed rhs is only read; the rest is Send already.
unsafe impl<const BF16: bool> Send for Block<'_, BF16> {}
// SAFETY: as for Send.
unsafe impl<const BF16: bool> Sync for Block<'_, BF16> {}

impl<const BF16: bool> Block<'_, BF16> {
    unsafe fn run(&self, rows: Range<usize>, cols: Range<usize>) {
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
        rows: Range<usize>,
        cols: Range<usize>,
        packed_rows: &mut Vec<u32>,
        panels: &mut Vec<u32>,
    ) {
        let units = self.k.div_ceil(per_unit(BF16));
        for u0 in (0..units).step_by(KC) {
            let block = u0..(u0 + KC).min(units);
            // Later blocks of k add onto what the earlier ones stored.
            let start = if u0 == 0 { self.start } else { Start::Dst };
            // SAFETY: the reads stay inside lhs and rhs, the writes inside dst[rows, cols].
            unsafe {
                let panels: &[u32] = match self.rhs {
                    Rhs::Strided(rhs) => {
                        pack_panels::<BF16>(rhs, self.k, block.clone(), cols.clone(), panels);
                        panels
                    }
                    Rhs::Packed(packed) => packed.block(u0, block.len(), cols.start),
                };
                for m0 in rows.clone().step_by(MC) {
                    let chunk = m0..(m0 + MC).min(rows.end);
                    let layout = pack_rows::<BF16>(
                        self.lhs,
                        self.k,
                        block.clone(),
                        chunk.clone(),
                        packed_rows,
                    );
                    self.tiles(
                        block.len(),
                        (chunk, cols.clone()),
                        (packed_rows, layout),
                        panels,
                        start,
                    );
                }
            }
        }
    }

    /// Every `MR x NR` tile of `dst[rows, cols]` from the packed rows and panels.
    unsafe fn tiles(
        &self,
        kc: usize,
        (rows, cols): (Range<usize>, Range<usize>),
        (packed_rows, layout): (&[u32], RowLayout),
        panels: &[u32],
        start: Start<'_>,
    ) {
        for (jt, j0) in cols.clone().step_by(NR).enumerate() {
            let panel = &panels[jt * kc * NR..][..kc * NR];
            for (it, i0) in rows.clone().step_by(MR).enumerate() {
                let sliver = &packed_rows[it * layout.sliver..];
                let (h, w) = (MR.min(rows.end - i0), NR.min(cols.end - j0));
                // SAFETY: (i0, j0) + (h, w) lies inside dst[rows, cols].
                let c = unsafe { self.dst.0.add(i0 * self.dst_rs + j0) };
                let onto = match start {
                    Start::Zero => Onto::Nothing,
                    Start::Dst => Onto::Dst,
                    Start::Row(row) => Onto::Row(row[j0..].as_ptr()),
                };
                let out = Tile {
                    c,
                    c_rs: self.dst_rs,
                    h,
                    w,
                    onto,
                };
                // SAFETY: the sliver and panel hold kc units; c is h x w with rows dst_rs apart.
                unsafe {
                    match BF16 {
                        true => tile_bf16(kc, (sliver, layout), panel, out),
                        false => tile_f32(kc, (sliver, layout), panel, out),
                    }
                }
            }
        }
    }
}

/// Where packed rows keep unit p of row r: at index `(r / MR) * sliver + p * unit + r % MR`,
/// so that the microkernel reads each unit's `MR` rows side by side.
#[derive(Debug, Clone, Copy)]
struct RowLayout {
    sliver: usize,
    unit: usize,
}

/// The unit of `values` (one f32, or a bf16 pair; a missing second value is zero).
#[inline(always)]
fn unit<const BF16: bool>(first: f32, second: f32) -> u32 {
    match BF16 {
        true => u32::from(round_bits(first)) | u32::from(round_bits(second)) << 16,
        false => first.to_bits(),
    }
}

/// The units of a contiguous run of k values (`per_unit` values each; zero-padded).
#[inline(always)]
fn units_of_run<const BF16: bool>(src: &[f32], dst: &mut [u32]) {
    if BF16 {
        // Little-endian: the u16 halves of dst, in order, are the run's values in order.
        // SAFETY: dst's u32s are 2 * len u16s, aligned for u16.
        let halves =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u16, 2 * dst.len()) };
        for (h, &s) in halves.iter_mut().zip(src) {
            *h = round_bits(s);
        }
        let filled = src.len().min(halves.len());
        halves[filled..].fill(0);
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_bits();
        }
        let filled = src.len().min(dst.len());
        dst[filled..].fill(0);
    }
}

/// The units of two rows of k side by side (`second` unused in f32; empty: zeros).
#[inline(always)]
fn units_of_rows<const BF16: bool>(first: &[f32], second: &[f32], dst: &mut [u32]) {
    if BF16 && second.is_empty() {
        dst.iter_mut()
            .zip(first)
            .for_each(|(d, &a)| *d = unit::<BF16>(a, 0.0));
    } else if BF16 {
        dst.iter_mut()
            .zip(first.iter().zip(second))
            .for_each(|(d, (&a, &b))| *d = unit::<BF16>(a, b));
    } else {
        dst.iter_mut()
            .zip(first)
            .for_each(|(d, &a)| *d = a.to_bits());
    }
}

/// A contiguous run of `len` elements of `m` from `start` along its unit-stride side.
///
/// # Safety
/// The run must lie inside the matrix.
unsafe fn run<'a>(m: Mat, start: isize, len: usize) -> &'a [f32] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(m.ptr.offset(start), len) }
}

/// Rows `rows` of `lhs`, k-units `block`, laid out so that the microkernel finds each unit's
/// `MR` rows side by side: sliver after sliver, each unit after unit (row-major lhs, read a
/// sliver's rows at a time and transposed), or unit after unit across all the rows (lhs stored
/// transposed: read in order). Zero past `k` and past the last row.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_rows<const BF16: bool>(
    lhs: Mat,
    k: usize,
    block: Range<usize>,
    rows: Range<usize>,
    out: &mut Vec<u32>,
) -> RowLayout {
    let (kc, per) = (block.len(), per_unit(BF16));
    let padded = rows.len().div_ceil(MR) * MR;
    // Every element is written below: no zero-fill of the whole buffer.
    out.resize(padded * kc, 0);
    let (k0, k1) = (per * block.start, (per * block.end).min(k));
    if lhs.rs == 1 && lhs.cs != 1 {
        // Stored transposed: each k is a contiguous run over the rows.
        for (p, units) in out.chunks_exact_mut(padded).enumerate() {
            let kk = k0 + per * p;
            // SAFETY: columns kk (and kk + 1 when inside k), rows `rows`, lie inside lhs.
            let column = |kk: usize| unsafe {
                run(lhs, kk as isize * lhs.cs + rows.start as isize, rows.len())
            };
            let second: &[f32] = if BF16 && kk + 1 < k1 {
                column(kk + 1)
            } else {
                &[]
            };
            units_of_rows::<BF16>(column(kk), second, &mut units[..rows.len()]);
            units[rows.len()..].fill(0);
        }
        return RowLayout {
            sliver: MR,
            unit: padded,
        };
    }
    // Row-major: each sliver's rows in order (reading lhs along its rows), then interleaved
    // unit by unit (writing the sliver in order).
    let mut sliver_rows = [[0u32; KC]; MR];
    for (s, sliver) in out.chunks_exact_mut(MR * kc).enumerate() {
        let first = rows.start + s * MR;
        for (r, units) in sliver_rows.iter_mut().enumerate() {
            let units = &mut units[..kc];
            match first + r < rows.end {
                // SAFETY: the row lies inside lhs, and k0..k1 inside its columns.
                true => unsafe { units_of_row::<BF16>(lhs, first + r, k0..k1, units) },
                false => units.fill(0),
            }
        }
        // SAFETY: the sliver holds kc units of MR rows; the CPU has AVX512-F.
        unsafe { interleave(&sliver_rows, kc, sliver, MR) };
    }
    RowLayout {
        sliver: MR * kc,
        unit: MR,
    }
}

/// `out[p * stride + r] = rows[r][p]` for the first `kc` units and the `R <= 16` rows: 16
/// units at a time, transposed in registers (element by element, LLVM makes it a scatter).
///
/// # Safety
/// `out` must reach index `(kc - 1) * stride + R`, `kc <= KC`; the CPU must have AVX512-F.
#[target_feature(enable = "avx512f")]
unsafe fn interleave<const R: usize>(
    rows: &[[u32; KC]; R],
    kc: usize,
    out: &mut [u32],
    stride: usize,
) {
    const { assert!(R <= 16 && KC.is_multiple_of(16)) };
    assert!(kc <= KC && (kc == 0 || out.len() >= (kc - 1) * stride + R));
    let lanes = (1u32 << R).wrapping_sub(1) as u16;
    for p0 in (0..kc).step_by(16) {
        // Rows R..16 of the 16 x 16 transpose are zeros: lanes R..16 of each unit, unstored.
        let mut r = [_mm512_setzero_si512(); 16];
        for (reg, row) in r.iter_mut().zip(rows) {
            // SAFETY: p0 + 16 <= KC (p0 is a multiple of 16 below kc <= KC).
            *reg = unsafe { _mm512_loadu_si512(row[p0..].as_ptr() as *const _) };
        }
        for (l, unit) in transpose16(r).iter().enumerate().take(kc - p0) {
            // SAFETY: unit p0 + l < kc: its R lanes lie inside out.
            unsafe {
                let at = out[(p0 + l) * stride..].as_mut_ptr() as *mut i32;
                _mm512_mask_storeu_epi32(at, lanes, *unit)
            };
        }
    }
}

/// The 16 x 16 transpose of 16 rows of 16 u32 (`out[p]` lane `r` = `rows[r]` lane `p`): 32-bit
/// then 64-bit unpacks, then two rounds of 128-bit lane shuffles.
#[inline(always)]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // SAFETY: register-only intrinsics; the callers enable AVX512-F.
    unsafe {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in (0..16).step_by(2) {
            t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
        }
        // u[4g + j] holds, in each 128-bit lane q, units 4q + j of rows 4g..4g + 4.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (a, b) = (4 * g, 4 * g + 2);
            u[a] = _mm512_unpacklo_epi64(t[a], t[b]);
            u[a + 1] = _mm512_unpackhi_epi64(t[a], t[b]);
            u[a + 2] = _mm512_unpacklo_epi64(t[a + 1], t[b + 1]);
            u[a + 3] = _mm512_unpackhi_epi64(t[a + 1], t[b + 1]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let even_lo = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
            let odd_lo = _mm512_shuffle_i32x4::<0xdd>(u[j], u[4 + j]);
            let even_hi = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
            let odd_hi = _mm512_shuffle_i32x4::<0xdd>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_i32x4::<0x88>(even_lo, even_hi);
            out[8 + j] = _mm512_shuffle_i32x4::<0xdd>(even_lo, even_hi);
            out[4 + j] = _mm512_shuffle_i32x4::<0x88>(odd_lo, odd_hi);
            out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(odd_lo, odd_hi);
        }
        out
    }
}

/// The units of row `i` of a row-major `lhs` over columns `ks` (zero past its end).
///
/// # Safety
/// Row i, columns `ks`, must lie inside lhs.
#[inline(always)]
unsafe fn units_of_row<const BF16: bool>(lhs: Mat, i: usize, ks: Range<usize>, units: &mut [u32]) {
    if lhs.cs == 1 {
        // SAFETY: the caller's contract.
        let values = unsafe { run(lhs, i as isize * lhs.rs + ks.start as isize, ks.len()) };
        return units_of_run::<BF16>(values, units);
    }
    let at = |kk: usize| match kk < ks.end {
        // SAFETY: the caller's contract (kk < ks.end checked).
        true => unsafe { lhs.at(i, kk) },
        false => 0.0,
    };
    let per = per_unit(BF16);
    for (p, u) in units.iter_mut().enumerate() {
        let kk = ks.start + per * p;
        *u = unit::<BF16>(at(kk), at(kk + 1));
    }
}

/// Columns `cols` of `rhs`, k-units `block`, as `NR`-wide panels: for each unit p, the `NR`
/// columns' units side by side (zero past `k` and past the last column).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_panels<const BF16: bool>(
    rhs: Mat,
    k: usize,
    block: Range<usize>,
    cols: Range<usize>,
    out: &mut Vec<u32>,
) {
    let (kc, per) = (block.len(), per_unit(BF16));
    // Every element is written below: no zero-fill of the whole buffer.
    out.resize(cols.len().div_ceil(NR) * kc * NR, 0);
    let (k0, k1) = (per * block.start, (per * block.end).min(k));
    if rhs.cs == 1 {
        // Row-major: each unit's rows read in order across all the columns, dealt to the panels.
        for p in 0..kc {
            let kk = k0 + per * p;
            // SAFETY: rows kk (and kk + 1 inside k), columns `cols`, lie inside rhs.
            let row = |kk: usize| unsafe {
                run(rhs, kk as isize * rhs.rs + cols.start as isize, cols.len())
            };
            let (first, second) = (row(kk), BF16 && kk + 1 < k1);
            let second: &[f32] = if second { row(kk + 1) } else { &[] };
            for (t, panel) in out.chunks_exact_mut(kc * NR).enumerate() {
                let tile = t * NR..(t * NR + NR).min(cols.len());
                let second = second.get(tile.clone()).unwrap_or(&[]);
                let units = &mut panel[p * NR..][..NR];
                units_of_rows::<BF16>(&first[tile.clone()], second, &mut units[..tile.len()]);
                units[tile.len()..].fill(0);
            }
        }
        return;
    }
    // Otherwise column by column (contiguous when rhs is a weight read as W^T), 16 at a time,
    // transposed into the panel.
    let mut columns = [[0u32; KC]; 16];
    for (t, panel) in out.chunks_exact_mut(kc * NR).enumerate() {
        for half in 0..NR / 16 {
            let j0 = cols.start + t * NR + half * 16;
            for (dj, units) in columns.iter_mut().enumerate() {
                let units = &mut units[..kc];
                match j0 + dj < cols.end {
                    // SAFETY: column j0 + dj lies inside rhs, rows k0..k1 inside its rows.
                    true => unsafe { units_of_column::<BF16>(rhs, j0 + dj, k0..k1, units) },
                    false => units.fill(0),
                }
            }
            // SAFETY: the panel holds kc units of NR columns; the CPU has AVX512-F.
            unsafe { interleave(&columns, kc, &mut panel[half * 16..], NR) };
        }
    }
}

/// The units of column `j` of `rhs` over rows `ks` (zero past its end).
///
/// # Safety
/// Column j, rows `ks`, must lie inside rhs.
#[inline(always)]
unsafe fn units_of_column<const BF16: bool>(
    rhs: Mat,
    j: usize,
    ks: Range<usize>,
    units: &mut [u32],
) {
    // SAFETY: the caller's contract, for lhs = rhs^T.
    unsafe { units_of_row::<BF16>(rhs.t(), j, ks, units) }
}

/// Where a tile's results go: `c [h, w]`, rows `c_rs` apart, added onto `onto`.
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    c_rs: usize,
    h: usize,
    w: usize,
    onto: Onto,
}

/// What a tile's results are added onto (`Start` at the tile).
#[derive(Clone, Copy)]
enum Onto {
    Nothing,
    /// The tile's own values in dst.
    Dst,
    /// The same `w` values under each row (the start row from the tile's first column).
    Row(*const f32),
}

impl Onto {
    /// The row `r`'s base to add onto, if any.
    #[inline(always)]
    fn base(self, c: *mut f32, c_rs: usize, r: usize) -> Option<*const f32> {
        match self {
            Onto::Nothing => None,
            // SAFETY (for the caller's reads): row r of the tile lies in dst.
            Onto::Dst => Some(c.wrapping_add(r * c_rs)),
            Onto::Row(row) => Some(row),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_bf16(kc: usize, sliver: (&[u32], RowLayout), panel: &[u32], out: Tile) {
    // SAFETY: the caller's contract; the CPU has AVX512-BF16.
    unsafe { tile::<true>(kc, sliver, panel, out) }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile_f32(kc: usize, sliver: (&[u32], RowLayout), panel: &[u32], out: Tile) {
    // SAFETY: the caller's contract.
    unsafe { tile::<false>(kc, sliver, panel, out) }
}

/// `out` (+)= sliver `[MR, kc units]` · panel `[kc units, NR]`: the microkernel. Inlined into
/// `tile_f32` / `tile_bf16`, which enable the instructions it uses.
#[inline(always)]
unsafe fn tile<const BF16: bool>(
    kc: usize,
    (sliver, layout): (&[u32], RowLayout),
    panel: &[u32],
    out: Tile,
) {
    // The tile's dst rows were last touched a whole pass over dst ago (far out of cache when
    // k spans several blocks): fetch them while the loop below runs, not when it stores.
    for r in 0..out.h {
        let row = out.c.wrapping_add(r * out.c_rs) as *const i8;
        // SAFETY: prefetches never fault; row r of the tile lies in dst.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64));
        }
    }
    // SAFETY: the callers enable AVX512-F.
    let (mut lo, mut hi) = unsafe { ([_mm512_setzero_ps(); MR], [_mm512_setzero_ps(); MR]) };
    let (a, b) = (sliver.as_ptr() as *const i32, panel.as_ptr());
    for p in 0..kc {
        // SAFETY: the panel holds kc rows of NR units, the sliver kc units of MR rows where
        // its layout says.
        unsafe {
            let b_lo = _mm512_loadu_si512(b.add(p * NR) as *const _);
            let b_hi = _mm512_loadu_si512(b.add(p * NR + 16) as *const _);
            for r in 0..MR {
                let a_r = _mm512_set1_epi32(*a.add(p * layout.unit + r));
                if BF16 {
                    let bh = |v: __m512i| std::mem::transmute::<__m512i, __m512bh>(v);
                    let (a_r, b_lo, b_hi) = (bh(a_r), bh(b_lo), bh(b_hi));
                    lo[r] = _mm512_dpbf16_ps(lo[r], a_r, b_lo);
                    hi[r] = _mm512_dpbf16_ps(hi[r], a_r, b_hi);
                } else {
                    let a_r = _mm512_castsi512_ps(a_r);
                    lo[r] = _mm512_fmadd_ps(a_r, _mm512_castsi512_ps(b_lo), lo[r]);
                    hi[r] = _mm512_fmadd_ps(a_r, _mm512_castsi512_ps(b_hi), hi[r]);
                }
            }
        }
    }
    // SAFETY: the caller's contract on `out`.
    unsafe { store(&lo, &hi, out) }
}

/// The accumulators into `out`: straight for a whole tile, through a scratch tile for a
/// partial one.
#[inline(always)]
unsafe fn store(lo: &[__m512; MR], hi: &[__m512; MR], out: Tile) {
    let Tile {
        c,
        c_rs,
        h,
        w,
        onto,
    } = out;
    if h == MR && w == NR {
        for r in 0..MR {
            // SAFETY: the tile is whole: row r has NR writable elements at c + r * c_rs, and
            // its base (dst's row or the start row) NR readable ones.
            unsafe {
                let row = c.add(r * c_rs);
                let (mut x, mut y) = (lo[r], hi[r]);
                if let Some(base) = onto.base(c, c_rs, r) {
                    x = _mm512_add_ps(x, _mm512_loadu_ps(base));
                    y = _mm512_add_ps(y, _mm512_loadu_ps(base.add(16)));
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
        let base = onto.base(c, c_rs, r);
        for (j, &v) in whole[r * NR..][..w].iter().enumerate() {
            // SAFETY: row r of the partial tile has w writable elements, its base w readable
            // ones.
            unsafe {
                *c.add(r * c_rs + j) = match base {
                    Some(b) => v + *b.add(j),
                    None => v,
                }
            };
        }
    }
}
