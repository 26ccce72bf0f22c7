//! Kuma's older kinds convert to their targetRef equivalents: each known shape to the policy a
//! user would write today, and what has no equivalent is refused naming its field.

use meridian_model::policies::legacy::converted;
use meridian_model::{Format, Spec, parse_one};

fn spec(yaml: &str) -> Spec {
    parse_one(yaml, Format::Yaml)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .resource
        .spec
}

/// What `legacy` converts to, against the targetRef policies given.
fn converts_to(legacy: &str, expected: &[&str]) {
    let got: Vec<Spec> = converted(&spec(legacy))
        .expect("an older kind")
        .expect("converts")
        .into_iter()
        .map(|c| c.spec)
        .collect();
    let want: Vec<Spec> = expected.iter().map(|y| spec(y)).collect();
    assert_eq!(got, want, "{legacy}");
}

fn refused(yaml: &str) -> Vec<String> {
    match parse_one(yaml, Format::Yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e
            .causes()
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect(),
    }
}

const ALL: &str =
    "sources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\n";

#[test]
fn timeouts_retries_breakers_and_health_checks_become_to_entries() {
    converts_to(
        &format!(
            "type: Timeout\nname: t\nmesh: default\n{ALL}conf:\n  connectTimeout: 2s\n  tcp: {{idleTimeout: 1h}}\n  http: {{requestTimeout: 5s, streamIdleTimeout: 30m}}\n"
        ),
        &[
            "type: MeshTimeout\nname: t\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    default: {connectionTimeout: 2s, idleTimeout: 1h, http: {requestTimeout: 5s, streamIdleTimeout: 30m}}\n",
        ],
    );
    converts_to(
        "type: Retry\nname: r\nmesh: default\nsources:\n- match: {kuma.io/service: web, version: v1}\ndestinations:\n- match: {kuma.io/service: '*'}\nconf:\n  http:\n    numRetries: 3\n    perTryTimeout: 200ms\n    backOff: {baseInterval: 20ms, maxInterval: 1s}\n    retriableStatusCodes: [503]\n    retryOn: [all_5xx, connect_failure]\n    retriableMethods: [GET]\n  tcp: {maxConnectAttempts: 4}\n",
        &[
            "type: MeshRetry\nname: r\nspec:\n  targetRef: {kind: MeshServiceSubset, name: web, tags: {version: v1}}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http: {numRetries: 3, perTryTimeout: 200ms, backOff: {baseInterval: 20ms, maxInterval: 1s}, retryOn: [5xx, ConnectFailure, '503', HttpMethodGet]}\n      tcp: {maxConnectAttempt: 4}\n",
        ],
    );
    converts_to(
        &format!(
            "type: CircuitBreaker\nname: cb\nmesh: default\n{ALL}conf:\n  interval: 5s\n  baseEjectionTime: 30s\n  maxEjectionPercent: 20\n  thresholds: {{maxConnections: 2, maxPendingRequests: 3}}\n  detectors:\n    totalErrors: {{consecutive: 20}}\n    standardDeviation: {{requestVolume: 10, minimumHosts: 5, factor: 1.9}}\n"
        ),
        &[
            "type: MeshCircuitBreaker\nname: cb\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    default:\n      connectionLimits: {maxConnections: 2, maxPendingRequests: 3}\n      outlierDetection:\n        interval: 5s\n        baseEjectionTime: 30s\n        maxEjectionPercent: 20\n        detectors: {totalFailures: {consecutive: 20}, successRate: {requestVolume: 10, minimumHosts: 5, standardDeviationFactor: 1.9}}\n",
        ],
    );
    converts_to(
        &format!(
            "type: HealthCheck\nname: hc\nmesh: default\n{ALL}conf:\n  interval: 10s\n  timeout: 2s\n  unhealthyThreshold: 3\n  healthyThreshold: 1\n  http:\n    path: /health\n    expectedStatuses: [200]\n    requestHeadersToAdd:\n    - {{append: false, header: {{key: x-a, value: a}}}}\n"
        ),
        &[
            "type: MeshHealthCheck\nname: hc\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    default:\n      interval: 10s\n      timeout: 2s\n      unhealthyThreshold: 3\n      healthyThreshold: 1\n      http: {path: /health, expectedStatuses: [200], requestHeadersToAdd: {set: [{name: x-a, value: a}]}}\n",
        ],
    );
}

