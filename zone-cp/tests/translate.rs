//! Snapshot tests: the Envoy config generated for a few Dataplanes, pinned. A change in the
//! output shows as a diff to review (`cargo insta review`, or INSTA_UPDATE=always).

use meridian_model::{Format, Resource, Spec, parse_one};
use meridian_zone_cp::xds::describe::describe_snapshot;
use meridian_zone_cp::xds::translate::{Identity, MeshContext, proxy_snapshot};

fn resource(yaml: &str) -> Resource {
    parse_one(yaml, Format::Yaml).expect("valid").resource
}

fn world() -> Vec<Resource> {
    vec![
        resource(
            "type: Dataplane\nname: demo-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags: {kuma.io/service: demo, kuma.io/protocol: http}\n  outbound:\n  - port: 20001\n    tags: {kuma.io/service: reg-server}\n  - port: 20002\n    tags: {kuma.io/service: db}\n",
        ),
        resource(
            "type: Dataplane\nname: reg-server-1\nnetworking:\n  address: 127.0.0.2\n  inbound:\n  - port: 10002\n    servicePort: 8081\n    tags: {kuma.io/service: reg-server, kuma.io/protocol: http}\n",
        ),
        resource(
            "type: Dataplane\nname: reg-server-2\nnetworking:\n  address: 127.0.0.3\n  inbound:\n  - port: 10002\n    servicePort: 8081\n    health: {ready: false}\n    tags: {kuma.io/service: reg-server, kuma.io/protocol: http}\n",
        ),
        resource(
            "type: Dataplane\nname: db-1\nnetworking:\n  address: 127.0.0.4\n  inbound:\n  - port: 5432\n    tags: {kuma.io/service: db}\n",
        ),
        resource(
            "type: MeshTimeout\nname: timeouts\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default: {connectionTimeout: 2s, idleTimeout: 30s, http: {requestTimeout: 2s, streamIdleTimeout: 10s}}\n",
        ),
        resource(
            "type: MeshRetry\nname: retries\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http:\n        numRetries: 3\n        perTryTimeout: 500ms\n        backOff: {baseInterval: 20ms, maxInterval: 200ms}\n        retryOn: [5xx, ConnectFailure, \"503\"]\n",
        ),
    ]
}

fn snapshot_in(world: &[Resource], name: &str) -> String {
    let ctx = MeshContext::new(world.iter());
    let dp = world.iter().find(|r| r.name == name).expect("dataplane");
    let Spec::Dataplane(spec) = &dp.spec else {
        panic!("not a dataplane")
    };
    let identity = Identity {
        ca_cert: "CA CERT",
        cert: "CERT",
        key: "KEY",
    };
    describe_snapshot(&proxy_snapshot(&ctx, &dp.name, &dp.labels, spec, Some(identity)))
}

fn snapshot_of(name: &str) -> String {
    snapshot_in(&world(), name)
}

/// The world with mesh mTLS on (in `mode`) and the seed's TrafficPermission.
fn mtls_world(mode: &str) -> Vec<Resource> {
    let mut world = world();
    world.push(resource(&format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: {mode}\n"
    )));
    world.push(resource(
        "type: TrafficPermission\nname: allow-demo-to-reg\nsources:\n- match: {kuma.io/service: demo}\ndestinations:\n- match: {kuma.io/service: reg-server}\n",
    ));
    world
}

#[test]
fn mtls_inbound_checks_the_peer_identity() {
    let out = snapshot_in(&mtls_world("STRICT"), "reg-server-1");
    assert!(!out.contains("KEY"), "private keys never show");
    insta::assert_snapshot!(out);
}

#[test]
fn mtls_outbounds_expect_the_destination_identity() {
    insta::assert_snapshot!(snapshot_in(&mtls_world("STRICT"), "demo-1"));
}

#[test]
fn permissive_inbound_also_takes_plaintext() {
    insta::assert_snapshot!(snapshot_in(&mtls_world("PERMISSIVE"), "db-1"));
}

#[test]
fn demo_with_http_and_tcp_outbounds() {
    insta::assert_snapshot!(snapshot_of("demo-1"));
}

#[test]
fn reg_server_inbound_only() {
    insta::assert_snapshot!(snapshot_of("reg-server-1"));
}

#[test]
fn db_tcp_inbound() {
    insta::assert_snapshot!(snapshot_of("db-1"));
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(snapshot_of("demo-1"), snapshot_of("demo-1"));
}
