//! The API's error body, `{"error": {"code", "message"}}`, with its HTTP status; every error
//! the server sends has it, including axum's own rejections (see [`as_json_error`]).

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
    }
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Every answer the library gives an error, by its kind: the one place statuses are decided.
impl From<lookalike::error::Error> for ApiError {
    fn from(err: lookalike::error::Error) -> Self {
        use lookalike::error::{Error::*, ImageProblem};
        let (status, code) = match &err {
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            InvalidInput(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Image { problem, .. } => match problem {
                ImageProblem::NotAnImage => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image"),
                ImageProblem::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
                ImageProblem::Undecodable => (StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image"),
            },
            WrongModel(_) => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_model"),
            Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, err.to_string())
    }
}

impl From<lookalike::image::ImageError> for ApiError {
    fn from(err: lookalike::image::ImageError) -> Self {
        lookalike::error::Error::from(err).into()
    }
}

impl From<lookalike::model::batcher::SubmitError> for ApiError {
    fn from(err: lookalike::model::batcher::SubmitError) -> Self {
        lookalike::error::Error::from(err).into()
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(err: axum::extract::multipart::MultipartError) -> Self {
        let status = err.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "upload_too_large"
        } else {
            "bad_multipart"
        };
        Self::new(status, code, err.body_text())
    }
}

/// The code for an error status that no handler described (axum's rejections, 404 and 405 of
/// the router, a caught panic).
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "upload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// `response` unchanged if it succeeded or is already JSON; otherwise the same status (and
/// headers such as `Allow`) with the error body, its text kept as the message.
pub async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = json!({ "error": { "code": code_for(status), "message": message } }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}
