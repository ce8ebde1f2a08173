//! One training step, as the trainer runs it and the torch parity tests check it: for each
//! micro-batch forward, loss, backward and accumulated gradients; then the gradients summed
//! over all ranks; then clipping by the global norm; then AdamW.
//!
//! Data parallel: each micro-batch is the global one (`batch_size x world` features), and this
//! rank computes its share of it (`qa_dist::share`). Every share is padded to the global
//! micro-batch's longest feature and its loss weighted by its share of the features, so the
//! sum over ranks is exactly the one-process loss of the whole micro-batch (the QA loss's
//! softmax covers padding, as in HF, so the padded length matters); dropout masks follow
//! each feature's position in the global batch. The result does not depend on the process
//! count beyond float rounding in the sum.

use candle_core::Tensor;
use qa_model::loss::qa_loss;
use qa_model::{make_batch, BertForQuestionAnswering, DropoutRng, Params};
use squad_core::Feature;

use qa_dist::Comm;

use crate::optim::{AdamW, Grads, Scalar};
use crate::TrainError;

/// What one optimizer step measured: loss and gradient norm may still be on the device.
#[derive(Debug)]
pub struct StepOutcome {
    /// The mean loss over the step's features (the sum of the micro-batches' scaled losses).
    pub loss: Scalar,
    /// The global gradient norm before clipping.
    pub grad_norm: Scalar,
    pub lr: f64,
    /// How many features the step saw (all ranks).
    pub features: usize,
}

/// The model, its parameters and optimizer, and the settings every step shares.
pub struct Learner {
    pub model: BertForQuestionAnswering,
    pub params: Params,
    pub optimizer: AdamW,
    /// Dropout masks (None: dropout off).
    pub dropout: Option<DropoutRng>,
    /// Pad every batch to this length (None: to its longest feature).
    pub pad_to: Option<usize>,
    /// Gradient accumulation: each micro-batch's loss is divided by it (HF's
    /// `gradient_accumulation_steps`, also for a last, shorter group).
    pub accumulation: usize,
    /// Clipping threshold of the global gradient norm (<= 0: no clipping).
    pub max_grad_norm: f64,
    /// The ranks sharing each micro-batch (`qa_dist::Solo` for one process).
    pub comm: Comm,
}

impl Learner {
    /// Optimizer step `step` (0-based) over the global `micro_batches` at learning rate `lr`.
    pub fn step(
        &mut self,
        step: usize,
        micro_batches: &[Vec<&Feature>],
        lr: f64,
    ) -> Result<StepOutcome, TrainError> {
        let mut grads: Option<Grads> = None;
        let mut losses = Vec::with_capacity(micro_batches.len());
        let mut first_row = 0;
        for batch in micro_batches {
            let (loss, g) = self.backward(step, batch, first_row)?;
            first_row += batch.len();
            match grads.as_mut() {
                None => grads = Some(g),
                Some(acc) => acc.add(g)?,
            }
            losses.extend(loss);
        }
        let mut grads =
            grads.ok_or_else(|| candle_core::Error::Msg("a step without batches".into()))?;
        let loss = self.total(&losses)?;
        let loss = grads.all_reduce(&*self.comm, loss)?;
        let grad_norm = self
            .optimizer
            .clip_grad_norm(&mut grads, self.max_grad_norm)?;
        self.optimizer.step(&self.params, &grads, lr)?;
        Ok(StepOutcome {
            loss,
            grad_norm,
            lr,
            features: first_row,
        })
    }

    /// Forward, loss (scaled for accumulation and this rank's share) and backward of this
    /// rank's share of the global micro-batch `batch`, whose row 0 is row `first_row` of the
    /// step. A rank with no share (a short last batch) contributes zeros.
    fn backward(
        &mut self,
        step: usize,
        batch: &[&Feature],
        first_row: usize,
    ) -> Result<(Option<Tensor>, Grads), TrainError> {
        let host = self.model.plan().host;
        let mine = qa_dist::share(batch.len(), self.comm.world(), self.comm.rank());
        let features = &batch[mine.clone()];
        if features.is_empty() {
            return Ok((None, Grads::zeros(&self.params.vars, host)?));
        }
        if let Some(rng) = self.dropout.as_mut() {
            rng.begin_batch(step, first_row + mine.start);
        }
        let longest = batch.iter().map(|f| f.len()).max();
        let batch_len = self.pad_to.or(longest);
        let inputs = make_batch(features, batch_len, self.model.device())?;
        let (start, end) = self.model.forward(&inputs, self.dropout.as_mut())?;
        let (starts, ends) = crate::labels(features);
        let (loss, _, _) = qa_loss(&start, &end, &starts, &ends)?;
        let weight = features.len() as f64 / batch.len() as f64;
        let loss = (loss * (weight / self.accumulation as f64))?;
        let grads = Grads::from_store(&loss.backward()?, &self.params.vars, host)?;
        Ok((Some(loss.detach()), grads))
    }

    /// The step's loss: read at once on the host, left on the device elsewhere.
    fn total(&self, losses: &[Tensor]) -> Result<Scalar, TrainError> {
        if self.model.plan().host || losses.is_empty() {
            let mut sum = 0f64;
            for l in losses {
                sum += l.to_scalar::<f32>()? as f64;
            }
            Ok(Scalar::Host(sum))
        } else {
            Ok(Scalar::Device(Tensor::stack(losses, 0)?.sum_all()?))
        }
    }
}
