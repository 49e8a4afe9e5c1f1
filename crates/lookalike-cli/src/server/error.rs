//! The API's error body, `{"error": {"code", "message"}}`, with its HTTP status.

use axum::http::StatusCode;
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
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        (self.status, body).into_response()
    }
}

impl From<lookalike::image::ImageError> for ApiError {
    fn from(err: lookalike::image::ImageError) -> Self {
        use lookalike::image::ImageError::*;
        match err {
            NotAnImage | Empty => Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image", err.to_string()),
            TooLarge(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", err.to_string()),
            Undecodable(_) | Unreadable(_) | NotAFile => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image", err.to_string())
            }
        }
    }
}

impl From<lookalike::model::batcher::SubmitError> for ApiError {
    fn from(err: lookalike::model::batcher::SubmitError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", err.to_string())
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
