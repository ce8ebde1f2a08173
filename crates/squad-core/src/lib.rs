//! Shared code for the squad-qa pipeline stages: the pipeline config, the Parquet schemas
//! (one definition per file, used by writer and reader alike) and atomic file IO.

pub mod config;
pub mod config_stamp;
pub mod error;
pub mod examples;
pub mod exit;
pub mod features;
pub mod fsutil;
pub mod hub;
pub mod lock;
pub mod parquet_io;
pub mod shard;
pub mod text;
pub mod vocab;

pub use config::{PipelineConfig, Precision};
pub use error::{Error, Result};
pub use examples::Example;
pub use features::Feature;
pub use polars;
