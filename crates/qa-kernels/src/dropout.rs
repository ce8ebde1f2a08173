//! Dropout from a counter-based generator: Philox4x32-10 keyed by the run's seed, with the
//! counter made of the element's place and a per-call stream number (optimizer step and the
//! call's position in the step: the dropout site). An element's place is its row's position
//! in the global batch and its position in that row as the model sees it (token, feature;
//! head, query, key), never its index in a padded local tensor, so every mask bit is a pure
//! function of (seed, step, site, global row, head, token positions): masks are drawn in
//! parallel, do not depend on the thread count, the padded length, how a global batch is
//! split across processes, or the device, and a run resumes from (seed, step) alone. This
//! op's backward redraws its mask from the counters (nothing is stored); the fused
//! attention, whose masks are large and redrawn often, keeps its forward mask as bits
//! instead (`attention`).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Philox4x32-10 (Salmon et al., SC'11; Random123's constants).
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = u64::from(c[0]) * 0xD251_1F53;
        let p1 = u64::from(c[2]) * 0xCD9E_8D57;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k[0] = k[0].wrapping_add(0x9E37_79B9);
        k[1] = k[1].wrapping_add(0xBB67_AE85);
    }
    c
}

/// `y = x * mask / (1 - p)` with the mask of one (seed, stream): the element with counter
/// `c` (see `MaskLayout`) is kept when the uniform from word `c % 4` of Philox(counter =
/// (c / 4, stream), key = seed) is >= p.
#[derive(Debug, Clone, Copy)]
pub struct PhiloxDropout {
    pub seed: u64,
    pub stream: u64,
    pub p: f32,
    /// The global-batch position of the tensor's batch row 0.
    pub first_row: u64,
    pub layout: MaskLayout,
}

/// How a tensor's elements map to Philox counters: `row << ROW_SHIFT` plus the element's
/// place within its row, where `row` is the global-batch position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskLayout {
    /// `[batch, tokens, features]` (any trailing dims): the place is the flat index within
    /// the row, `token * features + feature`, which does not depend on the padded length.
    Rows,
    /// `[batch, heads, len, len]` attention probabilities: the place is
    /// `(head * MAX_POSITIONS + query) * MAX_POSITIONS + key`.
    Probabilities,
}

/// Bits of the counter below the row: a row's places are `< 2^ROW_SHIFT`.
pub const ROW_SHIFT: u32 = 40;
/// Token positions a probability mask can address (BERT models have 512).
pub const MAX_POSITIONS: u64 = 4096;

/// A tensor's elements as runs of consecutive counters: run `r` holds elements
/// `r * len..(r + 1) * len`, and starts at counter `start(r)`. One formula for both layouts
/// (the CUDA kernel computes the same from these four numbers).
#[derive(Debug, Clone, Copy)]
pub struct Runs {
    /// Elements per run.
    pub len: u64,
    /// Runs per batch row.
    pub per_row: u64,
    /// Runs per head block within a row (query positions; 1 for `Rows`).
    pub per_head: u64,
    /// Counter stride of one query position and of one head's `per_head` block (0 for `Rows`).
    pub positions: u64,
}

impl Runs {
    /// The runs of a contiguous tensor of `dims` masked with `layout`.
    pub fn of(dims: &[usize], layout: MaskLayout) -> Result<Self> {
        let inner: usize = dims.iter().skip(1).product();
        match layout {
            MaskLayout::Rows => Ok(Runs {
                len: inner as u64,
                per_row: 1,
                per_head: 1,
                positions: 0,
            }),
            MaskLayout::Probabilities => {
                let &[_, heads, len, keys] = dims else {
                    candle_core::bail!(
                        "philox-dropout: probabilities must be [batch, heads, len, len]"
                    );
                };
                if len as u64 > MAX_POSITIONS || keys as u64 > MAX_POSITIONS {
                    candle_core::bail!("philox-dropout: more than {MAX_POSITIONS} positions");
                }
                Ok(Runs {
                    len: keys as u64,
                    per_row: (heads * len) as u64,
                    per_head: len as u64,
                    positions: MAX_POSITIONS,
                })
            }
        }
    }

