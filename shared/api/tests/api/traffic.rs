//! Traffic policies (MeshHTTPRoute, MeshFaultInjection, MeshRateLimit): a bad one is refused
//! naming its field and writes nothing, and the one stored stays as it was; a route whose
//! match can never be reached is stored, and `_rules` says why it is never taken.

use axum::http::StatusCode;

use super::api;

const ROUTE: &str = "type: MeshHTTPRoute\nname: r\nmesh: default\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /api}}]\n      default:\n        filters:\n        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: a}]}}\n        backendRefs:\n        - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 80}\n        - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 20}\n";

const FAULT: &str = "type: MeshFaultInjection\nname: f\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: Mesh}\n    default:\n      http:\n      - abort: {httpStatus: 503, percentage: 50}\n";

#[tokio::test]
async fn bad_traffic_policies_are_refused_naming_the_field_and_nothing_is_written() {
    let api = api().await;
    let (s, b) = api.yaml("/meshes/default/meshhttproutes/r", ROUTE).await;
    assert_eq!(s, StatusCode::CREATED, "{b:#}");
    let (s, b) = api.yaml("/meshes/default/meshfaultinjections/f", FAULT).await;
    assert_eq!(s, StatusCode::CREATED, "{b:#}");
    let (_, stored) = api.send("GET", "/meshes/default/meshhttproutes/r", None).await;
    let before = api.revision().await;
    let rule = "spec.to[0].rules[0].default";
    let cases: Vec<(&str, String, String)> = vec![
        (
            "weights that sum to zero",
            ROUTE.replace("weight: 80", "weight: 0").replace("weight: 20", "weight: 0"),
            format!("{rule}.backendRefs"),
        ),
        (
            "a backendRef of an unknown kind",
            ROUTE.replace("{kind: MeshServiceSubset, name: backend, tags: {version: v1}", "{kind: MeshWhatever, name: backend, tags: {version: v1}"),
            format!("{rule}.backendRefs[0].kind"),
        ),
        (
            "a backendRef of a kind that is no backend",
            ROUTE.replace("{kind: MeshServiceSubset, name: backend, tags: {version: v1}", "{kind: Mesh, name: backend, tags: {version: v1}"),
            format!("{rule}.backendRefs[0].kind"),
        ),
        (
            "a redirect and a rewrite on one rule",
            ROUTE.replace(
                "        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: a}]}}\n",
                "        - {type: RequestRedirect, requestRedirect: {statusCode: 301}}\n        - {type: URLRewrite, urlRewrite: {hostname: example.com}}\n",
            ),
            format!("{rule}.filters[1]"),
        ),
        (
            "a redirect with a status that is not a redirect",
            ROUTE.replace(
                "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: a}]}}",
                "{type: RequestRedirect, requestRedirect: {statusCode: 200}}",
            ),
            format!("{rule}.filters[0].requestRedirect.statusCode"),
        ),
        (
            "a filter without its settings",
            ROUTE.replace("requestHeaderModifier: {set: [{name: x-a, value: a}]}", "urlRewrite: {hostname: a.b}"),
            format!("{rule}.filters[0].requestHeaderModifier"),
        ),
        (
            "a regular expression RE2 refuses",
            ROUTE.replace("{type: PathPrefix, value: /api}", "{type: RegularExpression, value: '/(?=x)'}"),
            "spec.to[0].rules[0].matches[0].path.value".into(),
        ),
        (
            "a Host header modifier",
            ROUTE.replace("set: [{name: x-a, value: a}]", "set: [{name: Host, value: a}]"),
            format!("{rule}.filters[0].requestHeaderModifier.set[0].name"),
        ),
        (
            "a header value with a line break",
            ROUTE.replace("{name: x-a, value: a}", "{name: x-a, value: \"a\\nb\"}"),
            format!("{rule}.filters[0].requestHeaderModifier.set[0].value"),
        ),
        (
            "a path prefix with a query",
            ROUTE.replace("value: /api}", "value: /api?x=1}"),
            "spec.to[0].rules[0].matches[0].path.value".into(),
        ),
        (
            "a regular expression too large for Envoy",
            ROUTE.replace("{type: PathPrefix, value: /api}", "{type: RegularExpression, value: '^/users/[a-z0-9-]{1,64}/orders$'}"),
            "spec.to[0].rules[0].matches[0].path.value".into(),
        ),
        (
            "a subset without tags",
            ROUTE.replace(", tags: {version: v1}", ""),
            format!("{rule}.backendRefs[0].tags"),
        ),
    ];
    for (what, yaml, field) in cases {
        let (s, b) = api.yaml("/meshes/default/meshhttproutes/r", &yaml).await;
        println!("{what}: {s} {}", b["causes"]);
        api.refused(s, b, StatusCode::BAD_REQUEST, &field, before).await;
    }
    for (what, yaml, field) in [
        (
            "a percentage above 100",
            FAULT.replace("percentage: 50", "percentage: 150"),
            "spec.from[0].default.http[0].abort.percentage",
        ),
        (
            "a status that is no HTTP status",
            FAULT.replace("httpStatus: 503", "httpStatus: 42"),
            "spec.from[0].default.http[0].abort.httpStatus",
        ),
    ] {
        let (s, b) = api.yaml("/meshes/default/meshfaultinjections/f", &yaml).await;
        println!("{what}: {s} {}", b["causes"]);
        api.refused(s, b, StatusCode::BAD_REQUEST, field, before).await;
    }
    let teapot = "type: MeshRateLimit\nname: l\nmesh: default\nspec:\n  rules:\n  - default:\n      local:\n        http:\n          requestRate: {num: 10, interval: 1s}\n          onRateLimit: {status: 418}\n";
    let (s, b) = api.yaml("/meshes/default/meshratelimits/l", teapot).await;
    api.refused(
        s,
        b,
        StatusCode::BAD_REQUEST,
        "spec.rules[0].default.local.http.onRateLimit.status",
        before,
    )
    .await;
    let rate = "type: MeshRateLimit\nname: l\nmesh: default\nspec:\n  rules:\n  - default:\n      local:\n        http:\n          requestRate: {num: 10, interval: 10ms}\n";
    let (s, b) = api.yaml("/meshes/default/meshratelimits/l", rate).await;
    api.refused(
        s,
        b,
        StatusCode::BAD_REQUEST,
        "spec.rules[0].default.local.http.requestRate.interval",
        before,
    )
    .await;
    let (_, after) = api.send("GET", "/meshes/default/meshhttproutes/r", None).await;
    assert_eq!(after, stored, "the stored route is as it was");
}

