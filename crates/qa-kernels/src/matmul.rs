//! Every GEMM of the CPU ops, in the run's `Precision`: bf16 through our AVX512-BF16 kernel
//! (`avx512_gemm`), f32 through the `gemm` crate or, on the shapes where it is faster
//! (`Gemm::ours_in_f32`), the same kernel of ours with FMAs. One entry point, so an op says
//! what it multiplies and the precision says how.

#[cfg(target_arch = "x86_64")]
use crate::avx512_gemm::Rhs;
use crate::precision::Precision;

/// A strided f32 matrix: element (r, c) at `ptr + r * rs + c * cs`.
#[derive(Debug, Clone, Copy)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a `Mat` is only read through, by tasks that the caller of `Gemm::run` guarantees
// see a live buffer (its contract).
unsafe impl Send for Mat {}
// SAFETY: as for Send: reads only.
unsafe impl Sync for Mat {}

impl Mat {
    /// A row-major matrix whose rows are `rs` elements apart.
    pub fn rows(ptr: *const f32, rs: usize) -> Self {
        Mat {
            ptr,
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The transpose (the same elements).
    pub fn t(self) -> Self {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Element (r, c).
    ///
    /// # Safety
    /// (r, c) must lie inside the matrix.
    #[inline(always)]
    pub unsafe fn at(&self, r: usize, c: usize) -> f32 {
        // SAFETY: the caller keeps (r, c) inside the matrix.
        unsafe { *self.ptr.offset(r as isize * self.rs + c as isize * self.cs) }
    }
}

/// A right operand packed once for our kernel in one precision (a weight that every
/// inference product multiplies by): `Gemm::run_packed`.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct PackedRhs(crate::avx512_gemm::PackedRhs);

#[cfg(target_arch = "x86_64")]
impl PackedRhs {
    /// `rhs [k, n]` packed for `precision`; `None` where the CPU cannot run our kernel in it.
    ///
    /// # Safety
    /// `rhs` must cover `k x n` readable elements.
    pub unsafe fn new(rhs: Mat, (k, n): (usize, usize), precision: Precision) -> Option<Self> {
        use crate::avx512_gemm::PackedRhs as Packed;
        // SAFETY: the caller's contract; the CPU has the instructions (checked).
        unsafe {
            match precision {
                Precision::F32 if avx512f() => Some(PackedRhs(Packed::new::<false>(rhs, (k, n)))),
                Precision::Bf16 if precision.supported() => {
                    Some(PackedRhs(Packed::new::<true>(rhs, (k, n))))
                }
                _ => None,
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl PackedRhs {
    /// `(k, n)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.0.k, self.0.n)
    }
}

/// Which threads a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread (ops that run one product per parallel task).
    One,
    /// candle's thread count (one large product).
    All,
}

impl Threads {
    fn count(self) -> usize {
        match self {
            Threads::One => 1,
            Threads::All => candle_core::utils::get_num_threads().max(1),
        }
    }
}

/// What a product is added onto: `dst = start + lhs · rhs`.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Nothing: the product overwrites the destination (which it does not read).
    Zero,
    /// The destination's own values.
    Dst,
    /// This `[n]` row, under every row of the product (a bias); added where the first block
    /// of k is stored, so the destination is written once.
    Row(&'a [f32]),
}

/// How a product runs: its arithmetic, its threads, and what it is added onto.
#[derive(Debug, Clone, Copy)]
pub struct Gemm<'a> {
    pub precision: Precision,
    pub threads: Threads,
    pub start: Start<'a>,
}

impl Gemm<'_> {
    /// `dst [m, n]` (rows `dst_rs` apart) = `start + lhs [m, k] · rhs [k, n]`.
    ///
    /// # Safety
    /// `lhs` and `rhs` must cover `m x k` and `k x n` readable elements, `dst` `m x n` writable
    /// ones that nothing else touches meanwhile; a `Start::Row` has `n` elements. Unless the
    /// start is `Start::Dst`, `dst` is written without being read (it may be uninitialised).
    ///
    /// # Panics
    /// With `Precision::Bf16` on a CPU without AVX512-BF16 (runs check this up front with
    /// `Precision::require_supported`).
    pub unsafe fn run(
        &self,
        (m, n, k): (usize, usize, usize),
        dst: *mut f32,
        dst_rs: usize,
        lhs: Mat,
        rhs: Mat,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // SAFETY: the caller's contract.
            return unsafe { self.fill_start(m, n, dst, dst_rs) };
        }
        let threads = self.threads.count();
        match self.precision {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's contract; the CPU has AVX512-F.
            Precision::F32 if avx512f() && self.ours_in_f32(m) => unsafe {
                crate::avx512_gemm::gemm::<false>(
                    threads,
                    (m, n, k),
                    dst,
                    dst_rs,
                    self.start,
                    (lhs, Rhs::Strided(rhs)),
                )
            },
            // SAFETY: the caller's contract is gemm's.
            Precision::F32 => unsafe { self.gemm_crate((m, n, k), dst, dst_rs, lhs, rhs) },
            Precision::Bf16 => {
                assert!(
                    crate::precision::bf16_gemm_supported(),
                    "bf16 GEMM on a CPU without AVX512-BF16"
                );
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller's contract; the CPU has the kernel's instructions.
                unsafe {
                    crate::avx512_gemm::gemm::<true>(
                        threads,
                        (m, n, k),
                        dst,
                        dst_rs,
                        self.start,
                        (lhs, Rhs::Strided(rhs)),
                    )
                }
            }
        }
    }

    /// `dst [m, n] = lhs [m, k] · rhs` (+ `dst` when accumulating) for an `rhs` packed
    /// beforehand (`PackedRhs::new`, in this precision): always our kernel.
    ///
    /// # Safety
    /// As `run`'s for `dst` and `lhs`.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn run_packed(
        &self,
        m: usize,
        dst: *mut f32,
        dst_rs: usize,
        lhs: Mat,
        rhs: &PackedRhs,
    ) {
        let (n, k) = (rhs.0.n, rhs.0.k);
        assert_eq!(
            rhs.0.bf16,
            self.precision == Precision::Bf16,
            "rhs packed for another precision"
        );
        if m == 0 || n == 0 || k == 0 {
            // SAFETY: the caller's contract; k = 0 reads nothing.
            return unsafe { self.run((m, n, k), dst, dst_rs, lhs, lhs) };
        }
        let (threads, operands) = (self.threads.count(), (lhs, Rhs::Packed(&rhs.0)));
        // SAFETY: the caller's contract; rhs is k x n.
        unsafe {
            match self.precision {
                Precision::F32 => crate::avx512_gemm::gemm::<false>(
                    threads,
                    (m, n, k),
                    dst,
                    dst_rs,
                    self.start,
                    operands,
                ),
                Precision::Bf16 => crate::avx512_gemm::gemm::<true>(
                    threads,
                    (m, n, k),
                    dst,
                    dst_rs,
                    self.start,
                    operands,
                ),
            }
        }
    }

    /// The product through our kernel whatever the shape (`qa-gemm-rates` compares it).
    ///
    /// # Safety
    /// As `run`'s, and the CPU must have AVX512-F (and AVX512-BF16 for bf16).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn our_kernel(
        &self,
        (m, n, k): (usize, usize, usize),
        dst: *mut f32,
        dst_rs: usize,
        lhs: Mat,
        rhs: Mat,
    ) {
        let (threads, operands) = (self.threads.count(), (lhs, Rhs::Strided(rhs)));
        // SAFETY: the caller's contract.
        unsafe {
            match self.precision {
                Precision::F32 => crate::avx512_gemm::gemm::<false>(
                    threads,
                    (m, n, k),
                    dst,
                    dst_rs,
                    self.start,
                    operands,
                ),
                Precision::Bf16 => crate::avx512_gemm::gemm::<true>(
                    threads,
                    (m, n, k),
                    dst,
                    dst_rs,
                    self.start,
                    operands,
                ),
            }
        }
    }