    /// The counter of run `r`'s first element, for a tensor whose row 0 is global row `first_row`.
    pub fn start(&self, first_row: u64, r: u64) -> u64 {
        let (row, j) = (r / self.per_row, r % self.per_row);
        let (head, query) = (j / self.per_head, j % self.per_head);
        ((first_row + row) << ROW_SHIFT) + (head * self.positions + query) * self.positions
    }
}

impl PhiloxDropout {
    /// The same mask drawn for a tensor of another layout.
    pub fn with_layout(self, layout: MaskLayout) -> Self {
        PhiloxDropout { layout, ..self }
    }

    fn key(&self) -> [u32; 2] {
        [self.seed as u32, (self.seed >> 32) as u32]
    }

    /// `1 / (1 - p)`, the multiplier of kept elements.
    pub fn scale(&self) -> f32 {
        (1.0 / (1.0 - f64::from(self.p))) as f32
    }

    /// The multipliers of elements `first..first + out.len()` of a contiguous tensor whose
    /// elements form `runs`.
    pub fn fill_tensor(&self, runs: &Runs, first: u64, out: &mut [f32]) {
        let mut at = 0usize;
        while at < out.len() {
            let i = first + at as u64;
            let (r, offset) = (i / runs.len, i % runs.len);
            let n = ((runs.len - offset) as usize).min(out.len() - at);
            self.fill_multipliers(runs.start(self.first_row, r) + offset, &mut out[at..at + n]);
            at += n;
        }
    }

    /// Applies the mask to a contiguous tensor's elements, `x` (elements forming `runs`).
    fn apply(&self, runs: &Runs, x: &[f32]) -> Vec<f32> {
        const CHUNK: usize = 4096;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (out, inp))| {
                self.fill_tensor(runs, (c * CHUNK) as u64, out);
                out.iter_mut().zip(inp).for_each(|(o, &v)| *o *= v);
            });
        y
    }

    /// The mask of counters `first..first + out.len()` as multipliers: `1 / (1 - p)` where
    /// kept, 0 where dropped (so `x * multiplier` is the dropped-out `x`, bit for bit).
    pub fn fill_multipliers(&self, first: u64, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("bmi2") {
            // SAFETY: the CPU has AVX-512F and BMI2 (checked just above).
            return unsafe { self.fill_multipliers_avx512(first, out) };
        }
        self.fill_multipliers_generic(first, out)
    }

    /// `fill_multipliers` 16 Philox blocks (64 elements) at a time in AVX-512 registers: the
    /// keep bits of the 4 words of 16 lanes interleaved into element order by `pdep`, the
    /// multipliers written from them (the same mask as the generic code, bit for bit).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,bmi2")]
    unsafe fn fill_multipliers_avx512(&self, first: u64, out: &mut [f32]) {
        use std::arch::x86_64::{_mm512_maskz_mov_ps, _mm512_set1_ps, _mm512_storeu_ps};
        let scale = self.scale();
        let kept = _mm512_set1_ps(scale);
        let end = first + out.len() as u64;
        let mut block = first / 4;
        while block * 4 < end {
            let keep = philox_avx512::keep_bits(block, self.stream, self.key(), self.p);
            let base = block * 4;
            if base >= first && base + 64 <= end {
                let dst = &mut out[(base - first) as usize..][..64];
                for (q, chunk) in dst.chunks_exact_mut(16).enumerate() {
                    let v = _mm512_maskz_mov_ps((keep >> (16 * q)) as u16, kept);
                    // SAFETY: `chunk` is 16 writable floats.
                    unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), v) };
                }
            } else {
                for i in base.max(first)..(base + 64).min(end) {
                    let bit = keep >> (i - base) & 1;
                    out[(i - first) as usize] = if bit == 1 { scale } else { 0.0 };
                }
            }
            block += 16;
        }
    }

    #[inline(always)]
    fn fill_multipliers_generic(&self, first: u64, out: &mut [f32]) {
        const LANES: usize = 16;
        let (key, scale, p) = (self.key(), self.scale(), self.p);
        let stream = [self.stream as u32, (self.stream >> 32) as u32];
        let end = first + out.len() as u64;
        // Element i takes word i % 4 of block i / 4; LANES blocks (4 * LANES elements) are
        // drawn at a time, the multipliers chosen lane-parallel, then interleaved.
        let mut block = first / 4;
        while block * 4 < end {
            let words = philox4x32_lanes::<LANES>(block, stream, key);
            let mut m = [[0f32; LANES]; 4];
            for (mw, ww) in m.iter_mut().zip(&words) {
                for (v, &word) in mw.iter_mut().zip(ww) {
                    *v = if uniform(word) >= p { scale } else { 0.0 };
                }
            }
            let base = block * 4;
            if base >= first && base + 4 * LANES as u64 <= end {
                let dst = &mut out[(base - first) as usize..][..4 * LANES];
                for (lane, quad) in dst.chunks_exact_mut(4).enumerate() {
                    for (w, v) in quad.iter_mut().enumerate() {
                        *v = m[w][lane];
                    }
                }
            } else {
                for i in base.max(first)..(base + 4 * LANES as u64).min(end) {
                    let (lane, w) = (((i - base) / 4) as usize, ((i - base) % 4) as usize);
                    out[(i - first) as usize] = m[w][lane];
                }
            }
            block += LANES as u64;
        }
    }
}

