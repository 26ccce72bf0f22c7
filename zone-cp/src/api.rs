//! The zone's REST API: the shared resource API plus what only a zone knows, the config it
//! generated for each proxy and how the proxy took it.

use std::time::SystemTime;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use meridian_api::ApiError;
use meridian_model::rfc3339;
use serde_json::{Map, Value, json};

use crate::xds::cache::{CLUSTER, ENDPOINT, LISTENER, ProxyId, ROUTE, SnapshotCache};
use crate::xds::describe::describe;

pub fn routes(cache: SnapshotCache) -> Router {
    Router::new()
        .route("/meshes/{mesh}/dataplanes/{name}/_config", get(config))
        .with_state(cache)
}

/// `GET /raft`: this node's role, term, leader, indexes and members.
/// `POST /raft/members` (`{"id": N, "address": "HOST:PORT"}`) adds a voting member;
/// `DELETE /raft/members/{id}` removes one. Replacing a node is adding the new one, then
/// removing the old. Any node takes these and hands them to the leader.
pub fn raft_routes(node: std::sync::Arc<crate::raft::Node>) -> Router {
    use axum::http::StatusCode;
    use axum::routing::{delete, post};

    use crate::raft::leader::LeadError;

    type NodeState = State<std::sync::Arc<crate::raft::Node>>;
    async fn status(State(node): NodeState) -> Json<Value> {
        Json(node.status().await)
    }
    fn refused(e: LeadError) -> ApiError {
        match e {
            LeadError::Refused(why) => ApiError::new(StatusCode::CONFLICT, "Membership change refused", why),
            LeadError::NotAMember(_) => ApiError::new(StatusCode::NOT_FOUND, "No such member", e.to_string()),
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", other.to_string()),
        }
    }
    async fn add(State(node): NodeState, Json(body): Json<Value>) -> Result<Json<Value>, ApiError> {
        let id = body["id"]
            .as_u64()
            .filter(|id| *id > 0)
            .ok_or_else(|| ApiError::bad_field("id", "must be a positive node id"))?;
        let address = body["address"]
            .as_str()
            .filter(|a| crate::args::is_host_port(a))
            .ok_or_else(|| ApiError::bad_field("address", "must be the node's Raft address, HOST:PORT"))?;
        node.add_member(id, address.to_owned()).await.map_err(refused)?;
        Ok(Json(node.status().await))
    }
    async fn remove(State(node): NodeState, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
        let id: u64 = id
            .parse()
            .map_err(|_| ApiError::bad_field("id", format!("{id:?} is not a node id")))?;
        node.remove_member(id).await.map_err(refused)?;
        Ok(Json(node.status().await))
    }
    Router::new()
        .route("/raft", get(status))
        .route("/raft/members", post(add))
        .route("/raft/members/{id}", delete(remove))
        .with_state(node)
}

fn time(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| rfc3339(d.as_millis() as i64).into())
}

fn short_type(type_url: &str) -> &str {
    match type_url {
        CLUSTER => "clusters",
        ENDPOINT => "endpoints",
        LISTENER => "listeners",
        ROUTE => "routes",
        other => other,
    }
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_config`: the generated config and the proxy's state.
async fn config(
    State(cache): State<SnapshotCache>,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = ProxyId::new(mesh, name);
    let (Some(snapshot), Some(status)) = (cache.snapshot(&id), cache.status(&id)) else {
        return Err(ApiError::not_found(format!(
            "no config for Dataplane {:?} in mesh {:?}: it is not registered",
            id.name, id.mesh
        )));
    };
    let mut resources = Map::new();
    for (type_url, items) in &snapshot.resources {
        let entries: Map<String, Value> = items
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    json!({ "version": r.version, "config": describe(&r.resource) }),
                )
            })
            .collect();
        resources.insert(short_type(type_url).to_owned(), Value::Object(entries));
    }
    let acked: Map<String, Value> = status
        .acked
        .iter()
        .map(|(t, v)| (short_type(t).to_owned(), Value::String(v.clone())))
        .collect();
    Ok(Json(json!({
        "proxy": id.node_id(),
        "connected": status.streams > 0,
        "connectedSince": time(status.connected_since),
        "disconnectedAt": time(status.disconnected_at),
        "acked": acked,
        "nacks": status.nacks,
        "lastNack": status.last_nack.map(|n| json!({ "type": short_type(&n.type_url), "message": n.message, "at": time(Some(n.at)) })),
        "resources": resources,
        "endpoints": endpoints(&snapshot),
    })))
}

/// Every cluster's endpoints as the proxy was told: address, zone, priority, weight, health.
fn endpoints(snapshot: &crate::xds::cache::Snapshot) -> Value {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use prost::Message;
    let mut out = Map::new();
    for (cluster, r) in snapshot
        .of_type(crate::xds::cache::ENDPOINT)
        .into_iter()
        .flatten()
    {
        let Ok(cla) = ClusterLoadAssignment::decode(r.resource.value.as_slice()) else {
            continue;
        };
        let mut rows = Vec::new();
        for locality in &cla.endpoints {
            let zone = locality
                .locality
                .as_ref()
                .map(|l| l.zone.clone())
                .unwrap_or_default();
            for e in &locality.lb_endpoints {
                let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                    continue;
                };
                let address = match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
                    Some(Kind::SocketAddress(s)) => match s.port_specifier {
                        Some(PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
                        _ => s.address.clone(),
                    },
                    _ => String::new(),
                };
                let health = if e.health_status == HealthStatus::Unhealthy as i32 {
                    "unhealthy"
                } else {
                    "healthy"
                };
                rows.push(json!({
                    "address": address,
                    "zone": zone,
                    "priority": locality.priority,
                    "weight": e.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                    "health": health,
                }));
            }
        }
        out.insert(cluster.clone(), Value::Array(rows));
    }
    Value::Object(out)
}
