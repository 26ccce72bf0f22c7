//! The REST API (Kuma's paths), on axum.
//!
//! ```text
//!   /meshes[/{mesh}]                      Mesh CRUD
//!   /meshes/{mesh}/{plural}[/{name}]      mesh-scoped CRUD (meshtraces, dataplanes, ...)
//!   /{plural}                             a kind across all meshes
//!   .../dataplanes/{name}/_rules, .../{name}/_resources/dataplanes, /meshes/{mesh}/_traffic
//!                                         asking why (see `inspect`)
//!   /healthz  /metrics  /openapi.json  /
//! ```

#![forbid(unsafe_code)]

pub mod auth;
mod body;
pub mod ca;
mod error;
mod inspect;
pub mod metrics;
pub mod openapi;
mod resources;
pub mod serve;
pub mod token_api;
pub mod tokens;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub use error::{ApiError, ErrorBody, grpc_code, grpc_status, http_status};

use meridian_store::Store;

use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Which control plane serves this API (`global`, `zone`), shown on `/`.
    pub role: &'static str,
    /// On a federated zone: the global control plane that owns every kind but the zone's own
    /// (Dataplanes, ZoneIngresses); those kinds are then read-only here.
    pub managed_by: Option<String>,
}

/// The resource routes alone, acting as the node itself (for tests of the handlers).
pub fn router(state: ApiState) -> Router {
    use resources::*;
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/meshes", get(list_meshes))
        .route("/meshes/{mesh}", get(get_mesh).put(put_mesh).delete(delete_mesh))
        .route("/meshes/{mesh}/{plural}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/{plural}/{name}",
            get(get_resource).put(put_resource).delete(delete_resource),
        )
        .route("/meshes/{mesh}/dataplanes/{name}/_rules", get(inspect::rules))
        .route(
            "/meshes/{mesh}/{plural}/{name}/_resources/dataplanes",
            get(inspect::affected_dataplanes),
        )
        .route("/meshes/{mesh}/_traffic", get(inspect::traffic))
        .route("/{plural}", get(list_all_meshes))
        .route(
            "/{plural}/{name}",
            get(get_global).put(put_global).delete(delete_global),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// What a proxy speaks on the zone's dataplane port (beside xDS): registering, reporting
/// readiness and deregistering its own Dataplane or ZoneIngress. Authorized as on the REST
/// API, so a dataplane token may change only the proxy it names.
pub fn proxy_app(state: ApiState, auth: auth::Auth) -> Router {
    use resources::*;
    let metrics = state.metrics.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/meshes/{mesh}/{plural}/{name}",
            get(get_resource).put(put_resource).delete(delete_resource),
        )
        .route(
            "/{plural}/{name}",
            get(get_global).put(put_global).delete(delete_global),
        )
        .layer(middleware::from_fn(only_proxies))
        .fallback(|request: Request| async move { not_a_proxy_path(request.uri().path()) })
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(auth, auth::authorize))
        .layer(middleware::from_fn_with_state(metrics, observe))
        .layer(middleware::from_fn(peer_from_tonic))
}

/// tonic records the peer as its own `TcpConnectInfo`; authorization reads axum's.
async fn peer_from_tonic(mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|c| c.remote_addr());
    if let Some(peer) = peer {
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    }
    next.run(request).await
}

/// The dataplane port serves the proxies' own kinds only.
async fn only_proxies(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let proxy_kind = matches!(
        segments.as_slice(),
        ["healthz"] | ["meshes", _, "dataplanes", _] | ["zoneingresses", _]
    );
    if proxy_kind {
        return next.run(request).await;
    }
    not_a_proxy_path(path).into_response()
}

fn not_a_proxy_path(path: &str) -> ApiError {
    ApiError::not_found(format!(
        "{path}: the dataplane port serves only /meshes/{{mesh}}/dataplanes/{{name}} and \
         /zoneingresses/{{name}}; use the REST API (port 5681) for the rest"
    ))
}

/// The API as served: the resource routes, `extra` (a control plane's own routes), the token
/// routes for the kinds it `issues`, each request authorized, counted and traced. Refusals
/// (401, 403) are counted like any answer.
pub fn app(state: ApiState, auth: auth::Auth, issues: &[tokens::TokenKind], extra: Router) -> Router {
    let metrics = state.metrics.clone();
    router(state)
        .merge(extra)
        .merge(token_api::routes(auth.tokens.clone(), issues))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(auth, auth::authorize))
        .layer(middleware::from_fn_with_state(metrics, observe))
        .layer(middleware::from_fn(trace_request))
}

/// A server span per request when the control plane exports its spans, continuing the
/// caller's trace (`traceparent`, as meshctl sends it); handlers see it as the current span.
async fn trace_request(request: Request, next: Next) -> Response {
    use meridian_otlp::exporter::{SERVER, Span, SpanContext, enabled, in_span};
    if !enabled() {
        return next.run(request).await;
    }
    let parent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(SpanContext::parse);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let mut span = Span::start(format!("{} {route}", request.method()), parent, SERVER);
    span.set("http.method", request.method());
    span.set("http.target", request.uri().path());
    let response = in_span(span.context(), next.run(request)).await;
    span.set("http.status_code", response.status().as_u16());
    response
}

/// Every error answer is `{title, details, causes}`, those of axum's extractors included
/// (which answer plain text on a malformed path or query).
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let title = status.canonical_reason().unwrap_or("Error");
    let details = String::from_utf8_lossy(&text).trim().to_owned();
    let mut fixed = ApiError::new(
        status,
        title,
        if details.is_empty() {
            title.to_owned()
        } else {
            details
        },
    )
    .into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

async fn observe(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

async fn index(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({
        "product": "Meridian",
        "version": env!("CARGO_PKG_VERSION"),
        "role": state.role,
    }))
}

async fn healthz(State(state): State<ApiState>) -> Result<&'static str, ApiError> {
    state.store.ping().await?;
    Ok("ok\n")
}

async fn metrics(State(state): State<ApiState>) -> Response {
    if let Ok(revision) = state.store.revision().await {
        state.metrics.store_revision.set(revision);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

async fn openapi_json(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(openapi::document(openapi::Role::from_name(state.role)))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no such path: {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
