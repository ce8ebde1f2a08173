//! GEMM rates on the model's shapes, f32 and bf16, next to this CPU's peaks (register-resident
//! FMA and bf16 dot-product loops): what `make bench` prints for the GEMM table.
//!
//! `qa-gemm-rates [--rows R] [--hidden H] [--intermediate I] [--head-dim D] [--seconds S]
//! [--only SUBSTRING]` (defaults: MiniLM at batch 8 x 384, rows 3072). Prints a markdown table.

use std::time::Instant;

use qa_kernels::{Gemm, Mat, Precision, Start, Threads};
use rayon::prelude::*;

struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    /// lhs stored transposed (`[k, m]`), rhs stored transposed (`[n, k]`).
    lhs_t: bool,
    rhs_t: bool,
    /// One product per thread at once (the attention's per-head GEMMs), not one on all.
    per_thread: bool,
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn shapes(rows: usize, h: usize, i: usize, d: usize, len: usize) -> Vec<Shape> {
    let dense = |name, m, n, k, lhs_t, rhs_t| Shape {
        name,
        m,
        n,
        k,
        lhs_t,
        rhs_t,
        per_thread: false,
    };
    let head = |name, m, n, k, rhs_t| Shape {
        name,
        m,
        n,
        k,
        lhs_t: false,
        rhs_t,
        per_thread: true,
    };
    vec![
        dense("qkv x W^T", rows, 3 * h, h, false, true),
        dense("attn-out x W^T", rows, h, h, false, true),
        dense("intermediate x W^T", rows, i, h, false, true),
        dense("output x W^T", rows, h, i, false, true),
        dense("dx = g W (intermediate)", rows, h, i, false, false),
        dense("dW = g^T x (intermediate)", i, h, rows, true, false),
        dense("dx = g W (output)", rows, i, h, false, false),
        dense("dW = g^T x (output)", h, i, rows, true, false),
        head("Q K^T per head", len, len, d, true),
        head("P V per head", len, d, len, false),
        dense("one window: qkv (150 rows)", 150, 3 * h, h, false, true),
        dense("one window: output (150 rows)", 150, h, i, false, true),
    ]
}

/// Which GEMM: the `gemm` crate (f32), our kernel, or what the ops run (`Gemm::run`).
#[derive(Clone, Copy)]
enum Which {
    GemmCrate,
    OurKernel(Precision),
    AsRun(Precision),
}