    /// Whether `run` takes our kernel for a product of `m` rows (so a packed rhs would serve).
    pub fn uses_our_kernel(&self, m: usize) -> bool {
        match self.precision {
            Precision::Bf16 => true,
            Precision::F32 => avx512f() && self.ours_in_f32(m),
        }
    }

    /// Whether our kernel beats the `gemm` crate in f32 on a product of `m` rows. Measured
    /// with `qa-gemm-rates` on 2 Zen 5 cores: ours 1.0-2.1x the crate's on the dense layers of
    /// one 150-token window (the crate's threading starves on so few rows), 0.8-1.1x at 3072
    /// rows, 0.65-0.75x on the attention's one-thread per-head products.
    fn ours_in_f32(&self, m: usize) -> bool {
        self.threads == Threads::All && m <= 512
    }

    /// The f32 product through the `gemm` crate: where the CPU has no AVX-512, and the
    /// yardstick of `qa-gemm-rates`.
    ///
    /// # Safety
    /// As `run`'s.
    pub unsafe fn gemm_crate(
        &self,
        (m, n, k): (usize, usize, usize),
        dst: *mut f32,
        dst_rs: usize,
        lhs: Mat,
        rhs: Mat,
    ) {
        let parallelism = match self.threads.count() {
            1 => gemm::Parallelism::None,
            n => gemm::Parallelism::Rayon(n),
        };
        // The crate adds onto dst or overwrites it: a start row is written in first.
        let onto_dst = match self.start {
            Start::Zero => false,
            Start::Dst => true,
            Start::Row(_) => {
                // SAFETY: the caller's contract.
                unsafe { self.fill_start(m, n, dst, dst_rs) };
                true
            }
        };
        let alpha = if onto_dst { 1.0 } else { 0.0 };
        // SAFETY: the caller guarantees the extents; gemm computes
        // dst = alpha * dst + 1 * lhs · rhs, reading dst only when onto_dst.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                dst_rs as isize,
                onto_dst,
                lhs.ptr,
                lhs.cs,
                lhs.rs,
                rhs.ptr,
                rhs.cs,
                rhs.rs,
                alpha,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
}

impl Gemm<'_> {
    /// `dst [m, n]` = the start alone (a product over k = 0).
    ///
    /// # Safety
    /// As `run`'s for `dst`.
    unsafe fn fill_start(&self, m: usize, n: usize, dst: *mut f32, dst_rs: usize) {
        for r in 0..m {
            // SAFETY: row r of dst is n writable elements (the caller's contract); written
            // through the pointer, as they may be uninitialised.
            unsafe {
                let row = dst.add(r * dst_rs);
                match self.start {
                    Start::Zero => std::ptr::write_bytes(row, 0, n),
                    Start::Dst => return,
                    Start::Row(start) => std::ptr::copy_nonoverlapping(start[..n].as_ptr(), row, n),
                }
            }
        }
    }
}

