//! The REST API against a real SQLite store, request by request (no network): resources,
//! bodies and their errors here; who may do what in `access.rs`.

mod access;
mod traffic;

use meridian_store::prelude::*;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use meridian_api::auth::Auth;
use meridian_api::metrics::Metrics;
use meridian_api::tokens::{Subject, TokenKind, Tokens};
use meridian_api::{ApiState, app, router};
use meridian_store::SqlStore;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    router: Router,
    store: Arc<SqlStore>,
    tokens: Tokens,
    /// An admin's token, which `send` shows.
    admin: String,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    api_as("global", None).await
}

async fn api_as(role: &'static str, managed_by: Option<&str>) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqlStore::open_sqlite(dir.path()).await.expect("open"));
    store.migrate().await.expect("migrate");
    let state = ApiState {
        store: store.clone(),
        metrics: Arc::new(Metrics::new()),
        role: "global",
        managed_by: None,
    };
    // The mesh is created before the API becomes read-only, as a federated zone gets it by sync.
    let (status, _) = send_to(
        &router(state.clone()),
        "PUT",
        "/meshes/default",
        Some(("application/json", r#"{"type":"Mesh","name":"default"}"#)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let state = ApiState {
        role,
        managed_by: managed_by.map(str::to_owned),
        ..state
    };
    let tokens = Tokens::new(store.clone());
    let admin = user_token(&tokens, "admin", &["mesh-system:admin"]).await;
    let auth = Auth {
        tokens: tokens.clone(),
        trust_localhost: true,
    };
    Api {
        router: app(state, auth, &[TokenKind::User], Router::new()),
        store,
        tokens,
        admin,
        _dir: dir,
    }
}

async fn user_token(tokens: &Tokens, name: &str, groups: &[&str]) -> String {
    let subject = Subject::User {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    tokens
        .issue(subject, std::time::Duration::from_secs(600))
        .await
        .expect("token")
        .token
}

async fn send_to(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    send_as(router, None, method, uri, body).await
}

/// Sends a request (from no address: not this host) with `token`, if any.
async fn send_as(
    router: &Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "cp.test");
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some((ct, text)) => {
            req = req.header(header::CONTENT_TYPE, ct);
            Body::from(text.to_owned())
        }
        None => Body::empty(),
    };
    let resp = router
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

impl Api {
    /// A request with the admin's token.
    async fn send(&self, method: &str, uri: &str, body: Option<(&str, &str)>) -> (StatusCode, Value) {
        send_as(&self.router, Some(&self.admin), method, uri, body).await
    }

    /// A request with `token`, or none.
    async fn send_with(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        send_as(&self.router, token, method, uri, body).await
    }

    async fn yaml(&self, uri: &str, text: &str) -> (StatusCode, Value) {
        self.send("PUT", uri, Some(("application/yaml", text))).await
    }

    async fn revision(&self) -> i64 {
        self.store.revision().await.expect("revision")
    }

    /// Asserts that a request was refused with `status`, wrote nothing, and named `field`.
    async fn refused(&self, status: StatusCode, body: Value, expected: StatusCode, field: &str, before: i64) {
        assert_eq!(status, expected, "{body:#}");
        assert!(
            body["title"].is_string() && body["details"].is_string(),
            "{body:#}"
        );
        let fields: Vec<&str> = body["causes"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            fields.contains(&field),
            "expected a cause for {field:?}: {body:#}"
        );
        assert_eq!(self.revision().await, before, "a refused request must not write");
    }
}

const TRACE: &str = "spec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: collector:4317\n      headers:\n        x-api-key: secret-ish\n";

#[tokio::test]
async fn put_creates_then_updates_then_reports_unchanged() {
    let api = api().await;
    let (s, b) = api.yaml("/meshes/default/meshtraces/t1", TRACE).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["result"], "created");
    let (s, b) = api.yaml("/meshes/default/meshtraces/t1", TRACE).await;
    assert_eq!((s, b["result"].as_str()), (StatusCode::OK, Some("unchanged")));
    let (s, b) = api
        .yaml(
            "/meshes/default/meshtraces/t1",
            &TRACE.replace("collector", "other"),
        )
        .await;
    assert_eq!(
        (s, b["result"].as_str(), b["version"].as_i64()),
        (StatusCode::OK, Some("updated"), Some(2))
    );

    let (s, b) = api.send("GET", "/meshes/default/meshtraces/t1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["type"], "MeshTrace");
    assert_eq!(b["spec"]["backends"][0]["conf"]["endpoint"], "other:4317");
    assert_eq!(
        b["spec"]["backends"][0]["conf"]["headers"]["x-api-key"],
        "secret-ish"
    );
}

#[tokio::test]
async fn both_forms_and_json_bodies_are_accepted() {
    let api = api().await;
    let k8s = "apiVersion: kuma.io/v1alpha1\nkind: TrafficPermission\nmetadata:\n  name: allow\nspec:\n  sources:\n  - match:\n      kuma.io/service: demo\n  destinations:\n  - match:\n      kuma.io/service: reg-server\n";
    let (s, b) = api.yaml("/meshes/default/traffic-permissions/allow", k8s).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let body = json!({"type": "MeshTimeout", "name": "t", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "5s"}}}]}});
    let (s, b) = api
        .send(
            "PUT",
            "/meshes/default/meshtimeouts/t",
            Some(("application/json", &body.to_string())),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // Kuma's older kinds keep their spec inline in the universal form.
    let (_, b) = api
        .send("GET", "/meshes/default/traffic-permissions/allow", None)
        .await;
    assert_eq!(b["sources"][0]["match"]["kuma.io/service"], "demo", "{b}");
}

