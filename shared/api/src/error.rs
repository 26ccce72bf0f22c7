//! The REST error body, `{title, details, causes: [{field, message}]}`, and how domain errors
//! map onto it and onto gRPC statuses: one classification ([`ErrorKind`]), one table for each
//! protocol. Internal details are logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_model::{FieldError, ResourceError};
use serde::Serialize;

use meridian_store::{ErrorKind, StoreError};

/// The HTTP status of each kind of failure.
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code of each kind of failure.
pub fn grpc_code(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::Forbidden => tonic::Code::PermissionDenied,
        ErrorKind::Conflict => tonic::Code::FailedPrecondition,
        ErrorKind::Gone => tonic::Code::OutOfRange,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Internal => tonic::Code::Internal,
    }
}

/// What a caller is told of a store error, and its title: the details for what is theirs to
/// act on, a fixed sentence for the server's own faults (logged here with their details).
fn public(e: &StoreError) -> (&'static str, String) {
    match e {
        StoreError::NotFound(d) => ("Not found", d.clone()),
        StoreError::Forbidden(d) => ("Forbidden", d.clone()),
        StoreError::Conflict(d) => ("Conflict", d.clone()),
        StoreError::TooOld { .. } => ("Gone", e.to_string()),
        StoreError::Unavailable(d) => {
            tracing::warn!(error = %d, "store unavailable");
            (
                "Store unavailable",
                "the store cannot be reached; retry later".into(),
            )
        }
        StoreError::Internal(d) => {
            tracing::error!(error = %d, "store error");
            (
                "Internal error",
                "the request failed; the server log has details".into(),
            )
        }
    }
}

/// A store error as a gRPC status, `context` saying what was being done.
pub fn grpc_status(context: &str, e: &StoreError) -> tonic::Status {
    let (_, details) = public(e);
    tonic::Status::new(grpc_code(e.kind()), format!("{context}: {details}"))
}

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
        let (title, details) = public(&e);
        Self::new(http_status(e.kind()), title, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_reads_the_same_over_http_and_grpc_and_keeps_the_servers_faults_to_the_log() {
        let cases = [
            (
                StoreError::NotFound("mesh \"m\" not found".into()),
                404,
                tonic::Code::NotFound,
                true,
            ),
            (
                StoreError::Forbidden("not yours".into()),
                403,
                tonic::Code::PermissionDenied,
                true,
            ),
            (
                StoreError::Conflict("version 3 is stale".into()),
                409,
                tonic::Code::FailedPrecondition,
                true,
            ),
            (
                StoreError::TooOld { asked: 1, horizon: 9 },
                410,
                tonic::Code::OutOfRange,
                true,
            ),
            (
                StoreError::Unavailable("postgres://u:secret@db refused".into()),
                503,
                tonic::Code::Unavailable,
                false,
            ),
            (
                StoreError::Internal("secret row 7 is corrupt".into()),
                500,
                tonic::Code::Internal,
                false,
            ),
        ];
        for (e, http, grpc, shown) in cases {
            let status = grpc_status("reading", &e);
            let api = ApiError::from(e.clone());
            assert_eq!((api.status.as_u16(), status.code()), (http, grpc), "{e:?}");
            let detail = e.to_string();
            let detail = detail
                .trim_start_matches("store unavailable: ")
                .trim_start_matches("store error: ");
            assert_eq!(
                api.body.details.contains(detail),
                shown,
                "{e:?}: {}",
                api.body.details
            );
            assert_eq!(
                status.message().contains(detail),
                shown,
                "{e:?}: {}",
                status.message()
            );
            assert!(!api.body.details.contains("secret") && !status.message().contains("secret"));
        }
    }
}
