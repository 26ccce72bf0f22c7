//! Asking why: what the mesh's policies come to for a proxy, which proxies a policy affects,
//! and whether one service may call another, and by which policy.
//!
//! ```text
//!   GET /meshes/{mesh}/dataplanes/{name}/_rules            Kuma's: resolved rules, each with its origin
//!   GET /meshes/{mesh}/{plural}/{name}/_resources/dataplanes   Kuma's: the proxies a policy selects
//!   GET /meshes/{mesh}/_traffic?from=A&to=B                 may A call B? decided by which policy
//! ```
//!
//! Everything is resolved from the store with `meridian_model::resolve`, the code the zone
//! generates Envoy config with, so the answer is what the proxies get. Readers who are not
//! admins see secret values redacted, as in every read.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use meridian_model::policies::dataplane::SERVICE_TAG;
use meridian_model::resolve::{MeshPolicies, ProxyView, Resolved, Source, affects};
use meridian_model::{Kind, Resource, ResourceKey, Scope, Spec};
use meridian_store::Page;
use serde::Serialize;
use serde_json::{Value, json};

use crate::resources::{mesh_kind, parse_page, plausible};
use crate::{ApiError, ApiState};

/// A mesh's resources, as the caller may see them: the Mesh itself first.
async fn mesh_resources(state: &ApiState, mesh: &str) -> Result<Vec<Resource>, ApiError> {
    let key = ResourceKey::new(Kind::Mesh, "", mesh);
    plausible(&key)?;
    let admin = crate::auth::caller().is_admin();
    let seen = |r: Resource| if admin { r } else { r.redacted() };
    let mut out = vec![seen(state.store.get(&key).await?.resource)];
    // Secrets are not policies: never loaded here.
    for kind in Kind::ALL
        .iter()
        .filter(|k| k.scope() == Scope::Mesh && !k.is_secret())
    {
        let mut offset = 0;
        loop {
            let page = state
                .store
                .list(*kind, Some(mesh), Page { size: 1000, offset })
                .await?;
            let n = page.items.len() as u64;
            out.extend(page.items.into_iter().map(|s| seen(s.resource)));
            offset += n;
            if n == 0 || offset >= page.total {
                break;
            }
        }
    }
    Ok(out)
}

fn policies_of(resources: &[Resource]) -> MeshPolicies {
    let mut policies = MeshPolicies::default();
    for r in resources {
        policies.add(r);
    }
    policies
}

fn mtls_on(resources: &[Resource]) -> bool {
    resources
        .iter()
        .any(|r| matches!(&r.spec, Spec::Mesh(m) if m.enabled_ca().is_some()))
}

fn view(r: &Resource) -> Option<ProxyView<'_>> {
    match &r.spec {
        Spec::Dataplane(dp) => Some(ProxyView {
            name: &r.name,
            labels: &r.labels,
            dataplane: dp,
        }),
        _ => None,
    }
}

/// Kuma's resource meta: what `origin` and `resource` entries name.
fn meta(kind: Kind, mesh: &str, name: &str) -> Value {
    json!({ "type": kind, "mesh": mesh, "name": name })
}

fn origin(mesh: &str, sources: &[Source]) -> Vec<Value> {
    sources.iter().map(|s| meta(s.kind, mesh, &s.name)).collect()
}

/// One `toRules` entry: traffic to `service`.
fn to_rule<T: Serialize>(mesh: &str, service: &str, resolved: &Resolved<T>) -> Value {
    json!({
        "matchers": [{ "key": SERVICE_TAG, "value": service, "not": false }],
        "conf": resolved.conf,
        "origin": origin(mesh, &resolved.origin),
    })
}

