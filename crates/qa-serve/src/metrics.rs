//! What `GET /metrics` reports, in the Prometheus text format.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by HTTP status.
    pub requests: IntCounterVec,
    /// Seconds from the request's arrival to its response.
    pub latency: Histogram,
    /// Windows per forward pass.
    pub batch_windows: Histogram,
    /// Windows waiting for a forward pass.
    pub queue_windows: IntGauge,
    /// Windows per answered request.
    pub request_windows: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "qa_serve_requests_total",
                "Requests answered, by HTTP status",
            ),
            &["status"],
        )
        .expect("valid metric");
        let latency = histogram(
            "qa_serve_request_duration_seconds",
            "Seconds from a request's arrival to its response",
            exponential_buckets(0.001, 2.0, 15).expect("valid buckets"),
        );
        let windows = exponential_buckets(1.0, 2.0, 9).expect("valid buckets");
        let batch_windows = histogram(
            "qa_serve_batch_windows",
            "Windows per forward pass",
            windows.clone(),
        );
        let request_windows = histogram(
            "qa_serve_request_windows",
            "Windows per answered request",
            windows,
        );
        let queue_windows = IntGauge::new(
            "qa_serve_queue_windows",
            "Windows waiting for a forward pass",
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(batch_windows.clone()),
            Box::new(request_windows.clone()),
            Box::new(queue_windows.clone()),
        ] {
            registry.register(m).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            latency,
            batch_windows,
            queue_windows,
            request_windows,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}
