//! Invalidation and the incremental context, against what a full rebuild makes.

use meridian_model::{Format, Stored, parse_one};

use super::*;
use crate::xds::cache::{CLUSTER, LISTENER, ROUTE};

fn change(yaml: &str) -> Change {
    let resource = parse_one(yaml, Format::Yaml).expect("valid").resource;
    Change::Upsert(Box::new(Stored {
        resource,
        version: 1,
        revision: 1,
        creation_time_ms: 0,
        modification_time_ms: 0,
        trace: None,
    }))
}

fn view() -> ZoneView {
    let mut v = ZoneView::default();
    for (name, service, outbound) in [
        ("demo-1", "demo", "reg-server"),
        ("reg-1", "reg-server", "db"),
        ("db-1", "db", ""),
    ] {
        let out = if outbound.is_empty() {
            String::new()
        } else {
            format!("  outbound:\n  - port: 20001\n    tags: {{kuma.io/service: {outbound}}}\n")
        };
        v.apply(change(&format!(
            "type: Dataplane\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {{kuma.io/service: {service}}}\n{out}"
        )));
    }
    v
}

fn affected(v: &ZoneView, c: &Change) -> BTreeMap<String, Touched> {
    let mut out = BTreeMap::new();
    v.affected(c, &mut out);
    out
}

/// What a MeshTimeout can change: clusters, listeners and routes, never endpoints or secrets.
const TIMEOUTS: Types = Types::of(&[CLUSTER, LISTENER, ROUTE]);

/// The named proxies of `default`, in `types`.
fn only(names: &[&str], types: Types) -> BTreeMap<String, Touched> {
    let mut touched = Touched::default();
    touched.add_whole(names.iter().map(|n| n.to_string()), types);
    BTreeMap::from([("default".to_owned(), touched)])
}

#[test]
fn a_dataplane_affects_itself_and_the_endpoints_of_its_callers() {
    let v = view();
    let c = change(
        "type: Dataplane\nname: reg-2\nnetworking:\n  address: 127.0.0.2\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: reg-server}\n",
    );
    let expected = Touched {
        all: Types::NONE,
        whole: BTreeMap::from([("reg-2".to_owned(), Types::ALL)]),
        endpoints: BTreeMap::from([("demo-1".to_owned(), BTreeSet::from(["reg-server".to_owned()]))]),
    };
    assert_eq!(
        affected(&v, &c),
        BTreeMap::from([("default".to_owned(), expected)])
    );
}

#[test]
fn a_policy_affects_the_proxies_it_selects() {
    let v = view();
    let c = change(
        "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n",
    );
    assert_eq!(affected(&v, &c), only(&["reg-1"], TIMEOUTS));
    let mesh_wide = change(
        "type: MeshTimeout\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n",
    );
    assert_eq!(
        affected(&v, &mesh_wide),
        BTreeMap::from([(
            "default".to_owned(),
            Touched {
                all: TIMEOUTS,
                ..Touched::default()
            }
        )])
    );
}

#[test]
fn a_retargeted_policy_affects_old_and_new_targets() {
    let mut v = view();
    v.apply(change("type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n"));
    let moved = change(
        "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshService, name: db}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n",
    );
    assert_eq!(affected(&v, &moved), only(&["db-1", "reg-1"], TIMEOUTS));
}

fn delete(kind: Kind, mesh: &str, name: &str) -> Change {
    Change::Delete {
        key: ResourceKey::new(kind, mesh, name),
        revision: 1,
        deleted_ms: 0,
        trace: None,
    }
}

fn dp(name: &str, inbounds: &[(&str, bool)]) -> Change {
    let zone = synced_zone_label(name);
    let inbounds: String = inbounds
        .iter()
        .enumerate()
        .map(|(i, (service, ready))| {
            format!(
                "  - port: {}\n    health: {{ready: {ready}}}\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n",
                10001 + i
            )
        })
        .collect();
    change(&format!(
        "type: Dataplane\nname: {name}\n{zone}networking:\n  address: 127.0.0.{}\n  inbound:\n{inbounds}",
        name.len()
    ))
}

fn synced_zone_label(name: &str) -> String {
    match meridian_model::synced_zone(name) {
        Some(zone) => format!("labels: {{kuma.io/zone: {zone}}}\n"),
        None => String::new(),
    }
}

/// The context as a full rebuild of the mesh makes it.
fn rebuilt(v: &ZoneView, zones: &Zones) -> String {
    let resources = v.meshes.get("default").into_iter().flat_map(|m| m.values());
    let mut ctx = MeshContext::new(resources.map(|r| &**r));
    ctx.zones = zones.clone();
    format!("{ctx:?}")
}