#[tokio::test]
async fn malformed_bodies_name_line_and_column() {
    let api = api().await;
    let before = api.revision().await;
    let (s, b) = api
        .yaml("/meshes/default/meshtraces/t", "spec:\n  backends: [\n")
        .await;
    api.refused(s, b.clone(), StatusCode::BAD_REQUEST, "", before)
        .await;
    assert!(b["details"].as_str().is_some_and(|d| d.contains("line 3")), "{b}");
    let (s, b) = api
        .send(
            "PUT",
            "/meshes/default/meshtraces/t",
            Some(("application/json", "{\"spec\": {,}}")),
        )
        .await;
    api.refused(s, b.clone(), StatusCode::BAD_REQUEST, "", before)
        .await;
    assert!(
        b["details"]
            .as_str()
            .is_some_and(|d| d.contains("line 1, column 11")),
        "{b}"
    );
}

#[tokio::test]
async fn unknown_kind_lists_the_known_ones() {
    let api = api().await;
    let before = api.revision().await;
    let (s, b) = api
        .yaml(
            "/meshes/default/meshtraces/t",
            "type: MeshTrice\nname: t\nspec: {}\n",
        )
        .await;
    api.refused(s, b.clone(), StatusCode::BAD_REQUEST, "type", before)
        .await;
    let details = b["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("MeshTrice") && details.contains("MeshTrace") && details.contains("MeshRetry"),
        "{b}"
    );
    let (s, b) = api.send("GET", "/meshes/default/meshtrices", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        b["details"].as_str().is_some_and(|d| d.contains("meshtraces")),
        "{b}"
    );
}

#[tokio::test]
async fn unknown_and_mistyped_fields_name_their_path() {
    let api = api().await;
    let before = api.revision().await;
    let (s, b) = api
        .yaml(
            "/meshes/default/meshtraces/t",
            &TRACE.replace("endpoint:", "endpont:"),
        )
        .await;
    api.refused(
        s,
        b,
        StatusCode::BAD_REQUEST,
        "spec.backends[0].conf.endpont",
        before,
    )
    .await;
    let (s, b) = api
        .yaml(
            "/meshes/default/meshtraces/t",
            &TRACE.replace("name: otel", "name: [1]"),
        )
        .await;
    api.refused(s, b, StatusCode::BAD_REQUEST, "spec.backends[0].name", before)
        .await;
    let (s, b) = api
        .yaml(
            "/meshes/default/meshtraces/t",
            &TRACE.replace("collector:4317", "no-port"),
        )
        .await;
    api.refused(
        s,
        b,
        StatusCode::BAD_REQUEST,
        "spec.backends[0].conf.endpoint",
        before,
    )
    .await;
}

