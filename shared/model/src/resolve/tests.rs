use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::policies::common::To;
use crate::policies::mesh_timeout::{HttpTimeouts, MeshTimeoutSpec, TimeoutConf};
use crate::values::GoDuration;
use crate::{Format, Spec, parse_one};

fn resource(yaml: &str) -> Resource {
    parse_one(yaml, Format::Yaml).expect("valid").resource
}

fn demo() -> (DataplaneSpec, BTreeMap<String, String>) {
    let dp = resource(
        "type: Dataplane\nname: demo-1\nlabels: {team: a}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags:\n      kuma.io/service: demo\n      version: v1\n",
    );
    match dp.spec {
        Spec::Dataplane(d) => (d, dp.labels),
        _ => unreachable!(),
    }
}

fn timeouts(docs: &[&str]) -> Vec<Policy<MeshTimeoutSpec>> {
    docs.iter()
        .map(|d| {
            let r = resource(d);
            match &r.spec {
                Spec::MeshTimeout(s) => Policy::new(&r, s),
                _ => panic!("not a MeshTimeout"),
            }
        })
        .collect()
}

fn with_demo<T>(f: impl FnOnce(&ProxyView<'_>) -> T) -> T {
    let (dp, labels) = demo();
    f(&ProxyView {
        name: "demo-1",
        labels: &labels,
        dataplane: &dp,
    })
}

fn d(text: &str) -> GoDuration {
    GoDuration::parse(text).expect("a duration")
}

#[test]
fn more_specific_entries_win_field_by_field() {
    let policies = timeouts(&[
        "type: MeshTimeout\nname: z-reg\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default: {http: {requestTimeout: 1s}}\n",
        "type: MeshTimeout\nname: other\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 9s}}\n",
        "type: MeshTimeout\nname: a-mesh\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 5s, http: {requestTimeout: 15s}}\n",
    ]);
    with_demo(|proxy| {
        let reg = outbound(&policies, proxy, "reg-server").expect("applies");
        assert_eq!(reg.conf.connection_timeout, Some(d("5s")));
        assert_eq!(reg.conf.http.and_then(|h| h.request_timeout), Some(d("1s")));
        let names: Vec<_> = reg.origin.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a-mesh", "z-reg"]);
        let web = outbound(&policies, proxy, "web").expect("applies");
        assert_eq!(web.conf.http.and_then(|h| h.request_timeout), Some(d("15s")));
        assert!(outbound(&policies[1..2], proxy, "web").is_none());
    });
}

#[test]
fn the_top_level_targetref_outranks_the_entry_and_the_first_name_wins_a_tie() {
    let policies = timeouts(&[
        // More specific top level, less specific entry: still wins (Kuma compares the top first).
        "type: MeshTimeout\nname: for-demo\nspec:\n  targetRef: {kind: MeshService, name: demo}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 2s}\n",
        "type: MeshTimeout\nname: to-web\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: web}\n    default: {connectionTimeout: 3s}\n",
        "type: MeshTimeout\nname: b\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 7s}\n",
        "type: MeshTimeout\nname: a\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 6s}\n",
    ]);
    with_demo(|proxy| {
        let web = outbound(&policies, proxy, "web").expect("applies").conf;
        assert_eq!(web.connection_timeout, Some(d("2s")));
        assert_eq!(web.idle_timeout, Some(d("6s")));
    });
}

#[test]
fn dataplane_and_section_names_are_the_most_specific() {
    let mk = |kind: TargetRefKind, name: Option<&str>, section: Option<&str>| TargetRef {
        kind,
        name: name.map(str::to_owned),
        section_name: section.map(str::to_owned),
        ..TargetRef::mesh()
    };
    let order = [
        mk(TargetRefKind::Mesh, None, None),
        mk(TargetRefKind::MeshSubset, None, None),
        mk(TargetRefKind::MeshService, Some("a"), None),
        mk(TargetRefKind::MeshService, Some("a"), Some("http")),
        mk(TargetRefKind::MeshServiceSubset, Some("a"), None),
        mk(TargetRefKind::Dataplane, None, None),
        mk(TargetRefKind::Dataplane, Some("dp"), None),
        mk(TargetRefKind::Dataplane, Some("dp"), Some("main")),
    ];
    for pair in order.windows(2) {
        assert!(specificity(&pair[0]) < specificity(&pair[1]), "{pair:?}");
    }
}

#[test]
fn origin_ranks_zone_over_unlabelled_over_global() {
    let mut docs = [
        "type: MeshTimeout\nname: a-global\nlabels: {kuma.io/origin: global}\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1s}\n",
        "type: MeshTimeout\nname: b-zone\nlabels: {kuma.io/origin: zone}\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 2s}\n",
    ];
    for _ in 0..2 {
        let policies = timeouts(&docs);
        with_demo(|proxy| {
            let conf = outbound(&policies, proxy, "web").expect("applies").conf;
            assert_eq!(conf.idle_timeout, Some(d("2s")));
        });
        docs.reverse();
    }
}

#[test]
fn proxy_types_without_sidecar_select_no_sidecar() {
    with_demo(|proxy| {
        let mut t = TargetRef::mesh();
        t.proxy_types = Some(vec![ProxyType::Gateway]);
        assert!(!selects(&t, proxy));
        t.proxy_types = Some(vec![ProxyType::Sidecar]);
        assert!(selects(&t, proxy));
        let mut subset = TargetRef {
            kind: TargetRefKind::MeshSubset,
            tags: Some(BTreeMap::from([("version".into(), "v1".into())])),
            ..TargetRef::mesh()
        };
        assert!(selects(&subset, proxy));
        subset.tags = Some(BTreeMap::from([("version".into(), "v2".into())]));
        assert!(!selects(&subset, proxy));
        let by_label = TargetRef {
            kind: TargetRefKind::Dataplane,
            labels: Some(BTreeMap::from([("team".into(), "a".into())])),
            ..TargetRef::mesh()
        };
        assert!(selects(&by_label, proxy));
    });
}

// Property tests: random MeshTimeouts against the demo proxy.

const DURATIONS: &[&str] = &["1s", "2s", "3s", "5s", "8s"];

fn arb_duration() -> impl Strategy<Value = Option<GoDuration>> {
    proptest::option::of(proptest::sample::select(DURATIONS).prop_map(d))
}

fn arb_conf() -> impl Strategy<Value = TimeoutConf> {
    (
        arb_duration(),
        arb_duration(),
        proptest::option::of((arb_duration(), arb_duration())),
    )
        .prop_map(|(connection_timeout, idle_timeout, http)| TimeoutConf {
            connection_timeout,
            idle_timeout,
            http: http.map(|(request_timeout, stream_idle_timeout)| HttpTimeouts {
                request_timeout,
                stream_idle_timeout,
                max_stream_duration: None,
                max_connection_duration: None,
                request_headers_timeout: None,
            }),
        })
}

/// Top-level targetRefs of which some select the demo proxy and some do not.
fn arb_top() -> impl Strategy<Value = Option<TargetRef>> {
    let named = |kind, name: &str| TargetRef {
        kind,
        name: Some(name.to_owned()),
        ..TargetRef::mesh()
    };
    proptest::sample::select(vec![
        None,
        Some(TargetRef::mesh()),
        Some(named(TargetRefKind::MeshService, "demo")),
        Some(named(TargetRefKind::MeshService, "web")),
        Some(TargetRef {
            kind: TargetRefKind::MeshSubset,
            tags: Some(BTreeMap::from([("version".into(), "v1".into())])),
            ..TargetRef::mesh()
        }),
        Some(named(TargetRefKind::Dataplane, "demo-1")),
    ])
}

fn arb_to() -> impl Strategy<Value = TargetRef> {
    proptest::sample::select(vec![
        TargetRef::mesh(),
        TargetRef {
            kind: TargetRefKind::MeshService,
            name: Some("web".into()),
            ..TargetRef::mesh()
        },
        TargetRef {
            kind: TargetRefKind::MeshService,
            name: Some("db".into()),
            ..TargetRef::mesh()
        },
    ])
}

fn arb_policies() -> impl Strategy<Value = Vec<Policy<MeshTimeoutSpec>>> {
    let policy = (
        arb_top(),
        proptest::collection::vec((arb_to(), arb_conf()), 1..4),
        proptest::sample::select(vec![Origin::Global, Origin::Unlabelled, Origin::Zone]),
    );
    proptest::collection::vec(policy, 0..7).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (target_ref, to, origin))| Policy {
                // Names that do not sort in the order the policies were made.
                name: format!("p{}", (i * 7) % 11),
                origin,
                spec: MeshTimeoutSpec {
                    target_ref,
                    from: None,
                    to: Some(
                        to.into_iter()
                            .map(|(target_ref, default)| To { target_ref, default })
                            .collect(),
                    ),
                    rules: None,
                },
            })
            .collect()
    })
}