#[test]
fn the_kept_context_is_what_a_full_rebuild_makes_after_every_change() {
    let zones = Zones {
        local: "zone-1".into(),
        ..Zones::default()
    };
    let steps = [
        change("type: Mesh\nname: default\n"),
        dp("web-1", &[("web", true)]),
        dp("web-2", &[("web", false)]),
        dp("zone-2.web-9", &[("web", true)]),
        dp("api-1", &[("api", true), ("api-admin", true)]),
        change(
            "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshService, name: web}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 1s}\n",
        ),
        change("type: Secret\nname: key\nmesh: default\ndata: c2VjcmV0\n"),
        // Another of the same kind, before it in name order, and a kind of its own.
        change(
            "type: MeshTimeout\nname: a\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 5s}\n",
        ),
        change(
            "type: MeshTrafficPermission\nname: p\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Deny}\n",
        ),
        change(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
        ),
        // A readiness flip, here and in the other zone.
        dp("web-2", &[("web", true)]),
        dp("zone-2.web-9", &[("web", false)]),
        // A Dataplane that moves to another service leaves the first one.
        dp("api-1", &[("api-v2", true)]),
        // Older kinds share their new kind's list: each change reads the group again.
        change(
            "type: Timeout\nname: legacy\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: web}\nconf: {connectTimeout: 3s}\n",
        ),
        change(
            "type: MeshHTTPRoute\nname: r\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: web}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /a}}]\n      default: {backendRefs: [{kind: MeshService, name: api}]}\n",
        ),
        change(
            "type: TrafficRoute\nname: tr\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: api}\nconf: {destination: {kuma.io/service: web}}\n",
        ),
        delete(Kind::Timeout, "default", "legacy"),
        delete(Kind::MeshHTTPRoute, "default", "r"),
        delete(Kind::Dataplane, "default", "web-1"),
        delete(Kind::MeshTimeout, "default", "t"),
        delete(Kind::Secret, "default", "key"),
        delete(Kind::Dataplane, "default", "zone-2.web-9"),
        delete(Kind::Dataplane, "default", "web-2"),
    ];
    let mut v = ZoneView::default();
    for (i, step) in steps.into_iter().enumerate() {
        // Every other step a generation still holds the last context: it is copied, not
        // changed in place under it.
        let held = (i % 2 == 0).then(|| v.context("default", zones.clone()));
        let before = held.as_ref().map(|c| format!("{c:?}"));
        v.apply(step);
        let kept = v.context("default", zones.clone());
        assert_eq!(format!("{kept:?}"), rebuilt(&v, &zones), "after step {i}");
        if let (Some(held), Some(before)) = (held, before) {
            assert_eq!(
                format!("{held:?}"),
                before,
                "a held context never changes (step {i})"
            );
        }
        // Asked again with nothing changed: the same context, not rebuilt.
        assert!(
            Arc::ptr_eq(&kept, &v.context("default", zones.clone())),
            "step {i}"
        );
    }
    let other = Zones {
        local: "zone-1".into(),
        ingresses: BTreeMap::from([("zone-2".to_owned(), vec![("10.0.0.2".to_owned(), 10001)])]),
    };
    assert_eq!(
        format!("{:?}", v.context("default", other.clone())),
        rebuilt(&v, &other)
    );
}

#[test]
fn a_policy_on_a_route_affects_the_proxies_the_route_selects() {
    let mut v = view();
    let on_route = change(
        "type: MeshTimeout\nname: t\nspec:\n  targetRef: {kind: MeshHTTPRoute, name: r}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 1s}}\n",
    );
    assert_eq!(
        affected(&v, &on_route),
        only(&[], TIMEOUTS),
        "no such route: nothing takes it"
    );
    v.apply(change(
        "type: MeshHTTPRoute\nname: r\nspec:\n  targetRef: {kind: MeshService, name: demo}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default: {backendRefs: [{kind: MeshService, name: db}]}\n",
    ));
    assert_eq!(affected(&v, &on_route), only(&["demo-1"], TIMEOUTS));
}

#[test]
fn instances_of_a_service_a_route_sends_to_patch_the_route_s_callers() {
    let mut v = view();
    v.apply(change(
        "type: MeshHTTPRoute\nname: r\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /}}]\n      default: {backendRefs: [{kind: MeshService, name: db}]}\n",
    ));
    let c = change(
        "type: Dataplane\nname: db-2\nnetworking:\n  address: 127.0.0.3\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: db}\n",
    );
    let touched = affected(&v, &c).remove("default").expect("default");
    // reg-1 calls db itself; demo-1 calls reg-server, whose route sends to db.
    assert_eq!(
        touched.endpoints,
        BTreeMap::from([
            ("demo-1".to_owned(), BTreeSet::from(["reg-server".to_owned()])),
            ("reg-1".to_owned(), BTreeSet::from(["db".to_owned()])),
        ])
    );
}

#[test]
fn instances_of_a_service_an_older_traffic_route_sends_to_patch_its_callers() {
    let mut v = view();
    v.apply(change(
        "type: TrafficRoute\nname: tr\nmesh: default\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: reg-server}\nconf: {destination: {kuma.io/service: db}}\n",
    ));
    let c = change(
        "type: Dataplane\nname: db-2\nnetworking:\n  address: 127.0.0.3\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: db}\n",
    );
    let touched = affected(&v, &c).remove("default").expect("default");
    assert_eq!(
        touched.endpoints.get("demo-1"),
        Some(&BTreeSet::from(["reg-server".to_owned()])),
        "{touched:?}"
    );
}