/// GFLOP/s of `shape` by `which`, over at least `seconds`.
fn rate(shape: &Shape, which: Which, seconds: f64) -> f64 {
    let precision = match which {
        Which::GemmCrate => Precision::F32,
        Which::OurKernel(p) | Which::AsRun(p) => p,
    };
    let threads = candle_core::utils::get_num_threads().max(1);
    let copies = if shape.per_thread { threads } else { 1 };
    let (m, n, k) = (shape.m, shape.n, shape.k);
    let data: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..copies)
        .map(|c| {
            let wave = |len: usize, s: f32| {
                (0..len)
                    .map(|x| ((x as f32) * 0.37 + s + c as f32).sin())
                    .collect()
            };
            (wave(m * k, 0.1), wave(k * n, 0.7), vec![0f32; m * n])
        })
        .collect();
    let gemm = Gemm {
        precision,
        threads: if shape.per_thread {
            Threads::One
        } else {
            Threads::All
        },
        start: Start::Zero,
    };
    let run_one = |(a, b, c): &(Vec<f32>, Vec<f32>, Vec<f32>)| {
        let lhs = if shape.lhs_t {
            Mat::rows(a.as_ptr(), m).t()
        } else {
            Mat::rows(a.as_ptr(), k)
        };
        let rhs = if shape.rhs_t {
            Mat::rows(b.as_ptr(), k).t()
        } else {
            Mat::rows(b.as_ptr(), n)
        };
        // SAFETY: the buffers are m x k, k x n and m x n; each copy writes its own c.
        unsafe {
            match which {
                Which::GemmCrate => gemm.gemm_crate((m, n, k), c.as_ptr() as *mut f32, n, lhs, rhs),
                Which::OurKernel(_) => {
                    gemm.our_kernel((m, n, k), c.as_ptr() as *mut f32, n, lhs, rhs)
                }
                Which::AsRun(_) => gemm.run((m, n, k), c.as_ptr() as *mut f32, n, lhs, rhs),
            }
        }
    };
    let run = || match copies {
        1 => run_one(&data[0]),
        _ => data.par_iter().for_each(run_one),
    };
    run();
    let (start, mut reps) = (Instant::now(), 0u64);
    while reps < 3 || start.elapsed().as_secs_f64() < seconds {
        run();
        reps += 1;
    }
    let flops = 2.0 * (m * n * k * copies) as f64 * reps as f64;
    flops / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        println!("qa-gemm-rates: this CPU has no AVX-512: no rates to compare (f32 runs on the gemm crate alone)");
        return;
    }
    let rows = arg("--rows", 3072.0) as usize;
    let (h, i, d) = (
        arg("--hidden", 384.0) as usize,
        arg("--intermediate", 1536.0) as usize,
        arg("--head-dim", 32.0) as usize,
    );
    let len = arg("--len", 384.0) as usize;
    let seconds = arg("--seconds", 0.5);
    let threads = candle_core::utils::get_num_threads();
    let bf16 = Precision::Bf16.supported();
    let (peak32, peak16) = (
        peaks::f32_fma(threads),
        bf16.then(|| peaks::bf16_dot(threads)).flatten(),
    );
    println!(
        "GEMM rates, {threads} threads (GFLOP/s; % of this CPU's peak measured in the same run)\n"
    );
    println!(
        "peak: fp32 FMA {peak32:.0}, bf16 dot product {}\n",
        peak16.map_or("n/a (no AVX512-BF16)".into(), |p| format!("{p:.0}"))
    );
    println!("| shape | m x n x k | f32, gemm crate | f32, our kernel | f32 as run | % fp32 peak | bf16, ours | % bf16 peak | bf16 / f32 as run |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    for s in shapes(rows, h, i, d, len)
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| s.name.contains(o.as_str())))
    {
        let g = rate(&s, Which::GemmCrate, seconds);
        let o = rate(&s, Which::OurKernel(Precision::F32), seconds);
        let f = rate(&s, Which::AsRun(Precision::F32), seconds);
        let b = bf16.then(|| rate(&s, Which::AsRun(Precision::Bf16), seconds));
        let cell = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.0}"));
        println!(
            "| {}{} | {} x {} x {} | {g:.0} | {o:.0} | {f:.0} | {:.0}% | {} | {} | {} |",
            s.name,
            if s.per_thread {
                " (one per thread)"
            } else {
                ""
            },
            s.m,
            s.n,
            s.k,
            100.0 * f / peak32,
            cell(b),
            b.zip(peak16)
                .map_or("n/a".into(), |(b, p)| format!("{:.0}%", 100.0 * b / p)),
            b.map_or("n/a".into(), |b| format!("{:.2}x", b / f)),
        );
    }
}

/// Register-resident loops: the most the cores' vector units do, one loop per thread.
mod peaks {
    use rayon::prelude::*;
    use std::time::Instant;

    const ITERS: u64 = 200_000_000;

    fn on_threads(threads: usize, flops_per_iter: f64, f: fn(u64) -> f32) -> f64 {
        let start = Instant::now();
        let sink: f32 = (0..threads)
            .into_par_iter()
            .map(|_| f(ITERS / threads as u64))
            .sum();
        std::hint::black_box(sink);
        flops_per_iter * ITERS as f64 / start.elapsed().as_secs_f64() / 1e9
    }

    pub fn f32_fma(threads: usize) -> f64 {
        // 12 independent FMA chains of 16 lanes: 12 x 16 x 2 flops per iteration.
        // SAFETY: main returns early on a CPU without AVX512-F.
        on_threads(threads, 12.0 * 32.0, |iters| unsafe { fma_loop(iters) })
    }

    pub fn bf16_dot(threads: usize) -> Option<f64> {
        // 12 chains of 16 lanes, each lane 2 products: 12 x 16 x 4 flops per iteration.
        // SAFETY: called only where the CPU has AVX512-BF16 (main checks).
        Some(on_threads(threads, 12.0 * 64.0, |iters| unsafe {
            dot_loop(iters)
        }))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_loop(iters: u64) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm512_set1_ps(0.0); 12];
        let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-3));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot_loop(iters: u64) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm512_set1_ps(0.0); 12];
        // SAFETY: a bit cast between two 512-bit vector types.
        let a = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3c00)) };
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, a);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }
}
