//! The REST error body, `{title, details, causes: [{field, message}]}`, and how domain errors
//! map onto it. Internal details are logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_model::{FieldError, ResourceError};
use serde::Serialize;

use meridian_store::StoreError;

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub title: String,
    pub details: String,
    pub causes: Vec<FieldError>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &str, details: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                title: title.to_owned(),
                details: details.into(),
                causes: Vec::new(),
            },
        }
    }

    pub fn with_causes(mut self, causes: Vec<FieldError>) -> Self {
        self.body.causes = causes;
        self
    }

    /// A request that names a field wrongly: 400 with that one cause.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "Bad request",
            format!("{field}: {message}"),
        )
        .with_causes(vec![FieldError::new(field, message)])
    }

    pub fn not_found(details: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", details)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ResourceError> for ApiError {
    fn from(e: ResourceError) -> Self {
        let title = match &e {
            ResourceError::Syntax { .. } => "Malformed body",
            ResourceError::UnknownKind { .. } => "Unknown kind",
            ResourceError::Invalid(_) => "Invalid resource",
        };
        let causes = e.causes();
        Self::new(StatusCode::BAD_REQUEST, title, e.to_string()).with_causes(causes)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(d) => Self::not_found(d),
            StoreError::Forbidden(d) => Self::new(StatusCode::FORBIDDEN, "Forbidden", d),
            StoreError::Conflict(d) => Self::new(StatusCode::CONFLICT, "Conflict", d),
            StoreError::TooOld { .. } => Self::new(StatusCode::GONE, "Gone", e.to_string()),
            StoreError::Unavailable(d) => {
                tracing::warn!(error = %d, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable",
                    "the store cannot be reached; retry later",
                )
            }
            StoreError::Internal(d) => {
                tracing::error!(error = %d, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "the request failed; the server log has details",
                )
            }
        }
    }
}
