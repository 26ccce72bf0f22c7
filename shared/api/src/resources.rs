//! CRUD on resources, on Kuma's paths:
//! `/meshes/{mesh}`, `/meshes/{mesh}/{plural}[/{name}]`, and `/{plural}` across meshes.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_model::{
    FieldError, Kind, ResourceError, ResourceKey, Scope, Submission, from_value, parse_documents,
};
use serde_json::{Value, json};

use super::ApiState;
use super::body;
use super::error::ApiError;
use meridian_store::{DeleteOptions, Page, PutOutcome};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub(crate) fn mesh_kind(plural: &str) -> Result<Kind, ApiError> {
    kind_where(plural, |k| k.scope() == Scope::Mesh)
}

/// A kind that lives beside meshes (other than Mesh, which has `/meshes`).
fn global_kind(plural: &str) -> Result<Kind, ApiError> {
    kind_where(plural, |k| k.scope() == Scope::Global && k != Kind::Mesh)
}

fn kind_where(plural: &str, wanted: impl Fn(Kind) -> bool) -> Result<Kind, ApiError> {
    match Kind::from_plural(plural) {
        Some(kind) if wanted(kind) => Ok(kind),
        _ => {
            let known: Vec<&str> = Kind::ALL
                .iter()
                .filter(|k| wanted(**k))
                .map(|k| k.plural())
                .collect();
            Err(ApiError::not_found(format!(
                "unknown resource type {plural:?}: expected one of {}",
                known.join(", ")
            )))
        }
    }
}

pub(crate) fn parse_page(query: &HashMap<String, String>) -> Result<Page, ApiError> {
    let size = match query.get("size") {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_field(
                    "size",
                    format!("must be an integer from 1 to {MAX_PAGE}"),
                ));
            }
        },
    };
    let offset = match query.get("offset") {
        None => 0,
        Some(s) if s.is_empty() => 0,
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| {
                ApiError::bad_field("offset", format!("must be an integer from 0 to {}", i64::MAX))
            })?,
    };
    Ok(Page { size, offset })
}

/// `GET /meshes/{mesh}/{plural}`, `GET /meshes`, `GET /{plural}`.
async fn list(
    state: &ApiState,
    path: &str,
    kind: Kind,
    mesh: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let page = parse_page(query)?;
    let admin = readable(kind)?;
    state.store.read_barrier().await?;
    if let Some(mesh) = mesh {
        let key = ResourceKey::new(Kind::Mesh, "", mesh);
        plausible(&key)?;
        state.store.get(&key).await?;
    }
    let listed = state.store.list(kind, mesh, page).await?;
    let shown = page.offset + listed.items.len() as u64;
    // Relative: the request's Host header is the client's to choose, so it is not echoed.
    let next = (shown < listed.total).then(|| format!("{path}?size={}&offset={shown}", page.size));
    let items: Vec<Value> = listed.items.into_iter().map(|s| as_seen(s, admin)).collect();
    Ok(Json(json!({ "total": listed.total, "items": items, "next": next })).into_response())
}

pub async fn list_meshes(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    list(&state, "/meshes", Kind::Mesh, None, &query).await
}

pub async fn list_in_mesh(
    State(state): State<ApiState>,
    Path((mesh, plural)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let kind = mesh_kind(&plural)?;
    list(
        &state,
        &format!("/meshes/{mesh}/{plural}"),
        kind,
        Some(&mesh),
        &query,
    )
    .await
}

pub async fn list_all_meshes(
    State(state): State<ApiState>,
    Path(plural): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let kind = kind_where(&plural, |k| k != Kind::Mesh)?;
    list(&state, &format!("/{plural}"), kind, None, &query).await
}

/// Refuses a key whose mesh or name no resource could have (what a client put in a path),
/// before the store sees it.
pub(crate) fn plausible(key: &ResourceKey) -> Result<(), ApiError> {
    let ok = |s: &str| meridian_model::validate::dns1123_subdomain(s).is_ok();
    if ok(&key.name) && (key.mesh.is_empty() || ok(&key.mesh)) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no {} by that name: names are DNS-1123 labels",
            key.kind
        )))
    }
}

