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
    let snapshot = proxy_snapshot(&ctx, &dp.name, &dp.labels, spec, Some(identity));
    consistent(&snapshot);
    describe_snapshot(&snapshot)
}

/// What is generated passes the check the cache makes before publishing.
fn consistent(snapshot: &meridian_zone_cp::xds::cache::Snapshot) {
    if let Err(e) = meridian_zone_cp::xds::consistency::check(snapshot) {
        panic!("inconsistent snapshot: {e}");
    }
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

/// A route's subset in other zones: only the zones with instances of the subset, in the
/// failover order MeshLoadBalancingStrategy gives, weighted by their instances of it.
#[test]
fn a_subset_fails_over_to_the_zones_that_have_it_in_order() {
    use meridian_zone_cp::xds::crosszone::Zones;
    let mut world = mtls_world("STRICT");
    for (zone, version, n) in [("zone-2", "v2", 1), ("zone-3", "v2", 2), ("zone-4", "v1", 1)] {
        for i in 0..n {
            world.push(resource(&format!(
                "type: Dataplane\nname: {zone}.reg-server-{i}\nlabels: {{kuma.io/zone: {zone}}}\nnetworking:\n  address: 10.0.0.{i}\n  inbound:\n  - port: 10002\n    tags: {{kuma.io/service: reg-server, kuma.io/protocol: http, version: {version}}}\n"
            )));
        }
    }
    world.push(resource(
        "type: MeshHTTPRoute\nname: to-v2\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default: {backendRefs: [{kind: MeshServiceSubset, name: reg-server, tags: {version: v2}}]}\n",
    ));
    world.push(resource(
        "type: MeshLoadBalancingStrategy\nname: prefer-zone-3\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      localityAwareness:\n        crossZone:\n          failover:\n          - to: {type: Only, zones: [zone-3]}\n          - to: {type: Any}\n",
    ));
    let mut ctx = MeshContext::new(world.iter());
    ctx.zones = Zones {
        local: "zone-1".into(),
        ingresses: ["zone-2", "zone-3", "zone-4"]
            .iter()
            .enumerate()
            .map(|(i, z)| (z.to_string(), vec![(format!("192.0.2.{}", i + 2), 10001)]))
            .collect(),
    };
    let dp = world.iter().find(|r| r.name == "demo-1").expect("demo");
    let Spec::Dataplane(spec) = &dp.spec else { panic!() };
    let identity = Identity {
        ca_cert: "CA CERT",
        cert: "CERT",
        key: "KEY",
    };
    let snap = proxy_snapshot(&ctx, &dp.name, &dp.labels, spec, Some(identity));
    consistent(&snap);
    let endpoints = snap
        .of_type(meridian_zone_cp::xds::cache::ENDPOINT)
        .and_then(|e| e.get("reg-server{version=v2}"))
        .map(|e| meridian_zone_cp::xds::describe::describe(&e.resource))
        .expect("the subset's endpoints");
    println!("{endpoints}");
    let (three, two) = (endpoints.find("zone-3"), endpoints.find("zone-2"));
    assert!(
        three.is_some() && two.is_some() && three < two,
        "zone-3 first, then zone-2: {endpoints}"
    );
    assert!(!endpoints.contains("zone-4"), "zone-4 has no v2: {endpoints}");
    assert!(
        !endpoints.contains("127.0.0.1"),
        "no local instance is v2: {endpoints}"
    );
    let clusters = snap
        .of_type(meridian_zone_cp::xds::cache::CLUSTER)
        .expect("clusters");
    assert!(
        clusters.contains_key("reg-server{version=v2}"),
        "{:?}",
        clusters.keys()
    );
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
    let snapshot = meridian_zone_cp::xds::crosszone::ingress_snapshot(&ingress, &[&ctx]);
    consistent(&snapshot);
    let out = describe_snapshot(&snapshot);
    assert!(out.contains("reg-server{mesh=default}"), "{out}");
    insta::assert_snapshot!(out);
}

/// Every field the policies set reaches the Envoy config: what validation accepts is applied.
mod every_field {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use meridian_zone_cp::xds::cache::{CLUSTER, LISTENER, ROUTE, Snapshot};
    use prost::Message;

    use super::*;

    fn decoded<M: Message + Default>(snap: &Snapshot, type_url: &str, name: &str) -> M {
        let any = &snap
            .of_type(type_url)
            .and_then(|m| m.get(name))
            .unwrap_or_else(|| panic!("no {name}"))
            .resource;
        M::decode(any.value.as_slice()).expect("decodes")
    }

    fn filter<M: Message + Default>(listener: &Listener, index: usize) -> M {
        match &listener.filter_chains[0].filters[index].config_type {
            Some(ConfigType::TypedConfig(any)) => M::decode(any.value.as_slice()).expect("decodes"),
            _ => panic!("no typed config"),
        }
    }

    fn generated() -> Snapshot {
        let mut world = world();
        world.retain(|r| !matches!(r.spec, Spec::MeshTimeout(_) | Spec::MeshRetry(_)));
        world.push(resource(
            "type: Dataplane\nname: grpc-1\nnetworking:\n  address: 127.0.0.5\n  inbound:\n  - port: 10005\n    tags: {kuma.io/service: grpc-api, kuma.io/protocol: grpc}\n",
        ));
        let Spec::Dataplane(demo) = &mut world[0].spec else {
            panic!()
        };
        demo.networking.outbound.get_or_insert_with(Vec::new).push(
            serde_json::from_value(
                serde_json::json!({"port": 20003, "tags": {"kuma.io/service": "grpc-api"}}),
            )
            .expect("outbound"),
        );
        for doc in [
            "type: MeshTimeout\nname: out\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default: {http: {maxStreamDuration: 30s, maxConnectionDuration: 1h, requestHeadersTimeout: 2s}}\n",
            "type: MeshTimeout\nname: in\nspec:\n  targetRef: {kind: MeshService, name: demo}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 3s, idleTimeout: 10m, http: {requestTimeout: 7s, streamIdleTimeout: 20s}}\n",
            "type: MeshCircuitBreaker\nname: limits\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      connectionLimits: {maxConnections: 7, maxPendingRequests: 8}\n      outlierDetection:\n        healthyPanicThreshold: 40\n        detectors: {successRate: {minimumHosts: 3, standardDeviationFactor: '1.9'}}\n",
            "type: MeshLoadBalancingStrategy\nname: hashing\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default:\n      loadBalancer:\n        type: RingHash\n        ringHash: {minRingSize: 64, hashPolicies: [{type: Header, header: {name: x-user}}]}\n",
            "type: MeshRetry\nname: retries\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      tcp: {maxConnectAttempt: 4}\n      http: {numRetries: 2, retryOn: [5xx, HttpMethodGet], retriableResponseHeaders: [{name: x-retry, type: Present}]}\n      grpc: {numRetries: 5, retryOn: [Unavailable]}\n",
            "type: MeshHealthCheck\nname: db-check\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: db}\n    default: {intervalJitter: 100ms, reuseConnection: false, healthyPanicThreshold: 30, tcp: {send: cGluZw==, receive: [cG9uZw==]}}\n",
        ] {
            world.push(resource(doc));
        }
        let ctx = MeshContext::new(world.iter());
        let dp = &world[0];
        let Spec::Dataplane(spec) = &dp.spec else { panic!() };
        let snapshot = proxy_snapshot(&ctx, &dp.name, &dp.labels, spec, None);
        super::consistent(&snapshot);
        snapshot
    }

    #[test]
    fn outbound_timeouts_limits_balancing_and_retries() {
        let snap = generated();
        let reg: Cluster = decoded(&snap, CLUSTER, "reg-server");
        let limits = &reg.circuit_breakers.as_ref().expect("limits").thresholds[0];
        assert_eq!(limits.max_connections.map(|v| v.value), Some(7));
        assert_eq!(limits.max_pending_requests.map(|v| v.value), Some(8));
        let od = reg.outlier_detection.as_ref().expect("outlier detection");
        assert_eq!(od.success_rate_stdev_factor.map(|v| v.value), Some(1900));
        assert_eq!(od.enforcing_success_rate.map(|v| v.value), Some(100));
        assert_eq!(
            reg.common_lb_config
                .and_then(|c| c.healthy_panic_threshold)
                .map(|p| p.value),
            Some(40.0)
        );
        assert_eq!(reg.lb_policy, LbPolicy::RingHash as i32);
        assert!(!reg.typed_extension_protocol_options.is_empty());
        let routes: RouteConfiguration = decoded(&snap, ROUTE, "outbound:reg-server");
        let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        assert_eq!(action.hash_policy.len(), 1);
        assert_eq!(
            action
                .max_stream_duration
                .as_ref()
                .and_then(|m| m.max_stream_duration)
                .map(|d| d.seconds),
            Some(30)
        );
        let retry = action.retry_policy.as_ref().expect("retries");
        assert_eq!(retry.num_retries.map(|n| n.value), Some(2));
        assert_eq!(retry.retriable_headers.len(), 1);
        assert!(
            retry.retry_on.ends_with(",retriable-headers"),
            "{}",
            retry.retry_on
        );
        assert_eq!(retry.retriable_request_headers[0].name, ":method");
        let listener: Listener = decoded(&snap, LISTENER, "outbound:127.0.0.1:20001");
        let hcm: HttpConnectionManager = filter(&listener, 0);
        assert_eq!(hcm.request_headers_timeout.map(|d| d.seconds), Some(2));
        // gRPC services retry on gRPC's conditions, TCP ones reconnect.
        let grpc: RouteConfiguration = decoded(&snap, ROUTE, "outbound:grpc-api");
        let Some(Action::Route(grpc)) = &grpc.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        let grpc = grpc.retry_policy.as_ref().expect("grpc retries");
        assert_eq!(
            (grpc.retry_on.as_str(), grpc.num_retries.map(|n| n.value)),
            ("unavailable", Some(5))
        );
        let db: Listener = decoded(&snap, LISTENER, "outbound:127.0.0.1:20002");
        let tcp: TcpProxy = filter(&db, 0);
        assert_eq!(tcp.max_connect_attempts.map(|n| n.value), Some(4));
    }

    #[test]
    fn tcp_health_checks_send_and_expect_their_payloads() {
        use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker;
        use envoy_types::pb::envoy::config::core::v3::health_check::payload::Payload;
        let snap = generated();
        let db: Cluster = decoded(&snap, CLUSTER, "db");
        let check = &db.health_checks[0];
        assert_eq!(check.interval_jitter.map(|d| d.nanos), Some(100_000_000));
        // What the policy leaves unset takes Kuma's defaults.
        assert_eq!(check.interval.map(|d| d.seconds), Some(60));
        assert_eq!(check.timeout.map(|d| d.seconds), Some(15));
        assert_eq!(check.unhealthy_threshold.map(|v| v.value), Some(5));
        assert_eq!(check.healthy_threshold.map(|v| v.value), Some(1));
        assert_eq!(check.reuse_connection.map(|b| b.value), Some(false));
        let Some(HealthChecker::TcpHealthCheck(tcp)) = &check.health_checker else {
            panic!()
        };
        assert_eq!(
            tcp.send.as_ref().and_then(|p| p.payload.clone()),
            Some(Payload::Binary(b"ping".to_vec()))
        );
        assert_eq!(tcp.receive.len(), 1);
        assert_eq!(
            db.common_lb_config
                .and_then(|c| c.healthy_panic_threshold)
                .map(|p| p.value),
            Some(30.0)
        );
    }

    #[test]
    fn inbound_timeouts_from_a_from_entry() {
        let snap = generated();
        let app: Cluster = decoded(&snap, CLUSTER, "localhost:8080");
        assert_eq!(app.connect_timeout.map(|d| d.seconds), Some(3));
        let listener: Listener = decoded(&snap, LISTENER, "inbound:127.0.0.1:10001");
        let hcm: HttpConnectionManager = filter(&listener, 0);
        assert_eq!(hcm.stream_idle_timeout.map(|d| d.seconds), Some(20));
        assert_eq!(
            hcm.common_http_protocol_options
                .and_then(|o| o.idle_timeout)
                .map(|d| d.seconds),
            Some(600)
        );
        let Some(RouteSpecifier::RouteConfig(routes)) = &hcm.route_specifier else {
            panic!()
        };
        let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        assert_eq!(action.timeout.map(|d| d.seconds), Some(7));
    }
}