fn resolve_web(policies: &[Policy<MeshTimeoutSpec>]) -> Option<TimeoutConf> {
    with_demo(|proxy| outbound(policies, proxy, "web").map(|r| r.conf))
}

proptest! {
    #[test]
    fn the_order_policies_are_given_in_never_matters(
        (policies, shuffled) in arb_policies().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle()))
    ) {
        prop_assert_eq!(resolve_web(&policies), resolve_web(&shuffled));
    }

    #[test]
    fn each_field_comes_from_the_contribution_of_highest_precedence_that_sets_it(policies in arb_policies()) {
        // The oracle: every applicable entry with its precedence, looked at one field at a time.
        let expected = with_demo(|proxy| {
            let mesh = TargetRef::mesh();
            let mut contributions = Vec::new();
            for p in &policies {
                let top = p.spec.target_ref.as_ref().unwrap_or(&mesh);
                if !selects(top, proxy) {
                    continue;
                }
                for (i, e) in p.spec.to.iter().flatten().enumerate() {
                    if covers(&e.target_ref, "web") {
                        contributions.push((precedence(p, top, Some(&e.target_ref), i), e.default.clone()));
                    }
                }
            }
            let best = |field: fn(&TimeoutConf) -> Option<GoDuration>| {
                contributions.iter().filter(|(_, c)| field(c).is_some()).max_by(|a, b| a.0.cmp(&b.0)).and_then(|(_, c)| field(c))
            };
            (
                contributions.is_empty(),
                best(|c| c.connection_timeout.clone()),
                best(|c| c.idle_timeout.clone()),
                best(|c| c.http.as_ref().and_then(|h| h.request_timeout.clone())),
            )
        });
        let got = resolve_web(&policies);
        prop_assert_eq!(got.is_none(), expected.0);
        if let Some(conf) = got {
            prop_assert_eq!(conf.connection_timeout, expected.1);
            prop_assert_eq!(conf.idle_timeout, expected.2);
            prop_assert_eq!(conf.http.and_then(|h| h.request_timeout), expected.3);
        }
    }

    #[test]
    fn merging_is_associative(a in arb_conf(), b in arb_conf(), c in arb_conf()) {
        let mut left = a.clone();
        left.merge(&b);
        left.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut right = a;
        right.merge(&bc);
        prop_assert_eq!(left, right);
    }
}