async fn get(state: &ApiState, key: ResourceKey) -> Result<Response, ApiError> {
    plausible(&key)?;
    let admin = readable(key.kind)?;
    state.store.read_barrier().await?;
    let stored = state.store.get(&key).await?;
    Ok(Json(as_seen(stored, admin)).into_response())
}

/// Whether the caller may read `kind`, and whether as an admin (who sees secret values).
/// Secrets are an admin's alone, as in Kuma: anyone else is refused, not shown them redacted.
fn readable(kind: Kind) -> Result<bool, ApiError> {
    let caller = crate::auth::caller();
    let admin = caller.is_admin();
    if kind.is_secret() && !admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("only admins may read {kind} resources"),
        ));
    }
    Ok(admin)
}

/// A resource as its reader may see it: with secret values, for an admin only.
fn as_seen(mut stored: meridian_model::Stored, admin: bool) -> Value {
    if !admin {
        stored.resource = stored.resource.redacted();
    }
    stored.to_universal()
}

pub async fn get_mesh(State(state): State<ApiState>, Path(mesh): Path<String>) -> Result<Response, ApiError> {
    get(&state, ResourceKey::new(Kind::Mesh, "", mesh)).await
}

pub async fn get_resource(
    State(state): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    get(&state, ResourceKey::new(mesh_kind(&plural)?, mesh, name)).await
}

/// Fills `type`, `name` and `mesh` from the path when a universal-form body leaves them out,
/// as Kuma's API allows.
fn fill_from_path(doc: &mut Value, key: &ResourceKey) {
    if let Value::Object(obj) = doc {
        if obj.contains_key("apiVersion") || obj.contains_key("kind") {
            return;
        }
        obj.entry("type").or_insert_with(|| key.kind.name().into());
        obj.entry("name").or_insert_with(|| key.name.clone().into());
        if key.kind.scope() == Scope::Mesh {
            obj.entry("mesh").or_insert_with(|| key.mesh.clone().into());
        }
    }
}

