//! Asking why: `_rules`, `_resources/dataplanes` and `_traffic` against a real SQLite store.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use meridian_api::auth::Auth;
use meridian_api::metrics::Metrics;
use meridian_api::tokens::{TokenKind, Tokens};
use meridian_api::{ApiState, app};
use meridian_store::SqlStore;
use serde_json::Value;
use tower::ServiceExt;

struct World {
    router: Router,
    _dir: tempfile::TempDir,
}

/// Sends a request from no address (not this host: anonymous unless a token is given).
async fn send(router: &Router, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "cp.test");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/yaml");
    }
    let resp = router
        .clone()
        .oneshot(
            req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
    )
}

const DOCS: &[(&str, &str)] = &[
    (
        "/meshes/default",
        "type: Mesh\nname: default\nskipCreatingInitialPolicies: ['*']\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
    ),
    (
        "/meshes/default/dataplanes/demo-1",
        "type: Dataplane\nname: demo-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: demo, kuma.io/protocol: http}\n  outbound:\n  - port: 20001\n    tags: {kuma.io/service: reg-server}\n",
    ),
    (
        "/meshes/default/dataplanes/reg-server-1",
        "type: Dataplane\nname: reg-server-1\nmesh: default\nnetworking:\n  address: 127.0.0.2\n  inbound:\n  - port: 10002\n    tags: {kuma.io/service: reg-server, kuma.io/protocol: http}\n",
    ),
    (
        "/meshes/default/dataplanes/web-1",
        "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.3\n  inbound:\n  - port: 10003\n    tags: {kuma.io/service: web}\n",
    ),
    (
        "/meshes/default/traffic-permissions/allow-demo-to-reg",
        "type: TrafficPermission\nname: allow-demo-to-reg\nmesh: default\nsources:\n- match: {kuma.io/service: demo}\ndestinations:\n- match: {kuma.io/service: reg-server}\n",
    ),
    (
        "/meshes/default/meshtrafficpermissions/no-web",
        "type: MeshTrafficPermission\nname: no-web\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n",
    ),
    (
        "/meshes/default/meshtimeouts/mesh-wide",
        "type: MeshTimeout\nname: mesh-wide\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 5s, http: {requestTimeout: 15s}}\n",
    ),
    (
        "/meshes/default/meshtimeouts/for-reg",
        "type: MeshTimeout\nname: for-reg\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: demo}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default: {http: {requestTimeout: 2s}}\n",
    ),
    (
        "/meshes/default/meshtraces/default",
        "type: MeshTrace\nname: default\nmesh: default\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: collector:4317\n      headers: {x-api-key: very-secret}\n",
    ),
];

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqlStore::open_sqlite(dir.path()).await.expect("open"));
    store.migrate().await.expect("migrate");
    let state = ApiState {
        store: store.clone(),
        metrics: Arc::new(Metrics::new()),
        role: "zone",
        managed_by: None,
    };
    // Written as the node itself; read back as an anonymous caller.
    let writer = meridian_api::router(state.clone());
    for (path, doc) in DOCS {
        let (status, body) = send(&writer, "PUT", path, Some(doc)).await;
        assert!(status.is_success(), "{path}: {status} {body}");
    }
    let auth = Auth {
        tokens: Tokens::new(store),
        trust_localhost: true,
    };
    World {
        router: app(state, auth, &[TokenKind::User], Router::new()),
        _dir: dir,
    }
}

fn rule<'a>(rules: &'a Value, kind: &str) -> &'a Value {
    rules["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} rule in {rules:#}"))
}

fn origin_names(rule: &Value) -> Vec<&str> {
    rule["origin"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str())
        .collect()
}

