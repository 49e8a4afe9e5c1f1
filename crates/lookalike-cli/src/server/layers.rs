//! What every request goes through before and after its handler: the connection loop with its
//! timeouts and connection limit, request ids and logs, metrics, JSON error bodies, and the
//! token check for writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use super::error::{as_json_error, ApiError};
use super::protocol_errors::JsonProtocolErrors;
use super::Shared;

/// Open connections at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id taken from a client; a longer one (or one with other than visible ASCII)
/// is replaced by a new one, as ids are logged with every request.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Drops a client's `x-request-id` that is too long or not printable, so that a new one is made.
pub async fn drop_unfit_request_id(mut request: Request, next: Next) -> Response {
    let unfit = request
        .headers()
        .get_all(&REQUEST_ID)
        .iter()
        .enumerate()
        .any(|(n, id)| n > 0 || id.len() > MAX_REQUEST_ID_BYTES || !id.as_bytes().iter().all(|b| b.is_ascii_graphic()));
    if unfit {
        request.headers_mut().remove(&REQUEST_ID);
    }
    next.run(request).await
}

/// Accepts connections until Ctrl-C: HTTP/1.1 whose request line and headers must arrive within
/// `client_timeout` (which also closes idle keep-alive connections), at most [`MAX_CONNECTIONS`]
/// at once.
pub async fn serve(router: Router, addr: SocketAddr, client_timeout: Duration) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("lookalike serving on http://{}", listener.local_addr()?);
    tracing::info!(address = %listener.local_addr()?, "serving");
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, usually: wait for connections to close.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(client_timeout)
            .serve_connection(
                TokioIo::new(JsonProtocolErrors::new(stream)),
                TowerToHyperService::new(router.clone()),
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    tracing::info!("shutting down");
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// Logs to stderr; `LOOKALIKE_LOG` (e.g. `info`, `lookalike=debug`) filters, and
/// `LOOKALIKE_LOG_FORMAT=json` writes one JSON object per line.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOOKALIKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let json = std::env::var("LOOKALIKE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The route a request matched, handed from inside the router to [`observe`] outside it.
#[derive(Clone)]
struct MatchedRoute(String);

/// Inside the router: notes which route matched on the response.
pub async fn remember_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(MatchedRoute(route));
    }
    response
}

/// Outside the router: every error body becomes JSON, and the request is counted and timed.
pub async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = super::metrics::method_label(request.method());
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<MatchedRoute>()
        .map_or_else(|| "unmatched".to_string(), |r| r.0.clone());
    let response = as_json_error(response).await;
    let status = response.status();
    state
        .metrics
        .observe(&route, method, status.as_u16(), started.elapsed().as_secs_f64());
    tracing::info!(
        request_id,
        method,
        route,
        status = status.as_u16(),
        millis = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}

/// Writes (anything but GET and HEAD) need the bearer token, checked before the body is read.
pub async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match authorize(state.token.as_deref(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => super::bodies::refuse(&state, request, err).await,
    }
}

fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this server is read-only",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writes need `Authorization: Bearer <token>`",
        )),
        Some(g) if !constant_time_eq(g.as_bytes(), token.as_bytes()) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "wrong token"))
        }
        Some(_) => Ok(()),
    }
}

/// The credentials of a `Bearer` authorization, whose scheme is case-insensitive (RFC 9110
/// 11.1) and followed by one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start_matches(' '))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
