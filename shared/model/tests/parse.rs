//! Parsing resources as users write them: both forms, the shipped examples, error reports
//! and the universal round trip.

use meridian_model::{
    DEFAULT_MESH, FieldError, Format, Kind, Resource, ResourceError, Spec, from_value, parse_one,
};

fn parse(yaml: &str) -> Resource {
    match parse_one(yaml, Format::Yaml) {
        Ok(s) => s.resource,
        Err(e) => panic!("{e}\n---\n{yaml}"),
    }
}

fn causes(yaml: &str) -> Vec<FieldError> {
    match parse_one(yaml, Format::Yaml) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => e.causes(),
    }
}

const TIMEOUT_SPEC: &str = "  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        connectionTimeout: 5s
        http:
          requestTimeout: 15s
";

#[test]
fn both_forms_give_the_same_resource() {
    let universal = parse(&format!(
        "type: MeshTimeout\nname: timeouts\nmesh: demo\nlabels:\n  kuma.io/mesh: demo\n  team: payments\nspec:\n{TIMEOUT_SPEC}"
    ));
    let kubernetes = parse(&format!(
        "apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata:\n  name: timeouts\n  namespace: kuma-system\n  labels:\n    kuma.io/mesh: demo\n    team: payments\nspec:\n{TIMEOUT_SPEC}"
    ));
    assert_eq!(universal, kubernetes);
    assert_eq!(universal.kind(), Kind::MeshTimeout);
    assert_eq!(universal.mesh, "demo");

    let universal = parse(&format!(
        "type: MeshTimeout\nname: timeouts\nspec:\n{TIMEOUT_SPEC}"
    ));
    let kubernetes = parse(&format!(
        "apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata:\n  name: timeouts\nspec:\n{TIMEOUT_SPEC}"
    ));
    assert_eq!(universal, kubernetes);
}

#[test]
fn kubernetes_mesh_comes_from_the_label_or_defaults() {
    let labelled = parse(&format!(
        "apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata:\n  name: t\n  labels:\n    kuma.io/mesh: payments\nspec:\n{TIMEOUT_SPEC}"
    ));
    assert_eq!(labelled.mesh, "payments");
    let unlabelled = parse(&format!(
        "apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata:\n  name: t\nspec:\n{TIMEOUT_SPEC}"
    ));
    assert_eq!(unlabelled.mesh, DEFAULT_MESH);
    assert_eq!(unlabelled.mesh, "default");
}

#[test]
fn shipped_examples_parse_unchanged() {
    let trace = parse(include_str!("../../../../shared/examples/seed-meshtrace.yaml"));
    assert_eq!(trace.kind(), Kind::MeshTrace);
    assert_eq!((trace.mesh.as_str(), trace.name.as_str()), ("default", "default"));
    let Spec::MeshTrace(spec) = &trace.spec else {
        panic!()
    };
    let backend = &spec.backends.as_ref().unwrap()[0];
    assert_eq!(
        backend.conf.endpoint.as_deref(),
        Some("otel-collector.kuma-system.svc:4317")
    );

    let tp = parse(include_str!(
        "../../../../shared/examples/seed-traffic-permission.yaml"
    ));
    assert_eq!(tp.kind(), Kind::TrafficPermission);
    assert_eq!(tp.name, "allow-demo-to-reg");
    let Spec::TrafficPermission(spec) = &tp.spec else {
        panic!()
    };
    assert_eq!(spec.sources[0].match_tags["kuma.io/service"], "demo");
    assert_eq!(spec.destinations[0].match_tags["kuma.io/service"], "reg-server");
}

