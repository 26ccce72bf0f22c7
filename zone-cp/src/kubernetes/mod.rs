//! The Kubernetes side of a zone: the sidecar injector and the validating webhook, and the
//! conversion of injected Pods (with the Services that select them) into Dataplanes.
//!
//! ```text
//!   API server ──AdmissionReview (HTTPS)──> webhook ──inject──> JSONPatch (Pod)
//!                                                   └─validate─> the model's field errors
//!   Pods, Services (kube-runtime stores) ──convert──> Dataplane ──> the zone's Raft store
//! ```

pub mod convert;
pub mod inject;
pub mod webhook;
