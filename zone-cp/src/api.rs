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
pub fn raft_routes(node: std::sync::Arc<crate::raft::Node>) -> Router {
    async fn status(State(node): State<std::sync::Arc<crate::raft::Node>>) -> Json<Value> {
        Json(node.status().await)
    }
    Router::new().route("/raft", get(status)).with_state(node)
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
    })))
}
