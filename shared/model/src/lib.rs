//! Meridian's domain model: resource kinds, their typed specs, parsing of Kuma's universal
//! and Kubernetes YAML forms, and validation that names every field at fault.
//!
//! Nothing here does I/O; the stores, the REST API and `meshctl` all go through it, so a
//! resource is validated the same way wherever it enters.
//!
//! ```text
//!   text (YAML/JSON) --parse_documents--> Value --from_value--> Submission { Resource }
//!                                                    |
//!                                     Spec::from_value (serde, unknown fields refused)
//!                                     Spec::validate   (ranges, references)
//! ```

#![forbid(unsafe_code)]

pub mod crd;
mod error;
pub mod extension;
mod kind;
pub mod policies;
pub mod resolve;
mod resource;
pub mod targetref;
pub mod text;
mod trace;
pub mod validate;
pub mod values;

pub use error::{FieldError, ResourceError};
pub use kind::{Kind, Scope, Spec};
pub use resource::{
    DEFAULT_MESH, Format, K8S_API_VERSION, MESH_LABEL, Resource, ResourceKey, Stored, Submission, ZONE_LABEL,
    from_value, parse_all, parse_documents, parse_one, rfc3339, synced_zone,
};
pub use trace::SpanContext;

#[cfg(test)]
pub(crate) mod testing {
    /// The error causes of a document that must not parse, as `field: message` lines.
    pub fn errors(yaml: &str) -> Vec<String> {
        match crate::parse_one(yaml, crate::Format::Yaml) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.causes().iter().map(ToString::to_string).collect(),
        }
    }
}
