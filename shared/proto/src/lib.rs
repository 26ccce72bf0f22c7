//! Messages and services between Meridian's control planes.
//!
//! ```text
//!   zone leader ──ZoneMessage{Hello, Ack, ...}──> global-cp   (one bidirectional stream per zone)
//!               <──GlobalMessage{Batch, ...}────
//! ```

#![forbid(unsafe_code)]

pub mod otlp;
pub mod raft;
pub mod sync;

/// The generated OTLP `TraceService` client and server (a trace receiver).
pub mod otlp_service {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
    include!(concat!(
        env!("OUT_DIR"),
        "/opentelemetry.proto.collector.trace.v1.TraceService.rs"
    ));
}

/// The generated `GlobalSync` client and server.
pub mod sync_service {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
    include!(concat!(env!("OUT_DIR"), "/meridian.sync.v1.GlobalSync.rs"));
}

/// The generated `ZoneRaft` client and server.
pub mod raft_service {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
    include!(concat!(env!("OUT_DIR"), "/meridian.raft.v1.ZoneRaft.rs"));
}
