//! A policy change regenerates only the resource types its plugin says it shapes
//! (`PolicyPlugin::shapes`): these tests hold each built-in kind to that. For every kind, a
//! policy of it is taken out of a mesh that has one of every kind (mTLS on): what changes must
//! lie inside its types, and a translation of those types alone, put over the snapshot from
//! before, must be the full translation.

use std::collections::BTreeMap;

use meridian_model::{Format, Kind, Resource, Spec, parse_one};
use meridian_zone_cp::xds::cache::{PUSH_ORDER, Snapshot, Types};
use meridian_zone_cp::xds::policies::{PLUGINS, shapes};
use meridian_zone_cp::xds::translate::{Identity, MeshContext, proxy_snapshot, proxy_snapshot_of};

fn resource(yaml: &str) -> Resource {
    parse_one(yaml, Format::Yaml)
        .unwrap_or_else(|e| panic!("{yaml}: {e}"))
        .resource
}

const IDENTITY: Identity<'static> = Identity {
    ca_cert: "CA CERT",
    cert: "CERT",
    key: "KEY",
};

/// Proxies that serve and call HTTP and TCP, in a mesh with mTLS on.
fn mesh() -> Vec<Resource> {
    [
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
        "type: Dataplane\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags: {kuma.io/service: web, kuma.io/protocol: http}\n  outbound:\n  - port: 20001\n    tags: {kuma.io/service: backend}\n  - port: 20002\n    tags: {kuma.io/service: db}\n",
        "type: Dataplane\nname: backend-1\nnetworking:\n  address: 127.0.0.2\n  inbound:\n  - port: 10002\n    servicePort: 8081\n    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}\n",
        "type: Dataplane\nname: backend-2\nnetworking:\n  address: 127.0.0.3\n  inbound:\n  - port: 10002\n    servicePort: 8081\n    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}\n",
        "type: Dataplane\nname: db-1\nnetworking:\n  address: 127.0.0.4\n  inbound:\n  - port: 5432\n    tags: {kuma.io/service: db, kuma.io/protocol: tcp}\n",
    ]
    .into_iter()
    .map(resource)
    .collect()
}

/// One policy of every built-in kind with a plugin, each changing what proxies get.
fn policies() -> Vec<Resource> {
    [
        "type: MeshTrafficPermission\nname: allow-web\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n",
        "type: TrafficPermission\nname: allow-all\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: db}\n",
        "type: MeshTimeout\nname: timeouts\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 2s, idleTimeout: 30s, http: {requestTimeout: 2s}}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 20s}\n",
        "type: MeshRetry\nname: retries\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      tcp: {maxConnectAttempt: 3}\n      http: {numRetries: 3, perTryTimeout: 500ms}\n",
        "type: MeshCircuitBreaker\nname: breakers\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      connectionLimits: {maxConnections: 2, maxPendingRequests: 8}\n      outlierDetection: {detectors: {totalFailures: {consecutive: 10}}}\n",
        "type: MeshHealthCheck\nname: checks\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    default: {interval: 10s, timeout: 2s, unhealthyThreshold: 3, healthyThreshold: 1, http: {path: /health}}\n",
        "type: MeshLoadBalancingStrategy\nname: balancing\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      loadBalancer:\n        type: RingHash\n        ringHash: {hashPolicies: [{type: Header, header: {name: x-user}}]}\n",
        "type: MeshHTTPRoute\nname: routes\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{headers: [{name: x-version, value: v2}]}]\n      default:\n        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-routed, value: 'yes'}]}}]\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 80}, {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 20}]\n",
        "type: MeshTCPRoute\nname: tcp-routes\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: db}\n    rules:\n    - default:\n        backendRefs: [{kind: MeshServiceSubset, name: db, tags: {role: primary}, weight: 9}, {kind: MeshService, name: db, weight: 1}]\n",
        "type: MeshFaultInjection\nname: faults\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {http: [{abort: {httpStatus: 503, percentage: 50}}, {delay: {value: 1s, percentage: 10}}]}\n",
        "type: MeshRateLimit\nname: limits\nspec:\n  targetRef: {kind: Mesh}\n  rules:\n  - default: {local: {http: {requestRate: {num: 10, interval: 1s}}, tcp: {connectionRate: {num: 5, interval: 1s}}}}\n",
"type: Timeout\nname: legacy-timeout\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  connectTimeout: 2s\n  http: {requestTimeout: 5s}\n",
        "type: Retry\nname: legacy-retry\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  http: {numRetries: 3, retryOn: [all_5xx]}\n",
        "type: CircuitBreaker\nname: legacy-cb\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  thresholds: {maxConnections: 7}\n",
        "type: HealthCheck\nname: legacy-hc\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf: {interval: 7s, timeout: 1s, unhealthyThreshold: 2, healthyThreshold: 1, healthyPanicThreshold: 40}\n",
        "type: TrafficRoute\nname: legacy-route\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  split:\n  - {weight: 90, destination: {kuma.io/service: backend, version: v1}}\n  - {weight: 10, destination: {kuma.io/service: backend, version: v2}}\n",
        "type: FaultInjection\nname: legacy-fault\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  delay: {value: 1s, percentage: 5}\n",
        "type: RateLimit\nname: legacy-limit\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  http: {requests: 100, interval: 1s}\n",
"type: MeshTLS\nname: tls\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      tlsVersion: {min: TLS12, max: TLS13}\n      tlsCiphers: [ECDHE-ECDSA-AES128-GCM-SHA256]\n      mode: Permissive\n",
        "type: MeshTrace\nname: traces\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n    - type: OpenTelemetry\n      openTelemetry: {endpoint: 'otel-collector:4317'}\n    sampling: {overall: 80}\n",
    ]
    .into_iter()
    .map(resource)
    .collect()
}