#[tokio::test]
async fn rules_show_each_resolved_value_and_where_it_came_from() {
    let w = world().await;
    let (status, rules) = send(&w.router, "GET", "/meshes/default/dataplanes/demo-1/_rules", None).await;
    assert_eq!(status, StatusCode::OK, "{rules:#}");
    assert_eq!(rules["resource"]["name"], "demo-1");
    let timeout = &rule(&rules, "MeshTimeout")["toRules"][0];
    assert_eq!(timeout["matchers"][0]["value"], "reg-server");
    assert_eq!(timeout["conf"]["connectionTimeout"], "5s");
    assert_eq!(
        timeout["conf"]["http"]["requestTimeout"], "2s",
        "the more specific wins"
    );
    assert_eq!(origin_names(timeout), ["mesh-wide", "for-reg"]);
    // The proxy-wide MeshTrace, its API key redacted for this anonymous reader.
    let trace = &rule(&rules, "MeshTrace")["proxyRule"];
    assert_eq!(origin_names(trace), ["default"]);
    let text = trace.to_string();
    assert!(!text.contains("very-secret"), "{text}");
    assert!(text.contains("collector:4317"), "{text}");

    let (_, reg) = send(
        &w.router,
        "GET",
        "/meshes/default/dataplanes/reg-server-1/_rules",
        None,
    )
    .await;
    let inbound = &rule(&reg, "MeshTrafficPermission")["fromRules"][0];
    assert_eq!(inbound["inbound"]["port"], 10002);
    let access = &inbound["rules"][0];
    assert_eq!(
        access["conf"]["allow"],
        serde_json::json!([{"type": "Service", "value": "demo"}])
    );
    let mut names = origin_names(access);
    names.sort();
    assert_eq!(names, ["allow-demo-to-reg", "no-web"]);

    let (status, body) = send(&w.router, "GET", "/meshes/default/dataplanes/nope/_rules", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_policy_lists_the_dataplanes_it_selects() {
    let w = world().await;
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (status, all) = send(
        &w.router,
        "GET",
        "/meshes/default/meshtimeouts/mesh-wide/_resources/dataplanes",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{all:#}");
    assert_eq!(all["total"], 3);
    let (_, one) = send(
        &w.router,
        "GET",
        "/meshes/default/meshtimeouts/for-reg/_resources/dataplanes",
        None,
    )
    .await;
    assert_eq!(names(&one), ["demo-1"]);
    let (_, tp) = send(
        &w.router,
        "GET",
        "/meshes/default/traffic-permissions/allow-demo-to-reg/_resources/dataplanes",
        None,
    )
    .await;
    assert_eq!(
        names(&tp),
        ["reg-server-1"],
        "a TrafficPermission selects its destinations"
    );
    let (_, page) = send(
        &w.router,
        "GET",
        "/meshes/default/meshtimeouts/mesh-wide/_resources/dataplanes?size=2",
        None,
    )
    .await;
    assert_eq!(names(&page).len(), 2);
    assert_eq!(
        page["next"],
        "/meshes/default/meshtimeouts/mesh-wide/_resources/dataplanes?size=2&offset=2"
    );
    let (status, _) = send(
        &w.router,
        "GET",
        "/meshes/default/meshtimeouts/missing/_resources/dataplanes",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn traffic_names_the_policy_that_decides() {
    let w = world().await;
    let ask = |from: &str, to: &str| format!("/meshes/default/_traffic?from={from}&to={to}");
    let (status, web) = send(&w.router, "GET", &ask("web", "reg-server"), None).await;
    assert_eq!(status, StatusCode::OK, "{web:#}");
    assert_eq!(web["allowed"], false);
    assert_eq!(web["enforced"], true);
    let d = &web["destinations"][0];
    assert_eq!(d["dataplane"], "reg-server-1");
    assert_eq!(d["policy"]["type"], "MeshTrafficPermission");
    assert_eq!(d["policy"]["name"], "no-web");

    let (_, demo) = send(&w.router, "GET", &ask("demo", "reg-server"), None).await;
    assert_eq!(demo["allowed"], true);
    assert_eq!(demo["destinations"][0]["policy"]["name"], "allow-demo-to-reg");

    let (_, other) = send(&w.router, "GET", &ask("billing", "reg-server"), None).await;
    assert_eq!(other["allowed"], false);
    assert!(other["destinations"][0]["policy"].is_null(), "{other:#}");

    let (status, missing) = send(&w.router, "GET", "/meshes/default/_traffic?to=reg-server", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{missing:#}");
    assert_eq!(missing["causes"][0]["field"], "from");
    let (status, _) = send(&w.router, "GET", &ask("demo", "nobody"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_write_warns_of_what_is_kept_but_not_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqlStore::open_sqlite(dir.path()).await.expect("open"));
    store.migrate().await.expect("migrate");
    let router = meridian_api::router(ApiState {
        store,
        metrics: Arc::new(Metrics::new()),
        role: "global",
        managed_by: None,
    });
    let (status, body) = send(
        &router,
        "PUT",
        "/meshes/old",
        Some("type: Mesh\nname: old\nmetrics:\n  enabledBackend: p\n  backends:\n  - name: p\n    type: prometheus\n"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let warnings = body["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.starts_with("metrics is kept but not applied"))
    );
}
