//! What every request goes through before and after its handler: the connection loop with its
//! timeouts and connection limit, request ids and logs, metrics, JSON error bodies, the body read
//! under a memory budget and time limits, and the token check for writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use super::error::{as_json_error, ApiError};
use super::Shared;

/// A body must arrive within this in all (and without a pause longer than the client timeout).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// Open connections at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// Room for the multipart framing and form fields around an image of the upload limit.
pub const MULTIPART_ROOM: usize = 64 * 1024;
/// How long a shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
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
    let method = request.method().clone();
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
    state.metrics.observe(
        &route,
        method.as_str(),
        status.as_u16(),
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(
        request_id,
        method = %method,
        route,
        status = status.as_u16(),
        millis = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    TimedOut,
    Broken(String),
}

/// Reads a body of at most `limit` bytes whose parts arrive with pauses no longer than `idle`.
/// With `keep: false` the bytes are dropped as they come, to empty the connection cheaply.
async fn read_body(mut body: Body, limit: usize, idle: Duration, keep: bool) -> Result<Bytes, BodyError> {
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    loop {
        let wait = deadline.min(tokio::time::Instant::now() + idle);
        let frame = match tokio::time::timeout_at(wait, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(BodyError::Broken(err.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit {
                return Err(BodyError::TooLarge);
            }
            if keep {
                bytes.extend_from_slice(&data);
            }
        }
    }
    Ok(Bytes::from(bytes))
}

/// Reads each request body completely before any handler runs, within the upload limit, the
/// time limits and the server's budget for bodies held at once. A handler that answers early
/// (401, 404) would otherwise leave the upload unread, and the connection would be cut under a
/// client still sending before it sees the answer.
pub async fn read_whole_body(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let limit = state.max_upload_bytes + MULTIPART_ROOM;
    let (parts, body) = request.into_parts();
    let expected = HttpBody::size_hint(&body);
    if expected.exact() == Some(0) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let wanted = expected.exact().map_or(limit, |n| (n as usize).min(limit));
    let Some(held) = state.admission.hold_body(wanted) else {
        state.metrics.refused("bodies");
        let _ = read_body(body, limit, state.client_timeout, false).await;
        return ApiError::overloaded("the server is holding too many uploads; try again shortly").into_response();
    };
    let bytes = match read_body(body, limit, state.client_timeout, true).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return super::upload_too_large(&state).into_response(),
        Err(BodyError::TimedOut) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive in time (a pause over {:.1} s, or over {} s in all)",
                    state.client_timeout.as_secs_f64(),
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
        Err(BodyError::Broken(err)) => {
            return ApiError::bad_request(format!("could not read the request body: {err}")).into_response()
        }
    };
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    drop(held);
    response
}

/// Writes (anything but GET and HEAD) need the bearer token, checked before the body is parsed.
pub async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match authorize(state.token.as_deref(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
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
        .and_then(|v| v.strip_prefix("Bearer "));
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
