//! `qa-serve`: a QA checkpoint behind HTTP, speaking the Hugging Face inference API for
//! question answering (`POST /`, `POST /v1/answer`), with `GET /health` and `GET /metrics`.
//! Windows of concurrent requests share forward passes (`batcher`); every limit is a field of
//! [`ServeConfig`], and every error is JSON `{"error": ...}` with its status (`error`).

pub mod api;
pub mod batcher;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod server;

use std::time::Duration;

pub use batcher::BatchLimits;
pub use engine::Engine;
pub use server::serve;

/// The HTTP limits (the batching limits are [`BatchLimits`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Most windows one request may need (413 beyond).
    pub max_windows: usize,
    /// Longest a request may take, from its arrival to its answer (504 beyond).
    pub timeout: Duration,
    /// Longest a client may take to send a request's headers (the connection is closed).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body (408 beyond).
    pub body_timeout: Duration,
    /// Most connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Longest shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Bearer token the answer and metrics routes require, if any.
    pub api_key: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_body_bytes: 1 << 20,
            max_windows: 32,
            timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 256,
            shutdown_grace: Duration::from_secs(30),
            api_key: None,
        }
    }
}