/// Bit i of `bits` set where multiplier i is not 0.
pub fn pack_bits(multipliers: &[f32], bits: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { pack_bits_avx512(multipliers, bits) };
    }
    for (word, chunk) in bits.iter_mut().zip(multipliers.chunks(64)) {
        *word = pack_word(chunk);
    }
}

/// Bit i set where `chunk[i]` (at most 64) is not 0.
fn pack_word(chunk: &[f32]) -> u64 {
    chunk
        .iter()
        .enumerate()
        .fold(0, |w, (i, &m)| w | (u64::from(m != 0.0) << i))
}

/// `pack_bits` 16 compares at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_bits_avx512(multipliers: &[f32], bits: &mut [u64]) {
    use std::arch::x86_64::{_mm512_cmpneq_ps_mask, _mm512_loadu_ps, _mm512_setzero_ps};
    for (word, chunk) in bits.iter_mut().zip(multipliers.chunks(64)) {
        *word = match chunk.len() {
            64 => (0..4).fold(0, |w, q| {
                // SAFETY: elements 16q..16q + 16 lie inside the 64 of `chunk`.
                let v = unsafe { _mm512_loadu_ps(chunk.as_ptr().add(16 * q)) };
                w | u64::from(_mm512_cmpneq_ps_mask(v, _mm512_setzero_ps())) << (16 * q)
            }),
            _ => pack_word(chunk),
        };
    }
}

/// The multipliers back from `pack_bits`: `scale` where the bit is set, else 0.
pub fn unpack_bits(bits: &[u64], scale: f32, multipliers: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { unpack_bits_avx512(bits, scale, multipliers) };
    }
    for (chunk, &word) in multipliers.chunks_mut(64).zip(bits) {
        unpack_word(word, scale, chunk);
    }
}

fn unpack_word(word: u64, scale: f32, chunk: &mut [f32]) {
    for (i, m) in chunk.iter_mut().enumerate() {
        *m = if word >> i & 1 == 1 { scale } else { 0.0 };
    }
}

/// `unpack_bits` 16 elements at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn unpack_bits_avx512(bits: &[u64], scale: f32, multipliers: &mut [f32]) {
    use std::arch::x86_64::{_mm512_maskz_mov_ps, _mm512_set1_ps, _mm512_storeu_ps};
    let kept = _mm512_set1_ps(scale);
    for (chunk, &word) in multipliers.chunks_mut(64).zip(bits) {
        if chunk.len() < 64 {
            unpack_word(word, scale, chunk);
            continue;
        }
        for q in 0..4 {
            let v = _mm512_maskz_mov_ps((word >> (16 * q)) as u16, kept);
            // SAFETY: elements 16q..16q + 16 lie inside the 64 of `chunk`.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr().add(16 * q), v) };
        }
    }
}

