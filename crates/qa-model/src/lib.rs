//! BERT for extractive QA in candle: the model (train and eval mode), HF-compatible
//! checkpoint loading and saving, and batching of features.

pub mod attention;
pub mod batch;
pub mod bert;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dense;
pub mod device;
pub mod dropout;
pub mod error;
pub mod fused;
pub mod loss;
pub mod memory;
pub mod nn;
pub mod params;
pub mod vmath;

pub use batch::make_batch;
pub use bert::{Batch, BertForQuestionAnswering};
pub use checkpoint::Checkpoint;
pub use config::BertConfig;
pub use error::{ModelError, Result};
pub use nn::DropoutRng;
pub use params::Params;