#[test]
fn a_section_name_picks_one_inbound_by_name_or_port() {
    let r = resource(
        "type: Dataplane\nname: two-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 8080\n    name: http\n    tags: {kuma.io/service: two}\n  - port: 9090\n    tags: {kuma.io/service: two}\n",
    );
    let Spec::Dataplane(dp) = &r.spec else { panic!() };
    let proxy = ProxyView {
        name: &r.name,
        labels: &r.labels,
        dataplane: dp,
    };
    let inbounds = dp.networking.inbound.as_ref().expect("inbounds");
    let applies = |section: &str| -> Vec<bool> {
        let policies = timeouts(&[&format!(
            "type: MeshTimeout\nname: one\nspec:\n  targetRef: {{kind: Dataplane, name: two-1, sectionName: '{section}'}}\n  from:\n  - targetRef: {{kind: Mesh}}\n    default: {{idleTimeout: 1s}}\n"
        )]);
        inbounds
            .iter()
            .map(|i| inbound(&policies, &proxy, i).is_some())
            .collect()
    };
    assert_eq!(applies("http"), [true, false]);
    assert_eq!(applies("9090"), [false, true]);
    assert_eq!(applies("nope"), [false, false]);
}

#[test]
fn a_route_takes_the_conf_of_policies_naming_it_over_its_service_s() {
    let policies = timeouts(&[
        "type: MeshTimeout\nname: service\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: web}\n    default: {http: {requestTimeout: 5s, streamIdleTimeout: 9s}}\n",
        "type: MeshTimeout\nname: on-route\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: api}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 1s}}\n",
        "type: MeshTimeout\nname: in-to\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshHTTPRoute, name: admin}\n    default: {http: {requestTimeout: 2s}}\n",
    ]);
    assert!(names_routes(&policies) && !names_routes(&policies[..1]));
    with_demo(|proxy| {
        let plain = outbound(&policies, proxy, "web").expect("applies").conf;
        assert_eq!(
            plain.http.and_then(|h| h.request_timeout),
            Some(d("5s")),
            "routes' confs stay on routes"
        );
        let api = outbound_route(&policies, proxy, "web", &["api".into()]).expect("applies");
        let http = api.conf.http.expect("http");
        assert_eq!(http.request_timeout, Some(d("1s")), "the route's conf wins");
        assert_eq!(
            http.stream_idle_timeout,
            Some(d("9s")),
            "the service's fills in the rest"
        );
        let admin = outbound_route(&policies, proxy, "web", &["admin".into()]).expect("applies");
        assert_eq!(admin.conf.http.and_then(|h| h.request_timeout), Some(d("2s")));
        let other = outbound_route(&policies, proxy, "web", &["other".into()]).expect("applies");
        assert_eq!(other.conf.http.and_then(|h| h.request_timeout), Some(d("5s")));
    });
}

#[test]
fn a_policy_on_a_route_shapes_its_outbound_traffic_alone() {
    let refused = |yaml: &str| -> Vec<String> {
        match parse_one(yaml, Format::Yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.causes().iter().map(|c| c.field.clone()).collect(),
        }
    };
    assert_eq!(
        refused(
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: api}\n  to:\n  - targetRef: {kind: MeshService, name: web}\n    default: {idleTimeout: 1s}\n"
        ),
        ["spec.to[0].targetRef.kind"]
    );
    assert_eq!(
        refused(
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: api}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 1s}\n"
        ),
        ["spec.targetRef.kind"]
    );
    assert_eq!(
        refused(
            "type: MeshCircuitBreaker\nname: c\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: api}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionLimits: {maxConnections: 1}}\n"
        ),
        ["spec.targetRef.kind"]
    );
    parse_one(
        "type: MeshRetry\nname: r\nspec:\n  to:\n  - targetRef: {kind: MeshHTTPRoute, name: api}\n    default: {http: {numRetries: 2}}\n",
        Format::Yaml,
    )
    .expect("a route in to");
}