/// Refuses a body that names another resource than its path.
fn check_matches_path(submission: &Submission, key: &ResourceKey) -> Result<(), ApiError> {
    let r = &submission.resource;
    let mut causes = Vec::new();
    if r.kind() != key.kind {
        causes.push(FieldError::new(
            "type",
            format!("is {}, but the path is for {}", r.kind(), key.kind.plural()),
        ));
    }
    if r.name != key.name {
        causes.push(FieldError::new(
            "name",
            format!("is {:?}, but the path names {:?}", r.name, key.name),
        ));
    }
    if r.mesh != key.mesh {
        causes.push(FieldError::new(
            "mesh",
            format!("is {:?}, but the path names {:?}", r.mesh, key.mesh),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ResourceError::Invalid(causes).into())
    }
}

/// Refuses writes that belong elsewhere: a zone's inventory on global, what a zone reported
/// anywhere but through the sync, and global's kinds on a federated zone.
fn check_writable(state: &ApiState, key: &ResourceKey) -> Result<(), ApiError> {
    let kind = key.kind;
    let forbidden = |details: String| Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden", details));
    if kind.zone_local() {
        return forbidden(format!(
            "{kind} are allocated by each zone's control plane for its transparent proxies; they can be read, not written"
        ));
    }
    if kind.zone_owned()
        && let Some(zone) = key.synced_zone()
    {
        return forbidden(format!(
            "{kind} {:?} was reported by zone {zone:?} and is kept in step by the sync; change it on that zone",
            key.name
        ));
    }
    if state.role == "global" && kind.zone_owned() {
        return forbidden(format!(
            "{kind} resources belong to zones: write them on the zone's control plane; global shows them as ZONE.NAME"
        ));
    }
    match &state.managed_by {
        Some(global) if !kind.zone_owned() => forbidden(format!(
            "this zone is federated: {kind} resources are managed on the global control plane ({global}); write them there"
        )),
        _ => Ok(()),
    }
}

async fn put(
    state: &ApiState,
    key: ResourceKey,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_writable(state, &key)?;
    let (text, format) = body::read(headers, body).await?;
    // Parsing and validating a body of up to 1 MiB is CPU work: off the async workers, so a
    // few large bodies cannot stall every other request.
    let path_key = key.clone();
    let submission = tokio::task::spawn_blocking(move || {
        let mut docs = parse_documents(&text, format)?;
        if docs.len() != 1 {
            return Err(ApiError::bad_field(
                "",
                format!("expected one resource in the body, found {}", docs.len()),
            ));
        }
        let mut doc = docs.remove(0);
        fill_from_path(&mut doc, &path_key);
        Ok(from_value(doc)?)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "parsing a body failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "parsing the body failed",
        )
    })??;
    check_matches_path(&submission, &key)?;
    crate::auth::may_change(
        &crate::auth::caller(),
        crate::auth::Change::Put(&submission.resource),
    )?;
    let mut span = meridian_otlp::exporter::Span::start(
        "store write",
        meridian_otlp::exporter::current(),
        meridian_otlp::exporter::INTERNAL,
    );
    // Whoever sends this change on (the sync to zones, the push to proxies) continues the
    // trace from here: the store keeps it with the write.
    let mut submission = submission;
    submission.trace = span.is_live().then(|| span.context());
    let warnings = submission.resource.warnings();
    let outcome = meridian_store::put_with_defaults(&*state.store, submission).await?;
    span.set("revision", outcome.stored().revision);
    span.set("resource", &key);
    drop(span);
    let status = match outcome {
        PutOutcome::Created(_) => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let stored = outcome.stored();
    tracing::info!(kind = %key.kind, mesh = %key.mesh, name = %key.name, result = outcome.word(), revision = stored.revision, "resource written");
    let body = json!({
        "result": outcome.word(),
        "version": stored.version,
        "revision": stored.revision,
        "warnings": warnings,
    });
    Ok((status, Json(body)).into_response())
}

pub async fn put_mesh(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    put(&state, ResourceKey::new(Kind::Mesh, "", mesh), &headers, body).await
}

pub async fn get_global(
    State(state): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    get(&state, ResourceKey::new(global_kind(&plural)?, "", name)).await
}

pub async fn put_global(
    State(state): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    put(
        &state,
        ResourceKey::new(global_kind(&plural)?, "", name),
        &headers,
        body,
    )
    .await
}

pub async fn delete_global(
    State(state): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    delete(&state, ResourceKey::new(global_kind(&plural)?, "", name), &query).await
}

pub async fn put_resource(
    State(state): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    put(
        &state,
        ResourceKey::new(mesh_kind(&plural)?, mesh, name),
        &headers,
        body,
    )
    .await
}

fn parse_bool(query: &HashMap<String, String>, field: &str) -> Result<bool, ApiError> {
    match query.get(field).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(_) => Err(ApiError::bad_field(field, "must be true or false")),
    }
}

fn parse_version(query: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    query
        .get("version")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_field("version", "must be an integer"))
        })
        .transpose()
}

async fn delete(
    state: &ApiState,
    key: ResourceKey,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    plausible(&key)?;
    check_writable(state, &key)?;
    crate::auth::may_change(&crate::auth::caller(), crate::auth::Change::Delete(&key))?;
    let mut span = meridian_otlp::exporter::Span::start(
        "store delete",
        meridian_otlp::exporter::current(),
        meridian_otlp::exporter::INTERNAL,
    );
    let options = DeleteOptions {
        cascade: parse_bool(query, "cascade")?,
        expected_version: parse_version(query)?,
        trace: span.is_live().then(|| span.context()),
    };
    let revision = state.store.delete(&key, options).await?;
    span.set("revision", revision);
    span.set("resource", &key);
    drop(span);
    tracing::info!(kind = %key.kind, mesh = %key.mesh, name = %key.name, revision, "resource deleted");
    Ok(Json(json!({ "revision": revision })).into_response())
}

pub async fn delete_mesh(
    State(state): State<ApiState>,
    Path(mesh): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    delete(&state, ResourceKey::new(Kind::Mesh, "", mesh), &query).await
}

pub async fn delete_resource(
    State(state): State<ApiState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    delete(&state, ResourceKey::new(mesh_kind(&plural)?, mesh, name), &query).await
}