/// Every proxy's snapshot in `world`.
fn snapshots(world: &[Resource], types: Types) -> BTreeMap<String, Snapshot> {
    let ctx = MeshContext::new(world.iter());
    world
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Dataplane(dp) => Some((
                r.name.clone(),
                proxy_snapshot_of(&ctx, &r.name, &r.labels, dp, Some(IDENTITY), types),
            )),
            _ => None,
        })
        .collect()
}

/// `snapshot` with the resources of `types` alone.
fn restricted(snapshot: &Snapshot, types: Types) -> Snapshot {
    let mut out = snapshot.clone();
    out.resources.retain(|t, _| types.contains(t));
    out
}

fn complement(types: Types) -> Types {
    Types::of(
        &PUSH_ORDER
            .into_iter()
            .filter(|t| !types.contains(t))
            .collect::<Vec<_>>(),
    )
}

/// The kinds of [`policies`], each with its world without and with its policy.
fn each_kind() -> Vec<(Kind, Vec<Resource>, Vec<Resource>)> {
    let all = policies();
    all.iter()
        .map(|p| {
            let mut with = mesh();
            with.extend(all.iter().cloned());
            let without: Vec<Resource> = with.iter().filter(|r| r.name != p.name).cloned().collect();
            (p.kind(), without, with)
        })
        .collect()
}

#[test]
fn every_builtin_plugin_has_a_sample_here() {
    let sampled: Vec<Kind> = policies().iter().map(Resource::kind).collect();
    for plugin in PLUGINS {
        for kind in plugin.kinds() {
            assert!(sampled.contains(kind), "add a {kind} policy to `policies`");
        }
    }
}

#[test]
fn every_builtin_policy_kind_changes_only_the_types_it_shapes() {
    for (kind, without, with) in each_kind() {
        let types = shapes(kind);
        assert!(!types.is_all(), "{kind} says it shapes every type");
        let (before, after) = (snapshots(&without, Types::ALL), snapshots(&with, Types::ALL));
        assert_ne!(
            before, after,
            "the {kind} sample changes nothing: the test proves nothing"
        );
        for (name, snapshot) in &after {
            let outside = complement(types);
            assert_eq!(
                restricted(&before[name], outside),
                restricted(snapshot, outside),
                "{kind} changed {name}'s resources outside the types it shapes ({types:?})"
            );
        }
    }
}

#[test]
fn translating_a_kinds_types_over_the_last_snapshot_is_a_full_translation() {
    for (kind, without, with) in each_kind() {
        let types = shapes(kind);
        let before = snapshots(&without, Types::ALL);
        let partial = snapshots(&with, types);
        let ctx = MeshContext::new(with.iter());
        for (name, snapshot) in partial {
            assert!(
                snapshot.resources.keys().all(|t| types.contains(t)),
                "{kind}: {name}'s partial translation packed other types"
            );
            let mut merged = restricted(&before[&name], complement(types));
            merged.resources.extend(snapshot.resources);
            let r = with.iter().find(|r| r.name == name).expect("dataplane");
            let Spec::Dataplane(dp) = &r.spec else {
                unreachable!()
            };
            let full = proxy_snapshot(&ctx, &r.name, &r.labels, dp, Some(IDENTITY));
            assert_eq!(merged, full, "{kind}: {name} in {types:?} over its last snapshot");
        }
    }
}
