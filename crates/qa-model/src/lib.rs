//! BERT for extractive QA in candle over the kernels of `qa_kernels`: the model (`bert`, its
//! layers in `nn`), how it runs (`plan`, decided once), its parameters (`schema`, `params`),
//! HF-compatible checkpoint loading and saving, and batching of features.

pub mod batch;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod dropout;
pub mod error;
pub mod loss;
pub mod memory;
pub mod nn;
pub mod params;
pub mod plan;
pub mod schema;

pub use batch::make_batch;
pub use bert::{Batch, BertForQuestionAnswering};
pub use checkpoint::Checkpoint;
pub use config::BertConfig;
pub use dropout::DropoutRng;
pub use error::{ModelError, Result};
pub use params::Params;
pub use plan::{Mode, RunOptions, RunPlan};
/// Fixtures and the seeded checkpoint, for tests of any crate (test support, not an API).
pub mod testing;
