//! Generates the gRPC service code for the messages in `src/sync.rs`, `src/raft.rs` and
//! `src/otlp.rs`. The messages are written
//! in Rust with prost's derive (their field numbers are the wire contract), so the build needs
//! no `protoc`.

fn main() {
    let sync = tonic_build::manual::Service::builder()
        .name("GlobalSync")
        .package("meridian.sync.v1")
        .method(
            tonic_build::manual::Method::builder()
                .name("stream")
                .route_name("Stream")
                .input_type("crate::sync::ZoneMessage")
                .output_type("crate::sync::GlobalMessage")
                .codec_path("tonic_prost::ProstCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    let mut raft = tonic_build::manual::Service::builder()
        .name("ZoneRaft")
        .package("meridian.raft.v1");
    for (name, route) in [
        ("append_entries", "AppendEntries"),
        ("vote", "Vote"),
        ("install_snapshot", "InstallSnapshot"),
        ("forward", "Forward"),
    ] {
        raft = raft.method(
            tonic_build::manual::Method::builder()
                .name(name)
                .route_name(route)
                .input_type("crate::raft::RaftPayload")
                .output_type("crate::raft::RaftPayload")
                .codec_path("tonic_prost::ProstCodec")
                .build(),
        );
    }
    let otlp = tonic_build::manual::Service::builder()
        .name("TraceService")
        .package("opentelemetry.proto.collector.trace.v1")
        .method(
            tonic_build::manual::Method::builder()
                .name("export")
                .route_name("Export")
                .input_type("crate::otlp::ExportTraceServiceRequest")
                .output_type("crate::otlp::ExportTraceServiceResponse")
                .codec_path("tonic_prost::ProstCodec")
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new().compile(&[sync, raft.build(), otlp]);
}
