//! The model side of the server: the inferencer (tokenizer, checkpoint), its batcher, and the
//! settings requests start from.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qa_infer::{InferSettings, Inferencer, Prepared};
use qa_model::RunPlan;

use crate::api::ApiRequest;
use crate::batcher::{BatchLimits, Batcher};
use crate::error::ApiError;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Engine {
    inferencer: Arc<Inferencer>,
    pub batcher: Batcher,
    /// The server's settings; a request's parameters override them.
    pub defaults: InferSettings,
    /// The model's position embeddings: the longest window it takes.
    pub max_positions: usize,
    /// How long the warm-up forward took.
    pub warm_up: Duration,
}

/// The warm-up question: one short window through the whole path.
const WARM_UP: (&str, &str) = ("What is this?", "This is a warm-up question for the model.");

impl Engine {
    /// Loads the model, runs the warm-up forward and starts the model thread.
    pub fn load(
        model: &str,
        defaults: InferSettings,
        plan: &RunPlan,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let inferencer = Arc::new(Inferencer::load(model, defaults, plan)?);
        if let Some(warning) = inferencer.untrained_head_warning("qa-serve", model) {
            squad_core::exit::say(&warning);
        }
        let started = Instant::now();
        inferencer.answer(WARM_UP.0, WARM_UP.1)?;
        let warm_up = started.elapsed();
        let max_positions = inferencer.checkpoint.config.max_position_embeddings;
        Ok(Engine {
            batcher: Batcher::start(inferencer.clone(), limits, metrics),
            inferencer,
            defaults,
            max_positions,
            warm_up,
        })
    }

    pub fn model_dir(&self) -> &Path {
        self.inferencer.model_dir()
    }

    /// Every item tokenized and cut into windows; an item that fails names its place.
    pub fn prepare(&self, request: &ApiRequest) -> Result<Vec<Prepared>, ApiError> {
        request
            .items
            .iter()
            .enumerate()
            .map(|(k, item)| {
                self.inferencer
                    .prepare(&item.question, &item.context, request.settings)
                    .map_err(|e| {
                        let at = if request.list {
                            format!("inputs[{k}]")
                        } else {
                            "inputs".into()
                        };
                        ApiError::bad_request(format!("{at}: {e}"))
                    })
            })
            .collect()
    }
}