#[tokio::test]
async fn bodies_over_one_mib_are_refused() {
    let api = api().await;
    let before = api.revision().await;
    let big = format!("{TRACE}# {}\n", "x".repeat(1 << 20));
    let (s, b) = api.yaml("/meshes/default/meshtraces/t", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert!(b["title"].is_string());
    assert_eq!(api.revision().await, before);
}

#[tokio::test]
async fn resources_in_missing_meshes_are_not_found() {
    let api = api().await;
    let before = api.revision().await;
    let (s, b) = api.yaml("/meshes/nope/meshtraces/t", TRACE).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert!(
        b["details"]
            .as_str()
            .is_some_and(|d| d.contains("mesh \"nope\" not found")),
        "{b}"
    );
    assert_eq!(api.revision().await, before);
}

#[tokio::test]
async fn names_must_be_dns_labels_and_match_the_path() {
    let api = api().await;
    let before = api.revision().await;
    let (s, b) = api.yaml("/meshes/default/meshtraces/Bad_Name", TRACE).await;
    api.refused(s, b, StatusCode::BAD_REQUEST, "name", before).await;
    let (s, b) = api
        .yaml("/meshes/default/meshtraces/a", &format!("name: b\n{TRACE}"))
        .await;
    api.refused(s, b, StatusCode::BAD_REQUEST, "name", before).await;
    let (s, b) = api
        .yaml(
            "/meshes/default/meshtimeouts/a",
            &format!("type: MeshTrace\n{TRACE}"),
        )
        .await;
    api.refused(s, b, StatusCode::BAD_REQUEST, "type", before).await;
}

#[tokio::test]
async fn stale_versions_get_409() {
    let api = api().await;
    api.yaml("/meshes/default/meshtraces/t", TRACE).await;
    api.yaml("/meshes/default/meshtraces/t", &TRACE.replace("collector", "c2"))
        .await;
    let before = api.revision().await;
    let (s, b) = api
        .yaml(
            "/meshes/default/meshtraces/t",
            &format!("version: 1\n{}", TRACE.replace("collector", "c3")),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(api.revision().await, before);
    let (s, _) = api
        .yaml(
            "/meshes/default/meshtraces/t",
            &format!("version: 2\n{}", TRACE.replace("collector", "c3")),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn non_empty_meshes_need_cascade() {
    let api = api().await;
    api.yaml("/meshes/default/meshtraces/t", TRACE).await;
    let (s, b) = api.send("DELETE", "/meshes/default", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["details"].as_str().is_some_and(|d| d.contains("1 MeshTrace")),
        "{b}"
    );
    let (s, _) = api.send("DELETE", "/meshes/default?cascade=true", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.send("GET", "/meshes/default/meshtraces/t", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_page_with_next_links() {
    let api = api().await;
    for i in 0..5 {
        api.yaml(&format!("/meshes/default/meshtraces/t{i}"), TRACE).await;
    }
    let (s, b) = api.send("GET", "/meshes/default/meshtraces?size=2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["total"], 5);
    assert_eq!(b["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(b["next"], "/meshes/default/meshtraces?size=2&offset=2");
    let (_, b) = api
        .send("GET", "/meshes/default/meshtraces?size=2&offset=4", None)
        .await;
    assert_eq!(b["items"][0]["name"], "t4");
    assert_eq!(b["next"], Value::Null);
    let (_, b) = api.send("GET", "/meshtraces", None).await;
    assert_eq!(b["total"], 5);
    let (s, b) = api.send("GET", "/meshes/default/meshtraces?size=0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["causes"][0]["field"], "size");
    for offset in ["-1", "x", "9223372036854775808", "99999999999999999999"] {
        let (s, b) = api
            .send(
                "GET",
                &format!("/meshes/default/meshtraces?offset={offset}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "offset {offset}: {b}");
        assert_eq!(b["causes"][0]["field"], "offset");
    }
    let (s, b) = api
        .send(
            "GET",
            "/meshes/default/meshtraces?offset=9223372036854775807",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = api.send("GET", "/meshes/nope/meshtraces", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let api = api().await;
    let (s, b) = api.send("GET", "/healthz", None).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, Some("ok\n")));
    api.send("GET", "/meshes", None).await;
    let (s, b) = api.send("GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = b.as_str().unwrap_or_default();
    assert!(
        text.contains("meridian_http_requests_total{method=\"GET\",route=\"/meshes\",status=\"200\"} 1"),
        "{text}"
    );
    // The mesh and its allow-all permission.
    assert!(text.contains("meridian_store_revision 2"), "{text}");
    let (s, b) = api.send("GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["paths"]["/meshes/{mesh}/meshtraces/{name}"]["put"].is_object());
    let (s, b) = api.send("GET", "/no/such/thing/here/at/all", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(b["title"].is_string());
}

#[tokio::test]
async fn unsupported_content_types_are_refused() {
    let api = api().await;
    let (s, b) = api
        .send("PUT", "/meshes/default/meshtraces/t", Some(("text/html", TRACE)))
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
}

#[tokio::test]
async fn a_new_mesh_gets_an_allow_all_permission_unless_it_skips_it() {
    let api = api().await;
    let (s, b) = api
        .send(
            "GET",
            "/meshes/default/meshtrafficpermissions/allow-all-default",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["spec"]["from"][0]["default"]["action"], "Allow", "{b}");
    let (s, _) = api
        .yaml(
            "/meshes/bare",
            "type: Mesh\nname: bare\nskipCreatingInitialPolicies: ['*']\n",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, b) = api.send("GET", "/meshes/bare/meshtrafficpermissions", None).await;
    assert_eq!(b["total"], 0, "{b}");
    // Updating an existing mesh creates nothing more.
    let (s, _) = api
        .send(
            "DELETE",
            "/meshes/default/meshtrafficpermissions/allow-all-default",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .yaml(
            "/meshes/default",
            "type: Mesh\nname: default\nlabels: {team: a}\n",
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = api
        .send("GET", "/meshes/default/meshtrafficpermissions", None)
        .await;
    assert_eq!(b["total"], 0, "{b}");
}