/// `fromRules` entries: for each inbound, its resolved conf of one kind (all clients).
fn from_rules<T: Serialize>(
    mesh: &str,
    inbounds: &[meridian_model::resolve::InboundPolicy],
    conf: impl Fn(&meridian_model::resolve::InboundPolicy) -> Option<&Resolved<T>>,
) -> Vec<Value> {
    inbounds
        .iter()
        .filter_map(|i| {
            let r = conf(i)?;
            Some(json!({
                "inbound": { "port": i.port, "tags": i.tags },
                "rules": [{ "conf": r.conf, "origin": origin(mesh, &r.origin) }],
            }))
        })
        .collect()
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_rules`: per policy kind, the rules that apply to
/// the proxy (`toRules` per destination service, `fromRules` per inbound, `proxyRule`), each
/// with the policies it came from (`origin`, in merge order: the last won).
pub async fn rules(
    State(state): State<ApiState>,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = ResourceKey::new(Kind::Dataplane, &mesh, &name);
    plausible(&key)?;
    let resources = mesh_resources(&state, &mesh).await?;
    let dp = resources
        .iter()
        .find(|r| r.kind() == Kind::Dataplane && r.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no Dataplane {name:?} in mesh {mesh:?}")))?;
    let proxy = view(dp).expect("a Dataplane");
    let resolved = policies_of(&resources).for_proxy(&proxy);
    let mut by_kind: BTreeMap<&'static str, Value> = BTreeMap::new();
    let mut to = |kind: Kind, rule: Value| {
        let entry = by_kind.entry(kind.name()).or_insert_with(
            || json!({ "type": kind, "toRules": [], "fromRules": [], "proxyRule": null, "warnings": [] }),
        );
        if let Some(list) = entry["toRules"].as_array_mut() {
            list.push(rule);
        }
    };
    let (mut route_warnings, mut tcp_warnings) = (Vec::new(), Vec::new());
    let speaks_http = |service: &str| {
        resources.iter().any(|r| match &r.spec {
            Spec::Dataplane(dp) => dp.networking.inbound.iter().flatten().any(|i| {
                i.tags.get(SERVICE_TAG).is_some_and(|s| s == service)
                    && meridian_model::policies::dataplane::speaks_http(&i.tags)
            }),
            _ => false,
        })
    };
    for (service, o) in &resolved.outbounds {
        if let Some(r) = &o.timeout {
            to(Kind::MeshTimeout, to_rule(&mesh, service, r));
        }
        if let Some(r) = &o.retry {
            to(Kind::MeshRetry, to_rule(&mesh, service, r));
        }
        if let Some(r) = &o.load_balancing {
            to(Kind::MeshLoadBalancingStrategy, to_rule(&mesh, service, r));
        }
        if let Some(r) = &o.circuit_breaker {
            to(Kind::MeshCircuitBreaker, to_rule(&mesh, service, r));
        }
        if let Some(r) = &o.health_check {
            to(Kind::MeshHealthCheck, to_rule(&mesh, service, r));
        }
        if let Some(r) = &o.tcp_route {
            to(Kind::MeshTCPRoute, to_rule(&mesh, service, r));
            // Only HTTP traffic takes the MeshHTTPRoute; TCP traffic keeps the MeshTCPRoute.
            if o.http_routes.is_some() && speaks_http(service) {
                tcp_warnings.push(json!(format!(
                    "{service}: a MeshHTTPRoute routes this traffic, so the MeshTCPRoute is left out"
                )));
            }
        }
        if let Some(routes) = &o.http_routes {
            // The routes in the order Envoy tries them, each with its own origin.
            let mut sources: Vec<Source> = routes.routes.iter().flat_map(|r| r.origin.clone()).collect();
            sources.sort();
            sources.dedup();
            let list: Vec<Value> = routes
                .routes
                .iter()
                .map(|r| json!({ "match": r.matches, "conf": r.conf, "origin": origin(&mesh, &r.origin) }))
                .collect();
            to(
                Kind::MeshHTTPRoute,
                json!({
                    "matchers": [{ "key": SERVICE_TAG, "value": service, "not": false }],
                    "conf": { "routes": list },
                    "origin": origin(&mesh, &sources),
                }),
            );
            route_warnings.extend(
                routes
                    .warnings
                    .iter()
                    .map(|text| json!(format!("{service}: {text}"))),
            );
        }
    }
    if let Some(entry) = by_kind.get_mut(Kind::MeshHTTPRoute.name()) {
        entry["warnings"] = Value::Array(route_warnings);
    }
    if let Some(entry) = by_kind.get_mut(Kind::MeshTCPRoute.name()) {
        entry["warnings"] = Value::Array(tcp_warnings);
    }
    for (kind, rules) in [
        (
            Kind::MeshTimeout,
            from_rules(&mesh, &resolved.inbounds, |i| i.timeout.as_ref()),
        ),
        (
            Kind::MeshCircuitBreaker,
            from_rules(&mesh, &resolved.inbounds, |i| i.circuit_breaker.as_ref()),
        ),
        (
            Kind::MeshFaultInjection,
            from_rules(&mesh, &resolved.inbounds, |i| i.fault_injection.as_ref()),
        ),
        (
            Kind::MeshRateLimit,
            from_rules(&mesh, &resolved.inbounds, |i| i.rate_limit.as_ref()),
        ),
        (
            Kind::MeshTLS,
            from_rules(&mesh, &resolved.inbounds, |i| i.tls.as_ref()),
        ),
    ] {
        if !rules.is_empty() {
            let entry = by_kind.entry(kind.name()).or_insert_with(
                || json!({ "type": kind, "toRules": [], "fromRules": [], "proxyRule": null, "warnings": [] }),
            );
            entry["fromRules"] = Value::Array(rules);
        }
    }
    let mtls = mtls_on(&resources);
    let from_rules: Vec<Value> = resolved
        .inbounds
        .iter()
        .map(|i| {
            json!({
                "inbound": { "port": i.port, "tags": i.tags },
                "rules": [{
                    "conf": { "allow": i.access.allow, "deny": i.access.deny },
                    "origin": origin(&mesh, &i.access.origin),
                }],
            })
        })
        .collect();
    if !from_rules.is_empty() {
        let warnings: Vec<&str> = if mtls {
            Vec::new()
        } else {
            vec!["mTLS is off in this mesh: permissions are not enforced, every client gets in"]
        };
        by_kind.insert(
            Kind::MeshTrafficPermission.name(),
            json!({ "type": Kind::MeshTrafficPermission, "toRules": [], "fromRules": from_rules, "proxyRule": null, "warnings": warnings }),
        );
    }
    if let Some(t) = &resolved.trace {
        by_kind.insert(
            Kind::MeshTrace.name(),
            json!({
                "type": Kind::MeshTrace, "toRules": [], "fromRules": [], "warnings": [],
                "proxyRule": { "conf": t.conf, "origin": origin(&mesh, &t.origin) },
            }),
        );
    }
    Ok(Json(json!({
        "resource": { "type": Kind::Dataplane, "mesh": mesh, "name": name, "labels": dp.labels },
        "rules": by_kind.into_values().collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /meshes/{mesh}/{plural}/{name}/_resources/dataplanes`: the proxies a policy selects,
/// paged like a list (`size`, `offset`; `next` is relative).
pub async fn affected_dataplanes(
    State(state): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let kind = mesh_kind(&plural)?;
    let page = parse_page(&query)?;
    let key = ResourceKey::new(kind, &mesh, &name);
    plausible(&key)?;
    let policy = state.store.get(&key).await?.resource;
    let resources = mesh_resources(&state, &mesh).await?;
    let mut selected = Vec::new();
    for r in &resources {
        let Some(proxy) = view(r) else { continue };
        match affects(&policy.spec, &proxy) {
            Some(true) => selected.push(r),
            Some(false) => {}
            None => {
                return Err(ApiError::bad_field(
                    "",
                    format!("{kind} is not a policy: it selects no proxies"),
                ));
            }
        }
    }
    let total = selected.len() as u64;
    let items: Vec<Value> = selected
        .iter()
        .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
        .take(page.size as usize)
        .map(|r| json!({ "type": Kind::Dataplane, "mesh": mesh, "name": r.name, "labels": r.labels }))
        .collect();
    let shown = page.offset.saturating_add(items.len() as u64);
    let next = (shown < total).then(|| {
        format!(
            "/meshes/{mesh}/{plural}/{name}/_resources/dataplanes?size={}&offset={shown}",
            page.size
        )
    });
    Ok(Json(json!({ "total": total, "items": items, "next": next })).into_response())
}

/// `GET /meshes/{mesh}/_traffic?from=A&to=B`: whether service A may call service B, for each
/// inbound of B, and the policy that decides it.
pub async fn traffic(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let service = |field: &str| -> Result<String, ApiError> {
        match query.get(field).map(|s| s.trim()) {
            Some(s) if !s.is_empty() && s.len() <= 253 => Ok(s.to_owned()),
            _ => Err(ApiError::bad_field(
                field,
                "must be a service name (the kuma.io/service tag)",
            )),
        }
    };
    let (from, to) = (service("from")?, service("to")?);
    let resources = mesh_resources(&state, &mesh).await?;
    let policies = policies_of(&resources);
    let mut destinations = Vec::new();
    for r in &resources {
        let Some(proxy) = view(r) else { continue };
        for inbound in proxy.dataplane.networking.inbound.iter().flatten() {
            if inbound.tags.get(SERVICE_TAG) != Some(&to) {
                continue;
            }
            let decision = policies.permissions(&proxy, inbound).decide_for(&mesh, &from);
            destinations.push(json!({
                "dataplane": r.name,
                "port": inbound.port,
                "allowed": decision.allowed,
                "policy": decision.by.map(|s| meta(s.kind, &mesh, &s.name)),
                "reason": decision.reason,
            }));
        }
    }
    if destinations.is_empty() {
        return Err(ApiError::not_found(format!(
            "no Dataplane in mesh {mesh:?} has an inbound tagged {SERVICE_TAG}={to}"
        )));
    }
    let enforced = mtls_on(&resources);
    let allowed = !enforced || destinations.iter().all(|d| d["allowed"] == true);
    Ok(Json(json!({
        "from": from,
        "to": to,
        "mesh": mesh,
        "allowed": allowed,
        "enforced": enforced,
        "note": if enforced { Value::Null } else { json!("mTLS is off in this mesh: permissions are not enforced, every call gets through") },
        "destinations": destinations,
    }))
    .into_response())
}