/// `philox4x32` of the counters `(block + lane, stream)` for `N` consecutive lanes, written
/// lane-parallel so the compiler vectorises it: word `w` of lane `l` is `out[w][l]`.
// Indexed lane loops on purpose: this shape is what LLVM vectorises across lanes.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn philox4x32_lanes<const N: usize>(block: u64, stream: [u32; 2], key: [u32; 2]) -> [[u32; N]; 4] {
    let mut c: [[u32; N]; 4] = [[0; N], [0; N], [stream[0]; N], [stream[1]; N]];
    for lane in 0..N {
        let q = block + lane as u64;
        c[0][lane] = q as u32;
        c[1][lane] = (q >> 32) as u32;
    }
    let mut k = key;
    for _ in 0..10 {
        for lane in 0..N {
            let p0 = u64::from(c[0][lane]) * 0xD251_1F53;
            let p1 = u64::from(c[2][lane]) * 0xCD9E_8D57;
            let next = [
                (p1 >> 32) as u32 ^ c[1][lane] ^ k[0],
                p1 as u32,
                (p0 >> 32) as u32 ^ c[3][lane] ^ k[1],
                p0 as u32,
            ];
            for (word, v) in c.iter_mut().zip(next) {
                word[lane] = v;
            }
        }
        k[0] = k[0].wrapping_add(0x9E37_79B9);
        k[1] = k[1].wrapping_add(0xBB67_AE85);
    }
    c
}

/// Philox4x32-10 of 16 consecutive blocks in AVX-512 registers (`philox4x32_lanes::<16>`
/// written with intrinsics: LLVM's vectorisation of that code interleaved the words through
/// scalar inserts, a sixth of a bf16 training step).
#[cfg(target_arch = "x86_64")]
mod philox_avx512 {
    use std::arch::x86_64::*;

    /// The high and low halves of `a * m` in each 32-bit lane (`m` the same in every lane).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mul_hi_lo(a: __m512i, m: __m512i) -> (__m512i, __m512i) {
        let even = _mm512_mul_epu32(a, m);
        let odd = _mm512_mul_epu32(_mm512_srli_epi64::<32>(a), m);
        let lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64::<32>(odd));
        let hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64::<32>(even), odd);
        (hi, lo)
    }

    /// Whether each word is kept (`uniform(word) >= p`), as 16 lane bits.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn kept(words: __m512i, p: __m512) -> u16 {
        let top = _mm512_cvtepi32_ps(_mm512_srli_epi32::<8>(words));
        let uniform = _mm512_mul_ps(top, _mm512_set1_ps(1.0 / 16_777_216.0));
        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(uniform, p)
    }

    /// The keep bits of the 64 elements of blocks `block..block + 16` of `stream`: bit
    /// `4 * lane + w` for word `w` of block `block + lane`.
    #[target_feature(enable = "avx512f,bmi2")]
    pub fn keep_bits(block: u64, stream: u64, key: [u32; 2], p: f32) -> u64 {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let low = _mm512_set1_epi32(block as u32 as i32);
        let mut c0 = _mm512_add_epi32(low, lanes);
        // Lanes whose low word wrapped carry into the high word.
        let carry = _mm512_cmplt_epu32_mask(c0, low);
        let high = _mm512_set1_epi32((block >> 32) as u32 as i32);
        let mut c1 = _mm512_mask_add_epi32(high, carry, high, _mm512_set1_epi32(1));
        let mut c2 = _mm512_set1_epi32(stream as u32 as i32);
        let mut c3 = _mm512_set1_epi32((stream >> 32) as u32 as i32);
        let (m0, m1) = (
            _mm512_set1_epi32(0xD251_1F53_u32 as i32),
            _mm512_set1_epi32(0xCD9E_8D57_u32 as i32),
        );
        let mut k = key;
        for _ in 0..10 {
            let (hi0, lo0) = mul_hi_lo(c0, m0);
            let (hi1, lo1) = mul_hi_lo(c2, m1);
            let (k0, k1) = (
                _mm512_set1_epi32(k[0] as i32),
                _mm512_set1_epi32(k[1] as i32),
            );
            c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), k0);
            c1 = lo1;
            c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), k1);
            c3 = lo0;
            k[0] = k[0].wrapping_add(0x9E37_79B9);
            k[1] = k[1].wrapping_add(0xBB67_AE85);
        }
        let p = _mm512_set1_ps(p);
        [c0, c1, c2, c3]
            .into_iter()
            .enumerate()
            .fold(0, |bits, (w, c)| {
                bits | _pdep_u64(u64::from(kept(c, p)), 0x1111_1111_1111_1111 << w)
            })
    }
}

/// The top 24 bits as a float in [0, 1), exactly (the CUDA kernel computes the same).
fn uniform(word: u32) -> f32 {
    (word >> 8) as f32 * (1.0 / 16_777_216.0)
}

