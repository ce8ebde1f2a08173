//! One training step, as the trainer runs it and the torch parity tests check it: for each
//! micro-batch forward, loss, backward and accumulated gradients; then clipping by the global
//! norm; then AdamW.

use candle_core::Tensor;
use qa_model::loss::qa_loss;
use qa_model::{make_batch, BertForQuestionAnswering, DropoutRng, Params};
use squad_core::Feature;

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
    /// How many features the step saw.
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
}

impl Learner {
    /// Optimizer step `step` (0-based) over `micro_batches` at learning rate `lr`.
    pub fn step(
        &mut self,
        step: usize,
        micro_batches: &[Vec<&Feature>],
        lr: f64,
    ) -> Result<StepOutcome, TrainError> {
        if let Some(rng) = self.dropout.as_mut() {
            rng.begin_step(step);
        }
        let mut grads: Option<Grads> = None;
        let mut losses = Vec::with_capacity(micro_batches.len());
        for batch in micro_batches {
            let (loss, g) = self.backward(batch)?;
            match grads.as_mut() {
                None => grads = Some(g),
                Some(acc) => acc.add(g)?,
            }
            losses.push(loss);
        }
        let mut grads =
            grads.ok_or_else(|| candle_core::Error::Msg("a step without batches".into()))?;
        let grad_norm = self
            .optimizer
            .clip_grad_norm(&mut grads, self.max_grad_norm)?;
        self.optimizer.step(&self.params, &grads, lr)?;
        Ok(StepOutcome {
            loss: self.total(&losses)?,
            grad_norm,
            lr,
            features: micro_batches.iter().map(Vec::len).sum(),
        })
    }

    /// Forward, loss (scaled for accumulation) and backward of one micro-batch.
    fn backward(&mut self, features: &[&Feature]) -> Result<(Tensor, Grads), TrainError> {
        let host = self.model.plan().host;
        let batch = make_batch(features, self.pad_to, self.model.device())?;
        let (start, end) = self.model.forward(&batch, self.dropout.as_mut())?;
        let (starts, ends) = crate::labels(features);
        let (loss, _, _) = qa_loss(&start, &end, &starts, &ends)?;
        let loss = (loss / self.accumulation as f64)?;
        let grads = Grads::from_store(&loss.backward()?, &self.params.vars, host)?;
        Ok((loss.detach(), grads))
    }

    /// The step's loss: read at once on the host, left on the device elsewhere.
    fn total(&self, losses: &[Tensor]) -> Result<Scalar, TrainError> {
        if self.model.plan().host {
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
