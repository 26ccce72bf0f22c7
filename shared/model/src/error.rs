//! Errors that name the field at fault.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem with one field of a resource, e.g.
/// `spec.to[0].default.backends[0].conf.endpoint: must be host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldError {
    /// Path of the field, in the form the user wrote it (`spec.from[0].targetRef.kind`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a document could not become a [`crate::Resource`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The text is not well-formed YAML or JSON.
    #[error("malformed {format} at line {line}, column {column}: {message}")]
    Syntax {
        format: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    /// The document is well-formed but names a kind Meridian does not know.
    #[error("unknown kind {kind:?}: expected one of {}", crate::Kind::names().join(", "))]
    UnknownKind { kind: String },
    /// The document is well-formed but some fields are wrong; every problem is listed.
    #[error("invalid resource: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

impl ResourceError {
    /// The per-field causes, for an error body.
    pub fn causes(&self) -> Vec<FieldError> {
        match self {
            ResourceError::Syntax {
                line,
                column,
                message,
                ..
            } => vec![FieldError::new(
                "",
                format!("line {line}, column {column}: {message}"),
            )],
            ResourceError::UnknownKind { kind } => vec![FieldError::new(
                "type",
                format!(
                    "unknown kind {kind:?}; known kinds: {}",
                    crate::Kind::names().join(", ")
                ),
            )],
            ResourceError::Invalid(errors) => errors.clone(),
        }
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