impl CustomOp1 for PhiloxDropout {
    fn name(&self) -> &'static str {
        "philox-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("philox-dropout: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("philox-dropout: contiguous input only");
        };
        let runs = Runs::of(layout.dims(), self.layout)?;
        Ok((
            CpuStorage::F32(self.apply(&runs, &data[start..end])),
            layout.shape().clone(),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::forward(self, storage, layout)
    }

    /// The same mask (redrawn from the counters) applied to the incoming gradient.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

impl PhiloxDropout {
    /// Drops out `x` (any shape; made contiguous), differentiably.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(*self)
    }
}

/// The CUDA launch of `dropout.cu`.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use super::{PhiloxDropout, Runs};
    use crate::cuda::{launch_error, output, storage, Module};

    const MODULE: Module = Module {
        name: "squad_qa_dropout",
        source: include_str!("dropout.cu"),
    };
    const THREADS: u32 = 256;

    pub fn forward(
        op: &PhiloxDropout,
        s: &CudaStorage,
        layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("philox-dropout: contiguous input only");
        };
        let x = s.as_cuda_slice::<f32>()?.slice(start..end);
        let n = (end - start) as u64;
        let (y, _) = output(s, n as usize)?;
        let mut y = y;
        let f = MODULE.function(&s.device, "philox_dropout")?;
        let runs = Runs::of(layout.dims(), op.layout)?;
        let (key, stream) = (op.key(), [op.stream as u32, (op.stream >> 32) as u32]);
        let (p, scale) = (op.p, op.scale());
        let blocks = (n.div_ceil(u64::from(THREADS))).clamp(1, 65_535) as u32;
        let mut b = f.builder();
        b.arg(&x).arg(&mut y).arg(&n);
        b.arg(&runs.len)
            .arg(&runs.per_row)
            .arg(&runs.per_head)
            .arg(&runs.positions);
        b.arg(&op.first_row);
        b.arg(&key[0]).arg(&key[1]).arg(&stream[0]).arg(&stream[1]);
        b.arg(&p).arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: philox_dropout(x, y, n, run_len, per_row, per_head, positions, first_row,
        // key0, key1, s0, s1, p, scale) takes exactly these arguments; its grid-stride loop
        // reads n elements of x and writes all n of y.
        unsafe { b.launch(cfg) }.map_err(launch_error)?;
        Ok((storage(y, s), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A mask's bits and back, over lengths that end mid-word (the AVX-512 path and the
    /// plain one agree).
    #[test]
    fn mask_bits_round_trip() {
        let m: Vec<f32> = (0..200)
            .map(|i| if i * 7 % 3 == 0 { 0.0 } else { 1.25 })
            .collect();
        let mut bits = vec![0u64; 4];
        pack_bits(&m, &mut bits);
        let plain: Vec<u64> = m.chunks(64).map(pack_word).collect();
        assert_eq!(bits, plain);
        let mut back = vec![9f32; 200];
        unpack_bits(&bits, 1.25, &mut back);
        assert_eq!(back, m);
        let mut plain_back = vec![9f32; 200];
        for (chunk, &word) in plain_back.chunks_mut(64).zip(&bits) {
            unpack_word(word, 1.25, chunk);
        }
        assert_eq!(plain_back, m);
    }

    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    /// The lane-parallel Philox and the multipliers at any offset agree with the scalar one.
    #[test]
    fn multipliers_at_any_offset_match_the_scalar_generator() {
        let op = PhiloxDropout {
            seed: 0x1234_5678_9abc,
            stream: (5 << 20) | 3,
            p: 0.25,
            first_row: 0,
            layout: MaskLayout::Rows,
        };
        let words = philox4x32_lanes::<16>(u64::from(u32::MAX) - 3, [3, 5], [1, 2]);
        for lane in 0..16u64 {
            let q = u64::from(u32::MAX) - 3 + lane;
            let want = philox4x32([q as u32, (q >> 32) as u32, 3, 5], [1, 2]);
            for w in 0..4 {
                assert_eq!(words[w][lane as usize], want[w], "lane {lane} word {w}");
            }
        }
        // Offsets inside and across 64-element groups, and blocks whose counter's low word
        // wraps within a group of 16 (the carry into the high word).
        let wrap = 4 * (u64::from(u32::MAX) - 5);
        for (first, len) in [
            (0u64, 1usize),
            (3, 70),
            (61, 5),
            (128, 256),
            (1 << 33, 129),
            (wrap, 300),
            (wrap + 7, 64),
        ] {
            let mut got = vec![f32::NAN; len];
            op.fill_multipliers(first, &mut got);
            for (j, &m) in got.iter().enumerate() {
                let i = first + j as u64;
                let word = philox4x32(
                    [(i / 4) as u32, ((i / 4) >> 32) as u32, op.stream as u32, 0],
                    op.key(),
                )[(i % 4) as usize];
                let want = if uniform(word) >= op.p {
                    op.scale()
                } else {
                    0.0
                };
                assert_eq!(m, want, "element {i}");
            }
        }
    }

    #[test]
    fn masks_are_keyed_scaled_and_about_p() {
        let x = Tensor::ones((64, 100), candle_core::DType::F32, &Device::Cpu).unwrap();
        let op = PhiloxDropout {
            seed: 7,
            stream: 3,
            p: 0.1,
            first_row: 0,
            layout: MaskLayout::Rows,
        };
        let y: Vec<f32> = op
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        assert!(
            (5_600..6_200).contains(&kept),
            "about 90% of 6400 kept: {kept}"
        );
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let again: Vec<f32> = op
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, again, "a pure function of (seed, stream, element)");
        let other = PhiloxDropout { stream: 4, ..op };
        let z: Vec<f32> = other
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(y, z, "another stream, another mask");
    }

    /// A row's mask depends on its global position and its tokens' positions only: not on
    /// the padded length, the local batch or where the row sits in it.
    #[test]
    fn masks_follow_global_rows_not_padding_or_local_batches() {
        let mask = |dims: &[usize], first_row: u64, layout: MaskLayout| -> Vec<f32> {
            let op = PhiloxDropout {
                seed: 9,
                stream: 4,
                p: 0.5,
                first_row,
                layout,
            };
            let x = Tensor::ones(dims, candle_core::DType::F32, &Device::Cpu).unwrap();
            op.forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        // Hidden states [batch, len, 8]: row 1 of a batch padded to 12 = row 0 of a batch of
        // one padded to 7, for its first 7 tokens.
        let whole = mask(&[2, 12, 8], 3, MaskLayout::Rows);
        let alone = mask(&[1, 7, 8], 4, MaskLayout::Rows);
        assert_eq!(&whole[12 * 8..][..7 * 8], &alone[..]);
        assert_ne!(&whole[..7 * 8], &alone[..], "another row, another mask");
        // Probabilities [batch, heads, len, len]: the same (head, query, key) of the same row.
        let whole = mask(&[2, 3, 12, 12], 3, MaskLayout::Probabilities);
        let alone = mask(&[1, 3, 7, 7], 4, MaskLayout::Probabilities);
        for (head, query) in [(0, 0), (1, 3), (2, 6)] {
            let w = &whole[((3 + head) * 12 + query) * 12..][..7];
            let a = &alone[(head * 7 + query) * 7..][..7];
            assert_eq!(w, a, "head {head} query {query}");
        }
    }

    /// The gradient is the same mask applied to the upstream gradient, as for `x * mask`.
    #[test]
    fn backward_recomputes_the_forward_mask() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..4 * 37).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Var::from_vec(values, (4, 37), &dev).unwrap();
        let op = PhiloxDropout {
            seed: 11,
            stream: 5,
            p: 0.3,
            first_row: 0,
            layout: MaskLayout::Rows,
        };
        let weights = Tensor::arange(0f32, 148., &dev)
            .unwrap()
            .reshape((4, 37))
            .unwrap();
        let y = op.forward(x.as_tensor()).unwrap();
        let grads = (&y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // The mask itself: the op applied to ones gives scale where kept, 0 where dropped.
        let ones = Tensor::ones((4, 37), candle_core::DType::F32, &dev).unwrap();
        let mask: Vec<f32> = op
            .forward(&ones)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w: Vec<f32> = weights.flatten_all().unwrap().to_vec1().unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(*g, w[i] * mask[i], "element {i}");
        }
        assert!(mask.contains(&0.0) && mask.iter().any(|&m| m != 0.0));
    }
}
