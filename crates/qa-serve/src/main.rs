use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qa_infer::InferSettings;
use qa_model::RunPlan;
use qa_serve::metrics::Metrics;
use qa_serve::{BatchLimits, Engine, ServeConfig};
use squad_core::exit::{finish, say};
use squad_core::{PipelineConfig, Precision};

/// Serve a BERT QA checkpoint over HTTP, in the Hugging Face inference API's shape:
/// `POST /` (or `/v1/answer`) with {"inputs": {"question", "context"}, "parameters": {...}};
/// `GET /health`, `GET /metrics` (Prometheus). SIGTERM or Ctrl-C stops accepting, finishes
/// the requests in flight and exits 0.
///
/// Exit codes: 0 stopped by a signal, 1 failed (e.g. the model did not load), 2 usage error.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer) or hub id.
    #[arg(long)]
    model: String,
    /// Address to listen on (port 0: any free port; the log line says which).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Pipeline YAML: windows (features.max_length, stride) and answers
    /// (eval.max_answer_length; eval.version_2_with_negative sets handle_impossible_answer).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Most windows in one forward pass.
    #[arg(long, default_value_t = BatchLimits::default().max_batch)]
    max_batch: usize,
    /// Longest a window waits for others to share its forward pass, in ms.
    #[arg(long, default_value_t = BatchLimits::default().max_wait.as_millis() as u64)]
    max_wait_ms: u64,
    /// Most windows waiting for the model; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = BatchLimits::default().queue_windows)]
    queue_windows: usize,
    /// Most windows one request's contexts may need (413 beyond).
    #[arg(long, default_value_t = ServeConfig::default().max_windows)]
    max_windows: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = ServeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Time budget of a request, arrival to answer, in ms (504 beyond).
    #[arg(long, default_value_t = ms(ServeConfig::default().timeout))]
    timeout_ms: u64,
    /// Longest a client may take to send its request headers, in ms (then the connection closes).
    #[arg(long, default_value_t = ms(ServeConfig::default().header_timeout))]
    header_timeout_ms: u64,
    /// Longest a client may take to send its request body, in ms (408 beyond).
    #[arg(long, default_value_t = ms(ServeConfig::default().body_timeout))]
    body_timeout_ms: u64,
    /// Most connections open at once (more wait to be accepted).
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    max_connections: usize,
    /// Longest shutdown waits for requests in flight, in ms.
    #[arg(long, default_value_t = ms(ServeConfig::default().shutdown_grace))]
    shutdown_grace_ms: u64,
    /// File holding a bearer token that requests must send (Authorization: Bearer TOKEN);
    /// /health stays open.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the model runs: cpu, cuda or cuda:N (cuda needs the CUDA build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// GEMM arithmetic: f32, or bf16 (inputs rounded to bf16, f32 sums; CPUs with
    /// AVX512-BF16) [default: the config's eval.precision, f32].
    #[arg(long)]
    precision: Option<Precision>,
}

const fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Read by rayon and candle's matmul when their pools start: before any model code.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    qa_model::memory::keep_freed_memory();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    finish("qa-serve", runtime.block_on(run(cli)))
}

/// The answering defaults, and the precision, from the config (the flag wins).
fn settings(
    config: Option<&PathBuf>,
    precision: Option<Precision>,
) -> Result<(InferSettings, Precision)> {
    let c = PipelineConfig::load_or_default(config.map(PathBuf::as_path))?;
    let settings = InferSettings {
        max_length: c.features.max_length,
        stride: c.features.stride,
        max_answer_length: c.eval.max_answer_length,
        top_k: 1,
        handle_impossible_answer: c.eval.version_2_with_negative,
    };
    Ok((settings, precision.unwrap_or(c.eval.precision)))
}

fn serve_config(cli: &Cli) -> Result<ServeConfig> {
    let api_key = match &cli.api_key_file {
        None => None,
        Some(f) => {
            let key = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
            let key = key.trim().to_string();
            if key.is_empty() {
                bail!("{}: the API key file is empty", f.display());
            }
            Some(key)
        }
    };
    Ok(ServeConfig {
        max_body_bytes: cli.max_body_bytes,
        max_windows: cli.max_windows,
        timeout: Duration::from_millis(cli.timeout_ms),
        header_timeout: Duration::from_millis(cli.header_timeout_ms),
        body_timeout: Duration::from_millis(cli.body_timeout_ms),
        max_connections: cli.max_connections.max(1),
        shutdown_grace: Duration::from_millis(cli.shutdown_grace_ms),
        api_key,
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let (defaults, precision) = settings(cli.config.as_ref(), cli.precision)?;
    let config = serve_config(&cli)?;
    let limits = BatchLimits {
        max_batch: cli.max_batch.max(1),
        max_wait: Duration::from_millis(cli.max_wait_ms),
        queue_windows: cli.queue_windows.max(1),
    };
    let device = qa_model::checkpoint::device(&cli.device)?;
    let plan = RunPlan::inference(device, precision);
    let listener = tokio::net::TcpListener::bind(&cli.addr)
        .await
        .with_context(|| format!("listening on {}", cli.addr))?;
    say(&format!(
        "qa-serve: listening on http://{}",
        listener.local_addr()?
    ));
    let metrics = Arc::new(Metrics::new());
    let model = cli.model.clone();
    let for_batcher = metrics.clone();
    let load = move || Engine::load(&model, defaults, &plan, limits, for_batcher);
    qa_serve::serve(listener, config, metrics, load, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