/// Whether the CPU has AVX512-F (our f32 kernel).
fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16;
    use crate::testing::wave;

    /// `start + lhs · rhs` by `gemm` with both inputs in every layout (row-major or
    /// transposed in memory) and every start, against an f64 reference.
    fn check(precision: Precision, threads: Threads, (m, n, k): (usize, usize, usize)) {
        let lhs = wave(m * k, 0.3, 0.37, 1.0);
        let rhs = wave(k * n, 1.7, 0.53, 1.0);
        let start = wave(m * n, 2.9, 0.71, 1.0);
        let bias = wave(n, 4.1, 0.29, 1.0);
        let (lhs_t, rhs_t) = (transpose(&lhs, m, k), transpose(&rhs, k, n));
        let exact: Vec<f64> = match precision {
            Precision::Bf16 => bf16::reference_matmul(m, n, k, &lhs, &rhs),
            Precision::F32 => f64_matmul(m, n, k, &lhs, &rhs),
        };
        for onto in [Start::Zero, Start::Dst, Start::Row(&bias)] {
            let start_at = |i: usize| match onto {
                Start::Zero => 0.0,
                Start::Dst => f64::from(start[i]),
                Start::Row(row) => f64::from(row[i % n]),
            };
            for (a, b) in [
                (Mat::rows(lhs.as_ptr(), k), Mat::rows(rhs.as_ptr(), n)),
                (
                    Mat::rows(lhs_t.as_ptr(), m).t(),
                    Mat::rows(rhs_t.as_ptr(), k).t(),
                ),
            ] {
                let gemm = Gemm {
                    precision,
                    threads,
                    start: onto,
                };
                let mut dst = start.clone();
                // SAFETY: the buffers are m x k, k x n and m x n.
                unsafe { gemm.run((m, n, k), dst.as_mut_ptr(), n, a, b) };
                let mut results = vec![dst];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above; the packed copy is of b, k x n.
                if let Some(packed) = unsafe { PackedRhs::new(b, (k, n), precision) } {
                    let mut dst = start.clone();
                    // SAFETY: a is m x k, dst m x n.
                    unsafe { gemm.run_packed(m, dst.as_mut_ptr(), n, a, &packed) };
                    results.push(dst);
                }
                for (i, (&got, &want)) in results
                    .iter()
                    .flatten()
                    .zip(exact.iter().cycle())
                    .enumerate()
                {
                    let i = i % exact.len();
                    let want = want + start_at(i);
                    // f32 summation of k products of magnitude <= 1: k ulps of the sum's scale.
                    let tolerance = 2.0 * k as f64 * f64::from(f32::EPSILON) * (1.0 + want.abs());
                    assert!(
                        (f64::from(got) - want).abs() <= tolerance,
                        "{precision} {m}x{n}x{k} {onto:?}: [{i}] {got} vs {want}"
                    );
                }
            }
        }
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| x[(i % rows) * cols + i / rows])
            .collect()
    }

    fn f64_matmul(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    out[i * n + j] += f64::from(lhs[i * k + p]) * f64::from(rhs[p * n + j]);
                }
            }
        }
        out
    }

    /// Edges of every block size (odd k, partial tiles, several k blocks) on one and all threads.
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (13, 33, 7),
        (12, 32, 32),
        (37, 70, 385),
        (100, 65, 64),
        (130, 96, 33),
        (5, 300, 400),
    ];

    #[test]
    fn f32_products_match_f64() {
        for shape in SHAPES {
            check(Precision::F32, Threads::All, shape);
            check(Precision::F32, Threads::One, shape);
        }
    }

    #[test]
    fn bf16_products_match_f64_of_rounded_inputs() {
        if !crate::precision::bf16_gemm_supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the bf16 GEMM kernel cannot run)");
            return;
        }
        for shape in SHAPES {
            check(Precision::Bf16, Threads::One, shape);
            check(Precision::Bf16, Threads::All, shape);
        }
    }

    #[test]
    fn zero_depth_products_are_their_start() {
        let bias = [1f32, 2., 4.];
        for precision in Precision::ALL.into_iter().filter(|p| p.supported()) {
            for (start, want) in [
                (Start::Zero, [0f32; 3]),
                (Start::Dst, [3f32; 3]),
                (Start::Row(&bias), bias),
            ] {
                let mut dst = vec![3f32; 6];
                let empty = Mat::rows(std::ptr::null(), 0);
                let gemm = Gemm {
                    precision,
                    threads: Threads::All,
                    start,
                };
                // SAFETY: k = 0 reads nothing; dst is 2 x 3.
                unsafe { gemm.run((2, 3, 0), dst.as_mut_ptr(), 3, empty, empty) };
                assert_eq!(dst, [want, want].concat(), "{precision} {start:?}");
            }
        }
    }
}