#[tokio::test]
async fn a_match_that_is_never_reached_is_stored_and_warned_about_in_rules() {
    let api = super::api_as("zone", None).await;
    let dp = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: web, kuma.io/protocol: http}\n  outbound:\n  - port: 20001\n    tags: {kuma.io/service: backend}\n";
    let (s, b) = api.yaml("/meshes/default/dataplanes/web-1", dp).await;
    assert_eq!(s, StatusCode::CREATED, "{b:#}");
    let shadowed = "type: MeshHTTPRoute\nname: shadowed\nmesh: default\nspec:\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /api}}]\n      default: {}\n    - matches: [{path: {type: PathPrefix, value: /api}, method: GET}, {path: {type: Exact, value: /api/x}}]\n      default: {}\n    - matches: [{path: {type: Exact, value: /api/x}}]\n      default: {}\n";
    let (s, b) = api
        .yaml("/meshes/default/meshhttproutes/shadowed", shadowed)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b:#}");
    let (s, rules) = api
        .send("GET", "/meshes/default/dataplanes/web-1/_rules", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{rules:#}");
    let route = rules["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["type"] == "MeshHTTPRoute"))
        .unwrap_or_else(|| panic!("{rules:#}"));
    let routes = route["toRules"][0]["conf"]["routes"].as_array().expect("routes");
    let paths: Vec<&str> = routes
        .iter()
        .filter_map(|r| r["match"]["path"]["value"].as_str())
        .collect();
    assert_eq!(paths, ["/api/x", "/api/x", "/api", "/api", "/"], "{route:#}");
    let warnings = route["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("route 1") && w.contains("can never be reached"))),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn an_older_kind_selects_what_its_new_form_selects() {
    let api = super::api_as("zone", None).await;
    for (name, service) in [("web-1", "web"), ("db-1", "db")] {
        let dp = format!(
            "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {{kuma.io/service: {service}}}\n  outbound:\n  - port: 20001\n    tags: {{kuma.io/service: other}}\n"
        );
        let (s, b) = api.yaml(&format!("/meshes/default/dataplanes/{name}"), &dp).await;
        assert_eq!(s, StatusCode::CREATED, "{b:#}");
    }
    let timeout = "type: Timeout\nname: t\nmesh: default\nsources:\n- match: {kuma.io/service: web}\ndestinations:\n- match: {kuma.io/service: '*'}\nconf: {connectTimeout: 1s}\n";
    let (s, b) = api.yaml("/meshes/default/timeouts/t", timeout).await;
    assert_eq!(s, StatusCode::CREATED, "{b:#}");
    let (s, list) = api
        .send("GET", "/meshes/default/timeouts/t/_resources/dataplanes", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{list:#}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["web-1"], "{list:#}");
    let (s, rules) = api
        .send("GET", "/meshes/default/dataplanes/web-1/_rules", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(rules.to_string().contains("MeshTimeout"), "{rules:#}");
}