#[test]
fn faults_and_rate_limits_become_from_entries_on_their_destinations() {
    converts_to(
        "type: FaultInjection\nname: fi\nmesh: default\nsources:\n- match: {kuma.io/service: '*', kuma.io/protocol: http}\ndestinations:\n- match: {kuma.io/service: backend, kuma.io/protocol: http}\nconf:\n  abort: {httpStatus: 503, percentage: 50}\n  delay: {value: 200ms, percentage: 10}\n  responseBandwidth: {limit: 50 mbps, percentage: 5}\n",
        &[
            "type: MeshFaultInjection\nname: fi\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      http:\n      - {abort: {httpStatus: 503, percentage: 50}, delay: {value: 200ms, percentage: 10}, responseBandwidth: {limit: 50 mbps, percentage: 5}}\n",
        ],
    );
    converts_to(
        "type: RateLimit\nname: rl\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  http:\n    requests: 10\n    interval: 1s\n    onRateLimit:\n      status: 423\n      headers: [{key: x-limited, value: 'true', append: true}]\n",
        &[
            "type: MeshRateLimit\nname: rl\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      local:\n        http:\n          requestRate: {num: 10, interval: 1s}\n          onRateLimit: {status: 423, headers: {add: [{name: x-limited, value: 'true'}]}}\n",
        ],
    );
}

#[test]
fn traffic_routes_become_an_http_and_a_tcp_route() {
    converts_to(
        "type: TrafficRoute\nname: split\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  loadBalancer: {roundRobin: {}}\n  split:\n  - {weight: 80, destination: {kuma.io/service: backend, version: v1}}\n  - {weight: 20, destination: {kuma.io/service: backend, version: v2}}\n  http:\n  - match:\n      path: {prefix: /api/}\n      method: {exact: get}\n      headers: {x-version: {exact: v2}}\n    modify:\n      path: {rewritePrefix: /v2}\n      requestHeaders: {add: [{name: x-a, value: a}], remove: [{name: x-b}]}\n    destination: {kuma.io/service: backend, version: v2}\n",
        &[
            "type: MeshHTTPRoute\nname: split\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /api}, method: GET, headers: [{type: Exact, name: x-version, value: v2}]}]\n      default:\n        filters:\n        - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}\n        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: a}], remove: [x-b]}}\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 80}, {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 20}]\n",
            "type: MeshTCPRoute\nname: split\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - default:\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 80}, {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 20}]\n",
        ],
    );
    // Kuma's default route-all: what a mesh does anyway.
    converts_to(
        "type: TrafficRoute\nname: route-all-default\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: '*'}\nconf:\n  loadBalancer: {roundRobin: {}}\n  destination: {kuma.io/service: '*'}\n",
        &[],
    );
}

#[test]
fn what_has_no_equivalent_is_refused_naming_the_field() {
    let fault = "type: FaultInjection\nname: fi\nmesh: default\nsources:\n- match: {kuma.io/service: web}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  abort: {httpStatus: 503, percentage: 50}\n";
    let errs = refused(fault);
    assert!(
        errs[0].starts_with("sources[0].match: only kuma.io/service: '*'"),
        "{errs:?}"
    );
    let lb = format!(
        "type: TrafficRoute\nname: r\nmesh: default\n{ALL}conf:\n  loadBalancer: {{ringHash: {{}}}}\n  destination: {{kuma.io/service: backend}}\n"
    );
    let errs = refused(&lb);
    assert!(
        errs[0].starts_with("conf.loadBalancer.ringHash: only roundRobin converts"),
        "{errs:?}"
    );
    let subset_to = "type: Timeout\nname: t\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend, version: v1}\nconf: {connectTimeout: 1s}\n";
    let errs = refused(subset_to);
    assert!(
        errs[0].starts_with("destinations[0].match: only kuma.io/service"),
        "{errs:?}"
    );
    let bad_retry =
        format!("type: Retry\nname: r\nmesh: default\n{ALL}conf:\n  http: {{retryOn: [no_such_thing]}}\n");
    let errs = refused(&bad_retry);
    assert!(errs[0].starts_with("conf.http.retryOn[0]"), "{errs:?}");
    let bad_value = "type: FaultInjection\nname: fi\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  abort: {httpStatus: 503, percentage: 150}\n";
    let errs = refused(bad_value);
    assert!(errs[0].starts_with("conf.abort.percentage"), "{errs:?}");
}
