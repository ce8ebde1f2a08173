//! The HTTP side: routes, limits, the accept loop with its connection cap and header timeout,
//! and graceful shutdown. The model loads after the socket is bound; until it is ready (and a
//! warm-up forward has run) `/health` and the answer routes say 503.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use qa_infer::{Answer, Prepared};
use squad_core::exit::say;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ServeConfig;

struct App {
    config: ServeConfig,
    engine: OnceLock<Engine>,
    metrics: Arc<Metrics>,
}

type AppState = Arc<App>;

/// Serves on `listener` until `shutdown` resolves, then finishes in-flight requests (up to
/// `config.shutdown_grace`). `load` builds the engine on a blocking thread meanwhile; its
/// error ends the server with that error.
pub async fn serve<L, S>(
    listener: TcpListener,
    config: ServeConfig,
    metrics: Arc<Metrics>,
    load: L,
    shutdown: S,
) -> anyhow::Result<()>
where
    L: FnOnce() -> anyhow::Result<Engine> + Send + 'static,
    S: Future<Output = ()>,
{
    let app = Arc::new(App {
        config,
        engine: OnceLock::new(),
        metrics,
    });
    let (failed, load_failure) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loading = app.clone();
    tokio::spawn(async move {
        match tokio::task::spawn_blocking(load).await {
            Ok(Ok(engine)) => {
                say(&format!(
                    "qa-serve: ready ({}, warm-up forward {} ms)",
                    engine.model_dir().display(),
                    engine.warm_up.as_millis()
                ));
                let _ = loading.engine.set(engine);
            }
            Ok(Err(e)) => drop(failed.send(e)),
            Err(e) => drop(failed.send(e.into())),
        }
    });
    // A successful load drops `failed`: that branch is then disabled, not taken.
    let stop = async {
        tokio::select! {
            () = shutdown => None,
            Ok(e) = load_failure => Some(e),
        }
    };
    let (graceful, failure) = accept_until(listener, app.clone(), stop).await;
    if let Some(e) = failure {
        return Err(e);
    }
    let grace = app.config.shutdown_grace;
    say("qa-serve: shutting down: no new connections; finishing requests in flight");
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => say("qa-serve: stopped"),
        Err(_) => say(&format!(
            "qa-serve: stopped after {} ms with requests still in flight",
            grace.as_millis()
        )),
    }
    Ok(())
}

/// Accepts connections until `stop` resolves, while fewer than `max_connections` are open
/// (the others wait in the kernel's backlog), each served by hyper with the header read
/// timeout. Returns the watcher of the connections still open, and what `stop` gave.
async fn accept_until<T>(
    listener: TcpListener,
    app: AppState,
    stop: impl Future<Output = T>,
) -> (GracefulShutdown, T) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(app.config.max_connections));
    let service = TowerToHyperService::new(router(app.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            stopped = &mut stop => return (graceful, stopped),
            accepted = async {
                let slot = slots.clone().acquire_owned().await.expect("never closed");
                (slot, listener.accept().await)
            } => accepted,
        };
        let (slot, Ok((stream, _))) = accepted else {
            continue;
        };
        let connection = http.serve_connection(TokioIo::new(stream), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
}

fn router(app: AppState) -> Router {
    let protected = Router::new()
        .route("/", post(answer))
        .route("/v1/answer", post(answer))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), record))
        .with_state(app)
}

/// Counts every response by status and times it.
async fn record(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &app.metrics;
    m.requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    m.latency.observe(started.elapsed().as_secs_f64());
    response
}

/// `Authorization: Bearer KEY` when the server has a key (compared in constant time).
async fn require_key(
    State(app): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &app.config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key")
                .into_response();
        }
    }
    next.run(request).await
}

async fn health(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    app.engine()?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

impl App {
    fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading", 1))
    }
}

async fn answer(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let budget = app.config.timeout;
    let deadline = Instant::now() + budget;
    match tokio::time::timeout(budget, answer_by(app.clone(), request, deadline)).await {
        Ok(answered) => answered,
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer within the time budget ({} ms)",
                budget.as_millis()
            ),
        )),
    }
}

async fn answer_by(
    app: AppState,
    request: Request,
    deadline: Instant,
) -> Result<Response, ApiError> {
    let engine = app.engine()?.clone();
    let body = read_body(request.into_body(), &app.config).await?;
    let request = api::parse(&body, engine.defaults, engine.max_positions)?;
    let (top_k, list) = (request.settings.top_k, request.list);
    let prepared = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.prepare(&request))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??
    };
    let windows: usize = prepared.iter().map(|p| p.windows.len()).sum();
    if windows > app.config.max_windows {
        return Err(ApiError::too_large(format!(
            "the context needs {windows} windows; the limit is {} (--max-windows)",
            app.config.max_windows
        )));
    }
    let answers = answers(&engine, &prepared, deadline).await?;
    app.metrics.request_windows.observe(windows as f64);
    Ok(Json(api::response(&answers, top_k, list)).into_response())
}

/// Every item's answers, its windows run by the batcher.
async fn answers(
    engine: &Engine,
    prepared: &[Prepared],
    deadline: Instant,
) -> Result<Vec<Vec<Answer>>, ApiError> {
    let windows = prepared
        .iter()
        .flat_map(|p| p.windows.iter().cloned())
        .collect();
    let receiver = engine
        .batcher
        .submit(windows, deadline)
        .map_err(|e| ApiError::unavailable(e.to_string(), 1))?;
    let mut logits = receiver
        .await
        .map_err(|_| ApiError::internal("the model thread stopped"))?
        .map_err(|e| match e {
            crate::batcher::BatchError::Expired => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
            e => ApiError::internal(e.to_string()),
        })?
        .into_iter();
    Ok(prepared
        .iter()
        .map(|p| p.answers(&logits.by_ref().take(p.windows.len()).collect::<Vec<_>>()))
        .collect())
}

/// The whole body, within the size limit (413) and the body timeout (408).
async fn read_body(body: Body, config: &ServeConfig) -> Result<Vec<u8>, ApiError> {
    let limit = config.max_body_bytes;
    let too_large = || ApiError::too_large(format!("the body is larger than {limit} bytes"));
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(config.body_timeout, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} ms",
                config.body_timeout.as_millis()
            ),
        )),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("reading the body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
    }
}
