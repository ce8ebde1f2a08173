//! Dropout masks for training, from the counter-based generator of `qa_kernels::dropout`:
//! each call's mask is a pure function of (seed, optimizer step, dropout site — the call's
//! number within the forward pass —, each row's position in the step's global batch, the
//! element's token/head positions), the same on the CPU and a GPU, for any padding and any
//! split of the global batch across processes, and drawn in parallel where it is used. The
//! whole state is (step, first row), so a run resumes from (seed, step).

use candle_core::{Result, Tensor};
use qa_kernels::dropout::{MaskLayout, PhiloxDropout};

#[derive(Debug, Clone)]
pub struct DropoutRng {
    seed: u64,
    step: u64,
    call: u64,
    first_row: u64,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        DropoutRng {
            seed,
            step: 0,
            call: 0,
            first_row: 0,
        }
    }

    /// Called before each forward pass of optimizer step `step` (0-based) over a batch whose
    /// row 0 is row `first_row` of the step's global batch (all micro-batches, all ranks).
    pub fn begin_batch(&mut self, step: usize, first_row: usize) {
        self.step = step as u64;
        self.first_row = first_row as u64;
        self.call = 0;
    }

    /// Zeroes each element with probability `p`, scales the rest by 1 / (1 - p).
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self.next(p) {
            Some(op) => op.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// The next call's mask (None when `p` is 0), for an op that applies it itself.
    pub fn next(&mut self, p: f64) -> Option<PhiloxDropout> {
        if p <= 0.0 {
            return None;
        }
        let op = PhiloxDropout {
            seed: self.seed,
            // 2^20 calls per step (BERT-base makes 37), 2^44 steps.
            stream: (self.step << 20) | self.call,
            p: p as f32,
            first_row: self.first_row,
            layout: MaskLayout::Rows,
        };
        self.call += 1;
        Some(op)
    }
}

/// Applies dropout when training (`rng` is Some), else passes `x` through.
pub fn maybe_dropout(x: Tensor, rng: Option<&mut DropoutRng>, p: f64) -> Result<Tensor> {
    match rng {
        Some(rng) => rng.dropout(&x, p),
        None => Ok(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_is_seeded_per_step_and_call() {
        let x = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
        let draw = |rng: &mut DropoutRng| -> Vec<Vec<f32>> {
            rng.dropout(&x, 0.5).unwrap().to_vec2().unwrap()
        };
        let mut a = DropoutRng::new(7);
        a.begin_batch(3, 0);
        let (first, second) = (draw(&mut a), draw(&mut a));
        assert_ne!(first, second, "each call its own mask");
        // A fresh generator at the same step (a resumed run) draws the same masks.
        let mut resumed = DropoutRng::new(7);
        resumed.begin_batch(3, 0);
        assert_eq!(draw(&mut resumed), first);
        assert_eq!(draw(&mut resumed), second);
        resumed.begin_batch(4, 0);
        assert_ne!(draw(&mut resumed), first, "another step, other masks");
        resumed.begin_batch(3, 4);
        assert_ne!(draw(&mut resumed), first, "other rows, other masks");
        let kept = first.iter().flatten().filter(|&&v| v == 2.0).count();
        assert!(
            (80..180).contains(&kept),
            "about half kept and scaled by 2: {kept}"
        );
    }
}
