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

/// reg-server also runs in zone-2 and zone-3 (their Dataplanes synced as `ZONE.NAME`), whose
/// ingresses zone-1 reaches; a rule prefers zone-3.
#[test]
fn cross_zone_endpoints_follow_the_failover_rules() {
    use meridian_zone_cp::xds::crosszone::Zones;
    let mut world = mtls_world("STRICT");
    for zone in ["zone-2", "zone-3"] {
        world.push(resource(&format!(
            "type: Dataplane\nname: {zone}.reg-server-1\nlabels: {{kuma.io/zone: {zone}}}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 10002\n    tags: {{kuma.io/service: reg-server, kuma.io/protocol: http}}\n"
        )));
    }
    world.push(resource(
        "type: MeshLoadBalancingStrategy\nname: prefer-zone-3\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      localityAwareness:\n        crossZone:\n          failover:\n          - to: {type: Only, zones: [zone-3]}\n          - to: {type: Any}\n          failoverThreshold: {percentage: 50}\n",
    ));
    let mut ctx = MeshContext::new(world.iter());
    ctx.zones = Zones {
        local: "zone-1".into(),
        ingresses: [
            ("zone-2".to_owned(), vec![("192.0.2.2".to_owned(), 10001)]),
            ("zone-3".to_owned(), vec![("192.0.2.3".to_owned(), 10001)]),
        ]
        .into(),
    };
    let dp = world.iter().find(|r| r.name == "demo-1").expect("demo");
    let Spec::Dataplane(spec) = &dp.spec else { panic!() };
    let identity = Identity {
        ca_cert: "CA CERT",
        cert: "CERT",
        key: "KEY",
    };
    let snap = proxy_snapshot(&ctx, &dp.name, &dp.labels, spec, Some(identity));
    let endpoints = snap
        .of_type(meridian_zone_cp::xds::cache::ENDPOINT)
        .and_then(|e| e.get("reg-server"))
        .map(|e| meridian_zone_cp::xds::describe::describe(&e.resource))
        .expect("reg-server endpoints");
    insta::assert_snapshot!(endpoints);
}

#[test]
fn an_ingress_passes_each_services_tls_through_by_sni() {
    let world = mtls_world("STRICT");
    let ctx = MeshContext::new(world.iter());
    let Spec::ZoneIngress(ingress) = resource(
        "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 127.0.0.1\n  port: 10001\n  advertisedAddress: 192.0.2.1\n  advertisedPort: 443\n",
    )
    .spec
    else {
        panic!()
    };
    let out = describe_snapshot(&meridian_zone_cp::xds::translate::ingress_snapshot(
        &ingress,
        &[&ctx],
    ));
    assert!(out.contains("reg-server{mesh=default}"), "{out}");
    insta::assert_snapshot!(out);
}