#[test]
fn malformed_yaml_names_line_and_column() {
    let err = parse_one(
        "type: MeshTimeout\nname: t\nspec:\n  to: [\n    x: : y\n",
        Format::Yaml,
    )
    .unwrap_err();
    match &err {
        ResourceError::Syntax {
            format, line, column, ..
        } => {
            // Where the parser noticed: the unclosed flow sequence, by the end of the text.
            assert_eq!(*format, "YAML", "{err}");
            assert!((5..=6).contains(line) && *column >= 1, "{err}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("malformed YAML at line "), "{err}");
    assert!(err.causes()[0].message.starts_with("line "), "{err:?}");

    let err = parse_one("type: MeshTimeout\nname: t: u\n", Format::Yaml).unwrap_err();
    assert!(
        matches!(
            err,
            ResourceError::Syntax {
                line: 2,
                column: 8,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "malformed YAML at line 2, column 8: mapping values are not allowed in this context"
    );
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let err = parse_one("type: MeshFoo\nname: x\nspec: {}\n", Format::Yaml).unwrap_err();
    assert_eq!(
        err,
        ResourceError::UnknownKind {
            kind: "MeshFoo".into()
        }
    );
    let text = err.to_string();
    for kind in Kind::ALL {
        assert!(text.contains(kind.name()), "{kind} missing from {text}");
    }
    let cause = &err.causes()[0];
    assert_eq!(cause.field, "type");
    assert!(cause.message.contains("MeshRetry") && cause.message.contains("MeshTrafficPermission"));
}

#[test]
fn unknown_field_names_its_full_path() {
    let errs = causes(
        "type: MeshTrace
name: t
spec:
  targetRef: {kind: Mesh}
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry:
          endpoint: otel:4317
          bogus: 1
",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "spec.default.backends[0].openTelemetry.bogus");
    assert!(errs[0].message.starts_with("unknown field"), "{errs:?}");

    let errs = causes("type: MeshTimeout\nname: t\nspec:\n  bogus: 1\n  to: []\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "spec.bogus");
    // Older kinds keep their spec beside `type` and `name`.
    let errs = causes("type: TrafficPermission\nname: tp\nsources: []\ndestinations: []\nbogus: 1\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "bogus");

    let errs = causes(
        "type: MeshRetry\nname: r\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default:\n        http:\n          numRetrys: 3\n",
    );
    assert_eq!(errs[0].field, "spec.to[0].default.http.numRetrys");
}

#[test]
fn mistyped_field_names_its_path() {
    let errs = causes(
        "type: MeshCircuitBreaker
name: cb
spec:
  to:
    - targetRef: {kind: Mesh}
      default:
        connectionLimits:
          maxConnections: lots
",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0].field,
        "spec.to[0].default.connectionLimits.maxConnections"
    );
    assert!(errs[0].message.contains("expected u32"), "{errs:?}");
}

#[test]
fn every_error_is_returned() {
    let errs = causes(
        "type: MeshHealthCheck
name: Bad_Name
mesh: Bad_Mesh
labels:
  'bad key!': v
spec:
  to:
    - targetRef: {kind: Mesh}
      default:
        interval: 0s
        healthyThreshold: 0
",
    );
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "name",
            "mesh",
            "labels.bad key!",
            "spec.to[0].default.interval",
            "spec.to[0].default.healthyThreshold",
            "spec.to[0].default",
        ],
        "{errs:?}"
    );
}

/// One valid resource of every kind, in universal form.
const EVERY_KIND: &[&str] = &[
    "type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: builtin
      dpCert:
        rotation: {expiration: 1d}
tracing:
  defaultBackend: otel
  backends:
    - {name: otel, type: opentelemetry, sampling: 50, conf: {endpoint: 'otel:4317'}}
",
    "type: Dataplane
name: web-1
mesh: default
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      servicePort: 80
      tags: {kuma.io/service: web, version: v1}
  outbound:
    - port: 10001
      tags: {kuma.io/service: backend}
",
    "type: TrafficPermission
name: allow-all
mesh: default
sources:
  - match: {kuma.io/service: '*'}
destinations:
  - match: {kuma.io/service: web}
",
    "type: MeshTrafficPermission
name: mtp
mesh: default
spec:
  targetRef: {kind: Mesh}
  rules:
    - default:
        allowWithShadowDeny:
          - spiffeID: {type: Prefix, value: 'spiffe://default/ns/demo/'}
",
    "type: MeshTrafficPermission
name: mtp-from
mesh: default
spec:
  targetRef: {kind: Mesh}
  from:
    - targetRef: {kind: MeshSubset, tags: {kuma.io/zone: east}}
      default: {action: Deny}
",
    "type: MeshTrace
name: trace
mesh: default
spec:
  targetRef: {kind: Mesh}
  default:
    backends:
      - type: Zipkin
        zipkin: {url: 'http://zipkin:9411/api/v2/spans', traceId128bit: true}
    sampling: {overall: 80, random: '99.5'}
    tags:
      - {name: team, literal: core}
      - name: env
        header: {name: x-env, default: prod}
",
    "type: MeshLoadBalancingStrategy
name: lb
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default:
        localityAwareness:
          disabled: false
          crossZone:
            failover:
              - from: {zones: [zone-1]}
                to: {type: AnyExcept, zones: [zone-3]}
              - to: {type: None}
            failoverThreshold: {percentage: '70.5'}
        loadBalancer:
          type: Maglev
          maglev: {tableSize: 1009}
        hashPolicies:
          - {type: QueryParameter, queryParameter: {name: user}}
          - {type: FilterState, filterState: {key: io.istio.peer}}
",
    "type: MeshHealthCheck
name: hc
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        interval: 1m30s
        healthyPanicThreshold: '12.5'
        grpc: {serviceName: health}
",
    "type: MeshCircuitBreaker
name: cb
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default:
        outlierDetection:
          detectors:
            successRate: {standardDeviationFactor: '1.9'}
            gatewayFailures: {consecutive: 3}
",
    "type: MeshCircuitBreaker
name: cb-inbound
mesh: default
spec:
  targetRef: {kind: Mesh}
  rules:
    - default:
        connectionLimits: {maxConnections: 10, maxRequests: 20}
",
    "type: MeshRetry
name: retry
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default:
        http:
          numRetries: 0
          retryOn: [5XX, '503', HttpMethodPost]
          retriableRequestHeaders: [{type: Absent, name: x-no-retry}]
        grpc:
          rateLimitedBackOff:
            resetHeaders: [{name: retry-after, format: Seconds}]
",
    "type: MeshTimeout
name: timeout
mesh: default
spec:
  targetRef: {kind: Mesh}
  from:
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 1h}
",
    "type: MeshTimeout
name: timeout-rules
mesh: default
spec:
  targetRef: {kind: Mesh}
  rules:
    - default:
        http: {requestHeadersTimeout: 500ms}
",
"type: MeshHTTPRoute
name: split
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches:
            - path: {type: PathPrefix, value: /api}
              method: GET
              headers: [{type: Exact, name: x-version, value: v2}]
              queryParams: [{type: RegularExpression, name: q, value: \"a.*\"}]
          default:
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: x-a, value: a}], remove: [x-b]}
              - type: URLRewrite
                urlRewrite: {hostname: backend.mesh, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
              - type: RequestMirror
                requestMirror: {percentage: 30, backendRef: {kind: MeshService, name: shadow}}
            backendRefs:
              - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 80}
              - {kind: MeshService, name: backend, weight: 20}
",
    "type: MeshFaultInjection
name: faults
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: Mesh}
      default:
        http:
          - abort: {httpStatus: 503, percentage: 50}
            delay: {value: 200ms, percentage: \"12.5\"}
            responseBandwidth: {limit: 50kbps, percentage: 100}
",
    "type: MeshRateLimit
name: limits
mesh: default
spec:
  targetRef: {kind: Mesh}
  rules:
    - default:
        local:
          http:
            requestRate: {num: 10, interval: 1s}
            onRateLimit: {status: 423, headers: {set: [{name: x-limited, value: \"true\"}]}}
          tcp:
            connectionRate: {num: 100, interval: 1s}
",
    "type: MeshTCPRoute
name: tcp-split
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: db}
      rules:
        - default:
            backendRefs:
              - {kind: MeshServiceSubset, name: db, tags: {role: primary}, weight: 90}
              - {kind: MeshService, name: db-replica, weight: 10}
",
"type: Timeout\nname: legacy-timeout\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  connectTimeout: 2s\n  http: {requestTimeout: 5s}\n",
    "type: Retry\nname: legacy-retry\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  http: {numRetries: 3, retryOn: [all_5xx]}\n",
    "type: CircuitBreaker\nname: legacy-cb\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  thresholds: {maxConnections: 7}\n",
    "type: HealthCheck\nname: legacy-hc\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf: {interval: 7s, timeout: 1s, unhealthyThreshold: 2, healthyThreshold: 1}\n",
    "type: TrafficRoute\nname: legacy-route\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  split:\n  - {weight: 90, destination: {kuma.io/service: backend, version: v1}}\n  - {weight: 10, destination: {kuma.io/service: backend, version: v2}}\n",
    "type: FaultInjection\nname: legacy-fault\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  delay: {value: 1s, percentage: 5}\n",
    "type: RateLimit\nname: legacy-limit\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: backend}\nconf:\n  http: {requests: 100, interval: 1s}\n",
"type: MeshTLS\nname: tls\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      tlsVersion: {min: TLS12, max: TLS13}\n      tlsCiphers: [ECDHE-ECDSA-AES128-GCM-SHA256]\n      mode: Permissive\n",
    "type: ZoneIngress
name: ingress-1
networking:
  address: 127.0.0.1
  port: 10001
  advertisedAddress: 192.0.2.1
  advertisedPort: 10000
",
    "type: Secret
name: api.key
mesh: default
data: c2VjcmV0
",
    "type: VirtualIPs
name: default
mesh: default
services:
  reg-server: 240.0.0.7
",
    "type: GlobalSecret
name: global-key
data: c2VjcmV0
",
];

#[test]
fn universal_round_trip_keeps_every_kind() {
    let mut seen = Vec::new();
    for yaml in EVERY_KIND {
        let resource = parse(yaml);
        let written = resource.to_universal();
        let again = from_value(written.clone())
            .unwrap_or_else(|e| panic!("{e}\n{written:#}"))
            .resource;
        assert_eq!(again, resource, "{written:#}");
        // And once more through text, as a client would send it.
        let text = serde_json::to_string(&written).unwrap();
        assert_eq!(parse_one(&text, Format::Json).unwrap().resource, resource);
        seen.push(resource.kind());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, Kind::ALL.to_vec(), "an example of every kind");
}

#[test]
fn every_kind_has_a_schema() {
    let mut generator = schemars::SchemaGenerator::default();
    for kind in Kind::ALL {
        let schema = serde_json::to_value(kind.spec_schema(&mut generator)).unwrap();
        assert!(schema.is_object(), "{kind}: {schema}");
    }
    let defs = serde_json::to_string(&generator.definitions()).unwrap();
    for field in [
        "allowWithShadowDeny",
        "failoverThreshold",
        "unhealthyThreshold",
        "standardDeviationFactor",
    ] {
        assert!(defs.contains(field), "{field} missing from the schemas");
    }
    assert!(
        defs.contains("Http3PostConnectFailure"),
        "retryOn names missing from the schemas"
    );
}

#[test]
fn dataplanes_refuse_duplicate_inbound_ports() {
    let yaml = "type: Dataplane\nname: dp\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: a}\n  - port: 10001\n    tags: {kuma.io/service: b}\n";
    let err = parse_one(yaml, Format::Yaml).expect_err("duplicate port");
    let fields: Vec<String> = err.causes().into_iter().map(|c| c.field).collect();
    assert_eq!(fields, ["networking.inbound[1].port"]);
}

#[test]
fn zone_qualified_names_are_for_zone_reported_resources_only() {
    let dp = |name: &str, labels: &str| {
        format!(
            "type: Dataplane\nname: {name}\n{labels}networking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {{kuma.io/service: a}}\n"
        )
    };
    let r = parse(&dp("zone-1.web-1", "labels: {kuma.io/zone: zone-1}\n"));
    assert_eq!(r.key().synced_zone(), Some("zone-1"));
    assert_eq!(parse(&dp("web-1", "")).key().synced_zone(), None);
    let field = |yaml: &str| {
        causes(yaml)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        field(&dp("zone-1.web-1", "labels: {kuma.io/zone: zone-2}\n")),
        [
            "name: \"zone-1.web-1\" names a resource reported by zone \"zone-1\", which needs the label kuma.io/zone: zone-1"
        ]
    );
    assert_eq!(
        field(&dp("a.b.c", "labels: {kuma.io/zone: a}\n")),
        [
            "name: \"a.b.c\" must be a DNS-1123 label, or ZONE.NAME (two labels) for a resource reported by a zone"
        ]
    );
    // Policies never come from zones: a dotted name is simply not a label.
    assert!(
        field("type: MeshTrace\nname: zone-1.t\nlabels: {kuma.io/zone: zone-1}\nspec: {}\n")[0]
            .starts_with("name: \"zone-1.t\" must be a DNS-1123 label")
    );
}
