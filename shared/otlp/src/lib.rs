//! OTLP for Meridian, with no OpenTelemetry SDK: the few messages it needs are in
//! `meridian-proto`.
//!
//! - [`receiver`]: takes OTLP/gRPC exports, keeps the last traces, prints waterfalls (the demo
//!   and the tests use it; MeshTrace can point Envoys at it).
//! - [`exporter`]: the control planes' own spans (a policy's way from the REST write to the
//!   xDS push), sent to `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set.

pub mod exporter;
pub mod receiver;

pub use receiver::{ReceivedSpan, Receiver, waterfall};
