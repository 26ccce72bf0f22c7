//! The OpenAPI documents of global-cp and zone-cp, generated from the kind registry, the spec
//! types' schemas and the request types of the token routes, so they cannot drift from the
//! code. Copies are kept at `docs/openapi.json` (global) and `docs/openapi-zone.json`; a test
//! fails when they differ (regenerate with `UPDATE_OPENAPI=1 cargo test -p meridian-api
//! openapi`). The test command also runs schemathesis against a started global-cp.

use meridian_model::{FieldError, Kind, Scope};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

mod inspect;
mod tokens;

use inspect::inspect_paths;
use tokens::token_paths;

/// Which control plane a document describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Global,
    Zone,
}

impl Role {
    pub fn from_name(role: &str) -> Self {
        if role == "zone" { Self::Zone } else { Self::Global }
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn text_content() -> Value {
    json!({ "text/plain": { "schema": { "type": "string" } } })
}

/// Error answers, `{title, details, causes}`, by status.
fn errors(codes: &[u16]) -> Map<String, Value> {
    codes
        .iter()
        .map(|code| {
            let description = match code {
                400 => "Invalid request or resource; `causes` names each field at fault",
                401 => "No valid token: missing where one is needed, or invalid, expired or revoked",
                403 => "The token's holder may not do this (changes need mesh-system:admin; secrets are an admin's)",
                404 => "Not found (the resource, its mesh, or the resource type)",
                405 => "Method not allowed on this path",
                408 => "The body did not arrive in time",
                409 => "Conflict: a stale version, or a mesh that still holds resources",
                413 => "Body too large",
                415 => "Content-Type is neither JSON nor YAML",
                _ => "Unavailable (the store, or a zone's Raft leader)",
            };
            (
                code.to_string(),
                json!({ "description": description, "content": json_content(schema_ref("Error")) }),
            )
        })
        .collect()
}

fn param(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": location, "required": location == "path", "description": description, "schema": schema })
}

/// Reads need no token; a token, if sent, must be valid.
fn read_security() -> Value {
    json!([{}, { "bearer": [] }])
}

/// Changes need an admin's token (or the trusted host itself).
fn write_security() -> Value {
    json!([{ "bearer": [] }])
}

fn op(summary: &str, tag: &str, security: Value, params: Vec<Value>, responses: Map<String, Value>) -> Value {
    json!({ "summary": summary, "tags": [tag], "security": security, "parameters": params, "responses": responses })
}

fn with(
    mut responses: Map<String, Value>,
    code: &str,
    description: &str,
    content: Value,
) -> Map<String, Value> {
    responses.insert(
        code.into(),
        json!({ "description": description, "content": content }),
    );
    responses
}

fn page_params() -> Vec<Value> {
    vec![
        param(
            "size",
            "query",
            "Items per page (1 to 1000, default 100)",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
        param(
            "offset",
            "query",
            "Items to skip",
            json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
        ),
    ]
}

fn list_op(kind: Kind, mut params: Vec<Value>, summary: String) -> Value {
    params.extend(page_params());
    let responses = with(
        errors(&[400, 401, 403, 404, 503]),
        "200",
        "A page of resources",
        json_content(schema_ref(&format!("{}List", kind.name()))),
    );
    op(&summary, kind.name(), read_security(), params, responses)
}

/// Reading, writing and deleting one resource; on global, a zone's kinds are only read (the
/// zones report them).
fn item_ops(kind: Kind, role: Role, params: Vec<Value>) -> Value {
    let resource = schema_ref(&format!("{}Resource", kind.name()));
    let name = kind.name();
    let get = with(
        errors(&[401, 403, 404, 503]),
        "200",
        "The resource",
        json_content(resource.clone()),
    );
    let put = with(
        with(
            errors(&[400, 401, 403, 404, 408, 409, 413, 415, 503]),
            "200",
            "Updated, or unchanged",
            json_content(schema_ref("PutResult")),
        ),
        "201",
        "Created",
        json_content(schema_ref("PutResult")),
    );
    let mut delete_params = params.clone();
    delete_params.push(param(
        "version",
        "query",
        "Delete only if the resource is at this version",
        json!({"type": "integer"}),
    ));
    if kind == Kind::Mesh {
        delete_params.push(param(
            "cascade",
            "query",
            "Also delete every resource in the mesh",
            json!({"type": "boolean"}),
        ));
    }
    let delete = with(
        errors(&[400, 401, 403, 404, 409, 503]),
        "200",
        "Deleted",
        json_content(
            json!({"type": "object", "required": ["revision"], "properties": {"revision": {"type": "integer"}}}),
        ),
    );
    let mut put_op = op(
        &format!("Create or replace a {name}"),
        name,
        write_security(),
        params.clone(),
        put,
    );
    put_op["requestBody"] = json!({
        "required": true,
        "content": {
            "application/json": { "schema": resource.clone() },
            "application/yaml": { "schema": resource }
        }
    });
    let get = op(&format!("Read a {name}"), name, read_security(), params, get);
    // Read-only: a zone's inventory on global; what a zone allocates itself, everywhere.
    if (role == Role::Global && kind.zone_owned()) || kind.zone_local() {
        return json!({ "get": get });
    }
    json!({
        "get": get,
        "put": put_op,
        "delete": op(&format!("Delete a {name}"), name, write_security(), delete_params, delete),
    })
}

/// The universal form of `kind`: `type`, `name` (and `mesh`), store metadata, and the spec
/// either under `spec` or, for Kuma's older kinds, inline beside them (`spec` is the spec's
/// own schema, looked up in `defs` when it is a reference).
fn resource_schema(kind: Kind, spec: Value, defs: &Map<String, Value>) -> Value {
    let mut properties = Map::new();
    properties.insert("type".into(), json!({ "type": "string", "enum": [kind.name()] }));
    let name_rule = if kind.is_secret() {
        "A DNS-1123 subdomain"
    } else {
        "A DNS-1123 label"
    };
    properties.insert(
        "name".into(),
        json!({ "type": "string", "description": name_rule }),
    );
    if kind.scope() == Scope::Mesh {
        properties.insert("mesh".into(), json!({ "type": "string", "default": "default" }));
    }
    properties.insert(
        "labels".into(),
        json!({ "type": "object", "additionalProperties": { "type": "string" } }),
    );
    properties.insert(
        "version".into(),
        json!({ "type": "integer", "minimum": 0, "description": "On write: refuse unless the stored version is this (0: create only)" }),
    );
    properties.insert(
        "creationTime".into(),
        json!({ "type": "string", "format": "date-time", "readOnly": true }),
    );
    properties.insert(
        "modificationTime".into(),
        json!({ "type": "string", "format": "date-time", "readOnly": true }),
    );
    let mut required = vec![json!("type"), json!("name")];
    if kind.spec_inline() {
        let resolved = spec["$ref"]
            .as_str()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|name| defs.get(name))
            .unwrap_or(&spec);
        for (k, v) in resolved["properties"].as_object().into_iter().flatten() {
            properties.insert(k.clone(), v.clone());
        }
        required.extend(resolved["required"].as_array().into_iter().flatten().cloned());
    } else {
        properties.insert("spec".into(), spec);
    }
    json!({
        "description": format!("A {} in the universal form.", kind.name()),
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

fn resource_paths(paths: &mut Map<String, Value>, role: Role) {
    let mesh_param = || param("mesh", "path", "The mesh", json!({"type": "string"}));
    let name_param = || param("name", "path", "The resource's name", json!({"type": "string"}));
    for &kind in Kind::ALL {
        let plural = kind.plural();
        match kind.scope() {
            Scope::Global if kind == Kind::Mesh => {
                paths.insert(
                    "/meshes".into(),
                    json!({ "get": list_op(kind, vec![], "List meshes".into()) }),
                );
                paths.insert("/meshes/{name}".into(), item_ops(kind, role, vec![name_param()]));
            }
            Scope::Global => {
                paths.insert(
                    format!("/{plural}"),
                    json!({ "get": list_op(kind, vec![], format!("List {plural}")) }),
                );
                paths.insert(
                    format!("/{plural}/{{name}}"),
                    item_ops(kind, role, vec![name_param()]),
                );
            }
            Scope::Mesh => {
                paths.insert(
                    format!("/meshes/{{mesh}}/{plural}"),
                    json!({ "get": list_op(kind, vec![mesh_param()], format!("List {plural} in a mesh")) }),
                );
                paths.insert(
                    format!("/meshes/{{mesh}}/{plural}/{{name}}"),
                    item_ops(kind, role, vec![mesh_param(), name_param()]),
                );
                paths.insert(
                    format!("/{plural}"),
                    json!({ "get": list_op(kind, vec![], format!("List {plural} in every mesh")) }),
                );
            }
        }
    }
}

fn global_paths(paths: &mut Map<String, Value>) {
    let zone = json!({
        "type": "object",
        "required": ["type", "name", "state"],
        "properties": {
            "type": {"type": "string", "enum": ["Zone"]},
            "name": {"type": "string"},
            "state": {"type": "string", "enum": ["Online", "Offline"]},
            "connectedAt": {"type": "string", "format": "date-time", "nullable": true},
            "lastSeen": {"type": "string", "format": "date-time", "nullable": true},
            "ackedRevision": {"type": "integer"},
            "lastNack": {"type": "string", "nullable": true},
            "dataplanes": {"type": "integer"},
            "ingresses": {"type": "array", "items": {"type": "string"}},
            "inventoryRefused": {"type": "array", "items": {"type": "string"}}
        }
    });
    let list = json!({"type": "object", "required": ["total", "items"], "properties": {"total": {"type": "integer"}, "items": {"type": "array", "items": zone.clone()}, "next": {"type": "string", "nullable": true}}});
    paths.insert(
        "/zones".into(),
        json!({ "get": op("Every zone that has connected, and its sync", "Zones", read_security(), vec![], with(errors(&[401, 503]), "200", "The zones", json_content(list))) }),
    );
    paths.insert(
        "/zones/{name}".into(),
        json!({ "get": op(
            "One zone: online or offline, last seen, ACKed revision, last NACK, inventory",
            "Zones",
            read_security(),
            vec![param("name", "path", "The zone", json!({"type": "string"}))],
            with(errors(&[401, 404, 503]), "200", "The zone", json_content(zone)),
        ) }),
    );
}

/// Kinds whose policies select proxies (what `_resources/dataplanes` answers for).
fn zone_paths(paths: &mut Map<String, Value>) {
    let object = json!({"type": "object"});
    paths.insert(
        "/meshes/{mesh}/dataplanes/{name}/_config".into(),
        json!({ "get": op(
            "The Envoy config generated for a Dataplane, and how its proxy took it (secrets by name only)",
            "Dataplane",
            read_security(),
            vec![param("mesh", "path", "The mesh", json!({"type": "string"})), param("name", "path", "The Dataplane", json!({"type": "string"}))],
            with(errors(&[401, 404]), "200", "Config and proxy state", json_content(object.clone())),
        ) }),
    );
    let members = json!({"type": "object", "required": ["node_id", "role", "members"], "properties": {
        "node_id": {"type": "integer"}, "role": {"type": "string"}, "term": {"type": "integer"},
        "leader": {"type": "integer", "nullable": true}, "members": {"type": "array", "items": {"type": "object"}}
    }});
    paths.insert(
        "/raft".into(),
        json!({ "get": op("This node's view of the zone's Raft cluster", "Raft", read_security(), vec![], with(errors(&[401]), "200", "Role, term, leader, indexes, members", json_content(members.clone()))) }),
    );
    let mut add = op(
        "Add a voting member (started with --join)",
        "Raft",
        write_security(),
        vec![],
        with(
            errors(&[400, 401, 403, 409, 503]),
            "200",
            "The cluster after",
            json_content(members.clone()),
        ),
    );
    add["requestBody"] = json!({ "required": true, "content": json_content(json!({
        "type": "object", "required": ["id", "address"], "additionalProperties": false,
        "properties": {"id": {"type": "integer", "minimum": 1}, "address": {"type": "string", "description": "HOST:PORT"}}
    })) });
    paths.insert("/raft/members".into(), json!({ "post": add }));
    paths.insert(
        "/raft/members/{id}".into(),
        json!({ "delete": op(
            "Remove a member",
            "Raft",
            write_security(),
            vec![param("id", "path", "The node id", json!({"type": "integer"}))],
            with(errors(&[400, 401, 403, 404, 409, 503]), "200", "The cluster after", json_content(members)),
        ) }),
    );
}

/// The document of a control plane in `role`.
pub fn document(role: Role) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let specs: Vec<(Kind, Value)> = Kind::ALL
        .iter()
        .map(|&k| {
            (
                k,
                serde_json::to_value(k.spec_schema(&mut generator)).unwrap_or(Value::Null),
            )
        })
        .collect();
    for (name, schema) in [
        (
            "UserTokenRequest",
            generator.subschema_for::<crate::token_api::UserTokenRequest>(),
        ),
        (
            "DataplaneTokenRequest",
            generator.subschema_for::<crate::token_api::DataplaneTokenRequest>(),
        ),
        (
            "IngressTokenRequest",
            generator.subschema_for::<crate::token_api::IngressTokenRequest>(),
        ),
        (
            "ZoneTokenRequest",
            generator.subschema_for::<crate::token_api::ZoneTokenRequest>(),
        ),
        (
            "RevokeRequest",
            generator.subschema_for::<crate::token_api::RevokeRequest>(),
        ),
        (
            "RotateRequest",
            generator.subschema_for::<crate::token_api::RotateRequest>(),
        ),
        ("KeyInfo", generator.subschema_for::<crate::tokens::KeyInfo>()),
        ("FieldError", generator.subschema_for::<FieldError>()),
    ] {
        let schema = serde_json::to_value(schema).unwrap_or(Value::Null);
        if schema.get("$ref").is_none() {
            schemas.insert(name.to_owned(), schema);
        }
    }
    schemas.extend(generator.take_definitions(true));
    for (kind, spec) in specs {
        let resource = resource_schema(kind, spec, &schemas);
        schemas.insert(format!("{}Resource", kind.name()), resource);
        schemas.insert(
            format!("{}List", kind.name()),
            json!({
                "type": "object",
                "required": ["total", "items"],
                "properties": {
                    "total": { "type": "integer" },
                    "items": { "type": "array", "items": schema_ref(&format!("{}Resource", kind.name())) },
                    "next": { "type": "string", "nullable": true, "description": "Path and query of the next page" }
                }
            }),
        );
    }
    resource_paths(&mut paths, role);
    inspect_paths(&mut paths);
    token_paths(&mut paths, role);
    match role {
        Role::Global => global_paths(&mut paths),
        Role::Zone => zone_paths(&mut paths),
    }
    let text = |description: &str| json!({ "description": description, "content": text_content() });
    let none = json!([{}]);
    paths.insert(
        "/healthz".into(),
        json!({ "get": { "summary": "200 once the API serves and the store answers", "security": none, "responses": with(errors(&[503]), "200", "ok", text_content()) } }),
    );
    paths.insert("/metrics".into(), json!({ "get": { "summary": "Prometheus metrics", "security": none, "responses": { "200": text("Prometheus text format") } } }));
    paths.insert(
        "/openapi.json".into(),
        json!({ "get": { "summary": "This document", "security": none, "responses": { "200": { "description": "OpenAPI 3.0", "content": json_content(json!({"type": "object"})) } } } }),
    );
    paths.insert(
        "/".into(),
        json!({ "get": { "summary": "Which control plane this is", "security": none, "responses": { "200": { "description": "Product, version and role", "content": json_content(json!({
            "type": "object", "required": ["product", "version", "role"],
            "properties": {"product": {"type": "string"}, "version": {"type": "string"}, "role": {"type": "string", "enum": ["global", "zone"]}}
        })) } } } }),
    );
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["title", "details", "causes"],
            "additionalProperties": false,
            "properties": {
                "title": { "type": "string" },
                "details": { "type": "string" },
                "causes": { "type": "array", "items": schema_ref("FieldError") }
            }
        }),
    );
    schemas.insert(
        "PutResult".into(),
        json!({
            "type": "object",
            "required": ["result", "version", "revision"],
            "properties": {
                "result": { "type": "string", "enum": ["created", "updated", "unchanged"] },
                "version": { "type": "integer" },
                "revision": { "type": "integer", "description": "Store revision of the write" },
                "warnings": { "type": "array", "items": { "type": "string" } }
            }
        }),
    );
    schemas.sort_keys();
    paths.sort_keys();
    let (title, description) = match role {
        Role::Global => (
            "Meridian global control plane",
            "Kuma-compatible REST API for meshes and policies. Bodies are JSON or YAML, in the universal or the Kubernetes form. Reads need no token (secrets excepted); changes need a user token in mesh-system:admin, or a request from the control plane's own host when it trusts it.",
        ),
        Role::Zone => (
            "Meridian zone control plane",
            "The same resource API for the zone's policies and Dataplanes, the config generated for each proxy, the zone's Raft cluster, and its tokens. Bodies are JSON or YAML, in the universal or the Kubernetes form.",
        ),
    };
    json!({
        "openapi": "3.0.3",
        "info": { "title": title, "description": description, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A user token (meshctl generate user-token), or a proxy's own token for its own Dataplane" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::Role;

    #[test]
    fn openapi_documents_are_checked_in() {
        for (role, file) in [(Role::Global, "openapi.json"), (Role::Zone, "openapi-zone.json")] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../docs")
                .join(file);
            let generated = format!(
                "{}\n",
                serde_json::to_string_pretty(&super::document(role)).expect("encode")
            );
            if std::env::var_os("UPDATE_OPENAPI").is_some() {
                std::fs::write(&path, &generated).expect("write the document");
            }
            let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                checked_in == generated,
                "docs/{file} is out of date: run `UPDATE_OPENAPI=1 cargo test -p meridian-api openapi` and commit it"
            );
        }
    }
}
