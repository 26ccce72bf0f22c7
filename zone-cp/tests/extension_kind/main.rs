//! A policy kind added from outside Meridian: two files (`mesh_test_header.rs`, the model half;
//! `plugin.rs`, the plugin half) and one registration line. Once registered, the kind is parsed,
//! validated with field paths, resolved by the shared precedence and applied to the generated
//! Envoy config; a kind whose plugin is missing is refused.

mod mesh_test_header;
mod plugin;

use std::collections::BTreeMap;
use std::sync::Once;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use meridian_model::extension::{self, ExtensionKind, RegisterError};
use meridian_model::resolve::{ProxyView, affects};
use meridian_model::{Format, Kind, Resource, ResourceError, Spec, parse_one};
use meridian_zone_cp::xds::cache::ROUTE;
use meridian_zone_cp::xds::policies::{self, RegistryError};
use meridian_zone_cp::xds::translate::{MeshContext, proxy_snapshot};
use prost::Message;

use mesh_test_header::{KIND, MeshTestHeaderSpec};

fn registered() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The one line a new kind adds.
        policies::register(&KIND, &plugin::Plugin).expect("registered");
    });
}

fn parse(yaml: &str) -> Result<Resource, ResourceError> {
    parse_one(yaml, Format::Yaml).map(|p| p.resource)
}

fn dataplane(name: &str, address: &str, service: &str, calls: &[(&str, u16)]) -> Resource {
    let outbound: String = calls
        .iter()
        .map(|(s, port)| format!("  - port: {port}\n    tags: {{kuma.io/service: {s}}}\n"))
        .collect();
    let outbound = if outbound.is_empty() {
        String::new()
    } else {
        format!("  outbound:\n{outbound}")
    };
    parse(&format!(
        "type: Dataplane\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n{outbound}"
    ))
    .expect("a valid Dataplane")
}

/// The request headers `proxy`'s route configuration for `service` adds.
fn headers_to(world: &[Resource], proxy: &str, service: &str) -> BTreeMap<String, String> {
    let ctx = MeshContext::new(world);
    let dp = world.iter().find(|r| r.name == proxy).expect("proxy");
    let Spec::Dataplane(spec) = &dp.spec else {
        panic!("not a Dataplane")
    };
    let snapshot = proxy_snapshot(&ctx, &dp.name, &dp.labels, spec, None);
    let name = format!("outbound:{service}");
    let any = &snapshot
        .of_type(ROUTE)
        .and_then(|r| r.get(&name))
        .expect("a route configuration")
        .resource;
    let route = RouteConfiguration::decode(any.value.as_slice()).expect("decodes");
    let headers = route.request_headers_to_add.into_iter().filter_map(|h| h.header);
    headers.map(|h| (h.key, h.value)).collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_kind_in_two_files_is_parsed_validated_and_applied() {
    registered();
    assert_eq!(Kind::from_name("MeshTestHeader"), Some(Kind::Extension(&KIND)));
    assert_eq!(Kind::from_plural("meshtestheaders"), Some(Kind::Extension(&KIND)));

    // Validation: the kind's own checks, each naming its field.
    let err = parse(
        "type: MeshTestHeader\nname: h\nspec:\n  to:\n  - targetRef: {kind: MeshHTTPRoute, name: r}\n    default: {set: {\"bad header\": x}}\n",
    )
    .expect_err("invalid");
    let text = err.to_string();
    assert!(text.contains("spec.to[0].targetRef.kind"), "{text}");
    assert!(text.contains("spec.to[0].default.set.bad header"), "{text}");
    let err = parse(
        "type: MeshTestHeader\nname: h\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {sett: {}}\n",
    )
    .expect_err("unknown field");
    assert!(err.to_string().contains("spec.to[0].default.sett"), "{err}");

    let mesh_wide = parse(
        "type: MeshTestHeader\nname: everyone\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {set: {x-team: mesh, x-call: any}}\n",
    )
    .expect("valid");
    let Spec::Extension(ext) = &mesh_wide.spec else {
        panic!("an extension spec")
    };
    assert!(
        ext.get::<MeshTestHeaderSpec>().is_some(),
        "typed again on the way out"
    );
    assert_eq!(
        parse(&universal_form(&mesh_wide)).expect("round trip").spec,
        mesh_wide.spec
    );

    let to_reg = parse(
        "type: MeshTestHeader\nname: to-reg\nspec:\n  targetRef: {kind: MeshService, name: demo}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default: {set: {x-call: reg}}\n",
    )
    .expect("valid");
    let world = vec![
        dataplane(
            "demo-1",
            "127.0.0.1",
            "demo",
            &[("reg-server", 20001), ("other", 20002)],
        ),
        dataplane("reg-server-1", "127.0.0.2", "reg-server", &[]),
        dataplane("other-1", "127.0.0.3", "other", &[("reg-server", 20001)]),
        mesh_wide,
        to_reg.clone(),
    ];

    // The more specific policy wins header by header; the rest is inherited.
    assert_eq!(
        headers_to(&world, "demo-1", "reg-server"),
        map(&[("x-call", "reg"), ("x-team", "mesh")])
    );
    assert_eq!(
        headers_to(&world, "demo-1", "other"),
        map(&[("x-call", "any"), ("x-team", "mesh")])
    );
    // `to-reg` selects demo's proxies only.
    assert_eq!(
        headers_to(&world, "other-1", "reg-server"),
        map(&[("x-call", "any"), ("x-team", "mesh")])
    );

    // Which proxies a change touches: its top-level targetRef, like any built-in kind.
    let Spec::Dataplane(other) = &world[2].spec else {
        unreachable!()
    };
    let view = ProxyView {
        name: "other-1",
        labels: &world[2].labels,
        dataplane: other,
    };
    assert_eq!(affects(&to_reg.spec, &view), Some(false));
}

/// The universal YAML form of a resource (JSON is YAML).
fn universal_form(r: &Resource) -> String {
    serde_json::json!({"type": r.kind().name(), "name": r.name, "spec": r.spec.to_value()}).to_string()
}

#[test]
fn a_kind_without_both_halves_is_refused() {
    registered();
    static ORPHAN: ExtensionKind =
        ExtensionKind::new::<MeshTestHeaderSpec>("MeshTestOrphan", "meshtestorphans");
    static SECOND: ExtensionKind =
        ExtensionKind::new::<MeshTestHeaderSpec>("MeshTestSecond", "meshtestseconds");

    // A plugin that applies another kind is not this kind's plugin.
    assert_eq!(
        policies::register(&SECOND, &plugin::Plugin),
        Err(RegistryError::WrongPlugin {
            kind: Kind::Extension(&SECOND),
            applies: vec![Kind::Extension(&KIND)]
        })
    );
    assert_eq!(Kind::from_name("MeshTestSecond"), None, "nothing half-registered");
    assert!(
        matches!(
            parse("type: MeshTestSecond\nname: s\nspec: {to: []}\n"),
            Err(ResourceError::UnknownKind { .. })
        ),
        "an unregistered kind is unknown"
    );
    // A name is registered once.
    assert_eq!(
        policies::register(&KIND, &plugin::Plugin),
        Err(RegistryError::Taken(RegisterError::Taken(
            "MeshTestHeader",
            "meshtestheaders"
        )))
    );

    assert_eq!(policies::check(), Ok(()));
    // The model half alone: zone-cp refuses to start.
    extension::register(&ORPHAN).expect("model half");
    assert_eq!(
        policies::check(),
        Err(RegistryError::NoPlugin(Kind::Extension(&ORPHAN)))
    );
}
