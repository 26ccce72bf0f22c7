//! A transparent proxy's config: virtual listeners for what it may reach (and nothing else),
//! the redirect listeners, passthrough per the Mesh, and its DNS records.

use std::collections::BTreeSet;

use meridian_model::{Format, Resource, Spec, parse_one};
use meridian_zone_cp::xds::cache::{CLUSTER, LISTENER, Snapshot};
use meridian_zone_cp::xds::describe::describe_snapshot;
use meridian_zone_cp::xds::translate::{Identity, MeshContext, proxy_snapshot};

fn resource(yaml: &str) -> Resource {
    parse_one(yaml, Format::Yaml).expect("valid").resource
}

const MTLS: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";

fn world(mesh: &str, web_tp: &str) -> Vec<Resource> {
    let dp = |name: &str, address: &str, service: &str, extra: &str| {
        resource(&format!(
            "type: Dataplane\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n{extra}"
        ))
    };
    vec![
        resource(mesh),
        dp(
            "web-1",
            "10.0.0.1",
            "web",
            &format!("  transparentProxying: {web_tp}\n"),
        ),
        dp("api-1", "10.0.0.2", "api", ""),
        dp("db-1", "10.0.0.3", "db", ""),
        resource(
            "type: MeshTrafficPermission\nname: web-to-api\nspec:\n  targetRef: {kind: MeshService, name: api}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n",
        ),
        resource(
            "type: VirtualIPs\nname: default\nmesh: default\nservices:\n  web: 240.0.0.1\n  api: 240.0.0.2\n  db: 240.0.0.3\n",
        ),
    ]
}

fn web(world: &[Resource]) -> Snapshot {
    let ctx = MeshContext::new(world.iter());
    let dp = world.iter().find(|r| r.name == "web-1").expect("web-1");
    let Spec::Dataplane(spec) = &dp.spec else {
        panic!("not a dataplane")
    };
    let identity = Identity {
        ca_cert: "CA",
        cert: "CERT",
        key: "KEY",
    };
    let snap = proxy_snapshot(&ctx, &dp.name, &dp.labels, spec, Some(identity));
    meridian_zone_cp::xds::consistency::check(&snap).expect("consistent");
    snap
}

fn names(snap: &Snapshot, type_url: &str) -> BTreeSet<String> {
    snap.of_type(type_url)
        .into_iter()
        .flatten()
        .map(|(n, _)| n.clone())
        .collect()
}

#[test]
fn a_transparent_proxy_gets_what_it_may_reach_at_virtual_ips() {
    let snap = web(&world(MTLS, "{}"));
    let listeners = names(&snap, LISTENER);
    assert!(listeners.contains("outbound:240.0.0.2:80"), "{listeners:?}");
    assert!(
        !listeners.contains("outbound:240.0.0.3:80"),
        "db is not web's to call"
    );
    assert!(!listeners.contains("outbound:240.0.0.1:80"), "nor is web itself");
    for l in [
        "outbound:passthrough:ipv4",
        "inbound:passthrough:ipv4",
        "_meridian:dns",
        "inbound:10.0.0.1:10001",
    ] {
        assert!(listeners.contains(l), "{l} in {listeners:?}");
    }
    let clusters = names(&snap, CLUSTER);
    assert!(
        clusters.contains("api") && !clusters.contains("db"),
        "{clusters:?}"
    );
    assert!(clusters.contains("outbound:passthrough:ipv4") && clusters.contains("inbound:passthrough:ipv4"));
    let text = describe_snapshot(&snap);
    assert!(
        text.contains("api.mesh 240.0.0.2") && !text.contains("db.mesh"),
        "the DNS records"
    );
    // Virtual listeners and inbounds are handed connections, never bound.
    assert!(
        text.contains("use_original_dst: Some(\n        BoolValue {\n            value: true"),
        "{text}"
    );
}

#[test]
fn reachable_services_and_mtls_off_decide_the_outbounds() {
    let listed = web(&world(MTLS, "{reachableServices: [db]}"));
    let listeners = names(&listed, LISTENER);
    assert!(listeners.contains("outbound:240.0.0.3:80") && !listeners.contains("outbound:240.0.0.2:80"));
    // Nothing is enforced without mTLS: every service is reachable.
    let open = web(&world("type: Mesh\nname: default\n", "{}"));
    let listeners = names(&open, LISTENER);
    for vip in ["240.0.0.1", "240.0.0.2", "240.0.0.3"] {
        assert!(listeners.contains(&format!("outbound:{vip}:80")), "{vip}");
    }
}

#[test]
fn the_mesh_decides_whether_traffic_outside_it_passes() {
    let closed = web(&world(
        &format!("{MTLS}networking:\n  outbound:\n    passthrough: false\n"),
        "{redirectPortOutbound: 15101, redirectPortInbound: 15106}",
    ));
    let clusters = names(&closed, CLUSTER);
    assert!(
        clusters.contains("outbound:passthrough:blocked") && !clusters.contains("outbound:passthrough:ipv4")
    );
    let text = describe_snapshot(&closed);
    assert!(
        text.contains("15101") && text.contains("15106"),
        "the redirect ports"
    );
}

#[test]
fn services_without_a_virtual_ip_yet_wait_for_one() {
    let mut w = world("type: Mesh\nname: default\n", "{}");
    w.retain(|r| r.kind() != meridian_model::Kind::VirtualIPs);
    let listeners = names(&web(&w), LISTENER);
    assert!(
        !listeners.iter().any(|l| l.starts_with("outbound:240.")),
        "{listeners:?}"
    );
    assert!(listeners.contains("outbound:passthrough:ipv4"));
}

#[test]
fn ip_family_mode_decides_the_redirect_addresses() {
    let text = |mode: &str| describe_snapshot(&web(&world(MTLS, &format!("{{ipFamilyMode: {mode}}}"))));
    let v4 = text("IPv4");
    assert!(!v4.contains("\"::\"") && !v4.contains("\"::6\""), "IPv4 only");
    let dual = text("DualStack");
    assert!(
        dual.contains("additional_addresses: [") && dual.contains("\"::\""),
        "both families"
    );
    assert!(
        dual.contains("\"127.0.0.6\"") && dual.contains("\"::6\""),
        "a source in each family"
    );
    let v6 = text("IPv6");
    assert!(
        v6.contains("\"::6\"") && !v6.contains("\"127.0.0.6\""),
        "IPv6 only"
    );
}
