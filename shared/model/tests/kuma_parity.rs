//! What Kuma accepts is accepted, what it refuses is refused (each naming its field), for the
//! groups a comparison against Kuma's own documentation and validator inputs found.

use meridian_model::{Format, parse_one};

fn accepted(yaml: &str) {
    if let Err(e) = parse_one(yaml, Format::Yaml) {
        panic!("refused: {e}\n{yaml}");
    }
}

/// The fields of the causes a document is refused with.
fn refused(yaml: &str) -> Vec<String> {
    match parse_one(yaml, Format::Yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.causes().iter().map(|c| c.field.clone()).collect(),
    }
}

const DP: &str = "type: Dataplane\nname: dp\nmesh: default\nnetworking:\n";

#[test]
fn kuma_valid_documents_are_accepted() {
    // A bare Dataplane targetRef selects every Dataplane.
    accepted(
        "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: Dataplane}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1h}\n",
    );
    // An empty `to` (switching off what a broader policy would add) for the to-only kinds.
    for kind in ["MeshRetry", "MeshHealthCheck", "MeshLoadBalancingStrategy"] {
        accepted(&format!(
            "type: {kind}\nname: off\nspec:\n  targetRef: {{kind: MeshService, name: web}}\n  to: []\n"
        ));
    }
    // Tag values with `:` and `/`.
    accepted(&format!(
        "{DP}  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: web, version: '1.0:beta', team: a/b}}\n"
    ));
    // A Dataplane with no inbounds: it only calls out.
    accepted(&format!(
        "{DP}  address: 10.0.0.1\n  outbound:\n  - port: 20001\n    tags: {{kuma.io/service: web}}\n"
    ));
    // Kuma's upper-case header match types in MeshRetry.
    accepted(
        "type: MeshRetry\nname: r\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http:\n        retriableRequestHeaders: [{type: REGULAR_EXPRESSION, name: x-id, value: '^a'}]\n",
    );
    // A sectionName names one inbound of a Dataplane, for policies that configure inbounds.
    accepted(
        "type: MeshTrafficPermission\nname: p\nspec:\n  targetRef: {kind: Dataplane, name: web-1, sectionName: http}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
    );
    // Years in durations (certificate lifetimes).
    accepted(
        "type: Mesh\nname: m\nmtls:\n  enabledBackend: ca\n  backends:\n  - name: ca\n    type: builtin\n    dpCert: {rotation: {expiration: 1y}}\n",
    );
    // A ZoneIngress's available services without a mesh (the default mesh).
    accepted(
        "type: ZoneIngress\nname: zi\nnetworking: {address: 10.0.0.1, port: 10001}\navailableServices:\n- tags: {kuma.io/service: web}\n",
    );
}

#[test]
fn kuma_invalid_documents_are_refused_naming_the_field() {
    assert_eq!(
        refused(&format!(
            "{DP}  address: 0.0.0.0\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: web}}\n"
        )),
        ["networking.address"]
    );
    assert_eq!(
        refused(&format!(
            "{DP}  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: web, kuma.io/protocol: soap}}\n"
        )),
        ["networking.inbound[0].tags.kuma.io/protocol"]
    );
    assert_eq!(
        refused(&format!(
            "{DP}  address: 10.0.0.1\n  admin: {{port: 8080}}\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: web}}\n"
        )),
        ["networking.admin.port"]
    );
    assert_eq!(
        refused(
            "type: MeshTimeout\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1h}\n  rules:\n  - default: {idleTimeout: 2h}\n"
        ),
        ["spec.rules"]
    );
    assert_eq!(
        refused(
            "type: MeshLoadBalancingStrategy\nname: l\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {localityAwareness: {crossZone: {failoverThreshold: {percentage: 0}}}}\n"
        ),
        ["spec.to[0].default.localityAwareness.crossZone.failoverThreshold.percentage"]
    );
    for bad in [
        "default/web",
        "spiffe://",
        "spiffe://Default/web",
        "spiffe://default//web",
    ] {
        assert_eq!(
            refused(&format!(
                "type: MeshTrafficPermission\nname: p\nspec:\n  rules:\n  - default:\n      allow:\n      - spiffeID: {{type: Exact, value: '{bad}'}}\n"
            )),
            ["spec.rules[0].default.allow[0].spiffeID.value"],
            "{bad}"
        );
    }
    accepted(
        "type: MeshTrafficPermission\nname: p\nspec:\n  rules:\n  - default:\n      allow:\n      - spiffeID: {type: Prefix, value: 'spiffe://default/'}\n      deny:\n      - spiffeID: {type: Exact, value: 'spiffe://default/ns/demo/sa/web'}\n",
    );
    // Values Envoy would refuse (a NACK blocks every later update of the proxy).
    assert_eq!(
        refused(
            "type: MeshLoadBalancingStrategy\nname: l\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {loadBalancer: {type: Maglev, maglev: {tableSize: 1000}}}\n"
        ),
        ["spec.to[0].default.loadBalancer.maglev.tableSize"]
    );
    assert_eq!(
        refused(
            "type: MeshTimeout\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 0s}\n"
        ),
        ["spec.to[0].default.connectionTimeout"]
    );
    assert_eq!(
        refused(
            "type: MeshRetry\nname: r\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {backOff: {maxInterval: 10ms}, rateLimitedBackOff: {resetHeaders: []}}}\n"
        ),
        [
            "spec.to[0].default.http.backOff.maxInterval",
            "spec.to[0].default.http.rateLimitedBackOff.resetHeaders"
        ]
    );
    // A sectionName is for inbounds (as in Kuma): not on an outbound-only policy.
    assert_eq!(
        refused(
            "type: MeshRetry\nname: r\nspec:\n  targetRef: {kind: Dataplane, name: web-1, sectionName: http}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {tcp: {maxConnectAttempt: 2}}\n"
        ),
        ["spec.targetRef.sectionName"]
    );
    // What Meridian cannot apply yet is refused, not stored and ignored.
    assert_eq!(
        refused(
            "type: MeshTimeout\nname: t\nspec:\n  to:\n  - targetRef: {kind: MeshExternalService, name: ext}\n    default: {idleTimeout: 1h}\n"
        ),
        ["spec.to[0].targetRef.kind"]
    );
    assert_eq!(
        refused(
            "type: MeshTrace\nname: t\nspec:\n  default:\n    backends:\n    - type: Datadog\n      datadog: {url: 'http://dd:8126'}\n"
        ),
        ["spec.default.backends[0].type"]
    );
}

#[test]
fn kumas_older_mesh_wide_sections_are_kept_with_a_warning() {
    let mesh = parse_one(
        "type: Mesh\nname: m\ntracing:\n  defaultBackend: z\n  backends:\n  - name: z\n    type: zipkin\n    conf: {url: 'http://zipkin:9411/api/v2/spans'}\nlogging:\n  backends:\n  - name: f\n    type: file\n    conf: {path: /tmp/access.log}\n",
        Format::Yaml,
    )
    .expect("accepted")
    .resource;
    let warnings = mesh.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("tracing is kept but not applied"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("MeshTrace"), "{warnings:?}");
}
