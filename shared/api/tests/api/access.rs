//! Who may do what: tokens and roles, a federated zone's and global's own kinds, and secrets.

use super::*;

#[tokio::test]
async fn who_may_do_what_and_every_refusal_is_counted() {
    let api = api().await;
    let reader = user_token(&api.tokens, "reader", &["team-a"]).await;
    let body = Some(("application/yaml", TRACE));
    // Anonymous, from no trusted host: reads pass, changes need a token.
    let (s, b) = api.send_with(None, "GET", "/meshes", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api
        .send_with(None, "PUT", "/meshes/default/meshtraces/t", body)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(
        b["title"].is_string() && !b["details"].as_str().unwrap_or("/").contains('/'),
        "no server path: {b}"
    );
    // A reader's token reads, and may not change anything.
    let (s, b) = api
        .send_with(Some(&reader), "PUT", "/meshes/default/meshtraces/t", body)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(b["details"].as_str().unwrap_or("").contains("reader"), "{b}");
    let (s, b) = api
        .send_with(
            Some(&reader),
            "POST",
            "/tokens/user",
            Some(("application/json", r#"{"name":"x"}"#)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // A bad token is refused even for reads.
    let (s, b) = api.send_with(Some("garbage"), "GET", "/meshes", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    // Token requests are validated like any body, and answer errors the same way.
    for (bad, field) in [
        (r#"{"groups":["a"]}"#, ""),
        (r#"{"name":"x","bogus":1}"#, "bogus"),
        (r#"{"name":"x","validFor":"forever"}"#, "validFor"),
        (r#"{"name":"x","name":"y"}"#, ""),
        ("not json", ""),
    ] {
        let (s, b) = api
            .send("POST", "/tokens/user", Some(("application/json", bad)))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert!(b["title"].is_string() && b["causes"].is_array(), "{bad}: {b}");
        assert_eq!(b["causes"][0]["field"], field, "{bad}: {b}");
    }
    let (s, b) = api
        .send(
            "POST",
            "/tokens/user",
            Some(("application/json", r#"{"name":"bob","validFor":"1h"}"#)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Revoked: refused from then on.
    let (s, b) = api
        .send(
            "POST",
            "/tokens/revocations",
            Some(("application/json", &format!(r#"{{"token":"{reader}"}}"#))),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = api.send_with(Some(&reader), "GET", "/meshes", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(b["details"].as_str().unwrap_or("").contains("revoked"), "{b}");
    let (_, b) = api.send("GET", "/metrics", None).await;
    let text = b.as_str().unwrap_or_default();
    for status in ["401", "403"] {
        assert!(
            text.contains(&format!("status=\"{status}\"")),
            "{status} counted: {text}"
        );
    }
}

#[tokio::test]
async fn a_federated_zone_takes_only_its_own_kinds_on_its_api() {
    let api = api_as("zone", Some("grpc://global:5685")).await;
    let before = api.revision().await;
    let (s, b) = api.yaml("/meshes/default/meshtraces/t", TRACE).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["details"]
            .as_str()
            .is_some_and(|d| d.contains("grpc://global:5685")),
        "{b}"
    );
    let (s, _) = api.send("DELETE", "/meshes/default", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(api.revision().await, before);
    let dp =
        "networking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: demo}\n";
    let (s, b) = api.yaml("/meshes/default/dataplanes/dp-1", dp).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = api
        .yaml(
            "/zoneingresses/ingress",
            "type: ZoneIngress\nname: ingress\nnetworking: {address: 127.0.0.1, port: 10001}\n",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = api.send("GET", "/zoneingresses", None).await;
    assert_eq!((s, b["total"].as_u64()), (StatusCode::OK, Some(1)), "{b}");

    // What another zone reported arrives by sync only.
    let before = api.revision().await;
    let remote = format!("labels: {{kuma.io/zone: zone-2}}\n{dp}");
    let (s, b) = api.yaml("/meshes/default/dataplanes/zone-2.dp-1", &remote).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["details"]
            .as_str()
            .is_some_and(|d| d.contains("reported by zone \"zone-2\"")),
        "{b}"
    );
    let (s, _) = api
        .send("DELETE", "/meshes/default/dataplanes/zone-2.dp-1", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(api.revision().await, before);
}

#[tokio::test]
async fn global_leaves_zone_inventory_to_the_zones() {
    let api = api().await;
    let before = api.revision().await;
    let dp =
        "networking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags: {kuma.io/service: demo}\n";
    let (s, b) = api.yaml("/meshes/default/dataplanes/dp-1", dp).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["details"]
            .as_str()
            .is_some_and(|d| d.contains("zone's control plane")),
        "{b}"
    );
    let (s, b) = api
        .yaml(
            "/zoneingresses/ingress",
            "type: ZoneIngress\nname: ingress\nnetworking: {address: 127.0.0.1, port: 10001}\n",
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(api.revision().await, before);
    let (s, b) = api.send("GET", "/zoneingresses", None).await;
    assert_eq!((s, b["total"].as_u64()), (StatusCode::OK, Some(0)), "{b}");
    let (s, b) = api.send("GET", "/meshtraces/t", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert!(
        b["details"].as_str().is_some_and(|d| d.contains("zoneingresses")),
        "{b}"
    );
}

#[tokio::test]
async fn secret_values_are_shown_only_to_admins() {
    let api = api().await;
    let reader = user_token(&api.tokens, "reader", &["team-a"]).await;
    let (s, b) = api.yaml("/meshes/default/meshtraces/t", TRACE).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let key = |b: &Value| b["spec"]["backends"][0]["conf"]["headers"]["x-api-key"].clone();
    let (_, b) = api.send("GET", "/meshes/default/meshtraces/t", None).await;
    assert_eq!(key(&b), "secret-ish", "the admin reads it");
    for token in [None, Some(reader.as_str())] {
        let (s, b) = api
            .send_with(token, "GET", "/meshes/default/meshtraces/t", None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(key(&b), "<redacted>", "{b}");
        let (_, b) = api
            .send_with(token, "GET", "/meshes/default/meshtraces", None)
            .await;
        assert_eq!(key(&b["items"][0]), "<redacted>", "{b}");
        assert!(!b.to_string().contains("secret-ish"), "{b}");
    }

    // Kuma's Secret and GlobalSecret: only admins read or list them at all.
    let (s, b) = api
        .yaml(
            "/meshes/default/secrets/honeycomb",
            "type: Secret\nname: honeycomb\nmesh: default\ndata: a2V5\n",
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = api
        .yaml("/global-secrets/g", "type: GlobalSecret\nname: g\ndata: a2V5\n")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    for path in [
        "/meshes/default/secrets/honeycomb",
        "/meshes/default/secrets",
        "/secrets",
        "/global-secrets/g",
        "/global-secrets",
    ] {
        let (s, b) = api.send("GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        assert!(b.to_string().contains("a2V5"), "{path}: {b}");
        for token in [None, Some(reader.as_str())] {
            let (s, b) = api.send_with(token, "GET", path, None).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {b}");
            assert!(!b.to_string().contains("a2V5"), "{path}: {b}");
        }
    }
    // A MeshTrace header may name a Secret instead of holding the key.
    let by_name = "spec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: collector:4317\n      headers:\n        x-api-key: {secret: honeycomb}\n";
    let (s, b) = api.yaml("/meshes/default/meshtraces/by-name", by_name).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (_, b) = api
        .send_with(None, "GET", "/meshes/default/meshtraces/by-name", None)
        .await;
    assert_eq!(key(&b), json!({"secret": "honeycomb"}), "{b}");
}
