//! How the monitor answers when something is wrong: a status, a stable code
//! and a message safe to show. Details of internal errors go to the log,
//! never to the caller.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer of the JSON API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code: `invalid`, `unauthorized`, `forbidden`, `not_found`, `unavailable`, `internal`.
    pub code: &'static str,
    /// What went wrong, safe to show.
    pub message: String,
    /// The offending field, for `invalid`.
    pub field: Option<String>,
}

impl ApiError {
    /// 400 naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 401: no token, or not a live one.
    pub fn unauthorized() -> Self {
        Self::plain(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 403 with a reason.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::plain(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404; another tenant's run answers exactly like this.
    pub fn not_found() -> Self {
        Self::plain(StatusCode::NOT_FOUND, "not_found", "no such run")
    }

    fn plain(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<opsrun::Error> for ApiError {
    fn from(e: opsrun::Error) -> Self {
        match e {
            opsrun::Error::Invalid { field, reason } => {
                ApiError::invalid(field, format!("invalid {field}: {reason}"))
            }
            e if e.is_database_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                Self::plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the run ledger is unavailable; try again shortly",
                )
            }
            e => {
                tracing::error!(error = %e, "request failed");
                Self::plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the monitor's log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {
            "code": self.code,
            "message": opsrun::sanitize::redact(&self.message),
            "field": self.field,
        }}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}
