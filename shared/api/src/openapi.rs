//! The OpenAPI document, generated from the kind registry and the spec types' schemas, so it
//! cannot drift from the code. A copy is kept at `docs/openapi.json`; a test fails when they
//! differ (regenerate with `UPDATE_OPENAPI=1 cargo test -p meridian-api openapi`).

use meridian_model::{FieldError, Kind, Scope};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn error_responses(codes: &[&str]) -> Map<String, Value> {
    codes
        .iter()
        .map(|code| {
            let description = match *code {
                "400" => "Invalid request or resource; `causes` names each field at fault",
                "404" => "Not found (the resource, its mesh, or the resource type)",
                "403" => "Forbidden: on a federated zone, only Dataplanes are written locally",
                "409" => "Conflict: a stale version, or a mesh that still holds resources",
                "413" => "Body larger than 1 MiB",
                "415" => "Content-Type is neither JSON nor YAML",
                _ => "Store unavailable",
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
            json!({"type": "integer", "minimum": 0}),
        ),
    ]
}

fn list_op(kind: Kind, mut params: Vec<Value>, summary: String) -> Value {
    params.extend(page_params());
    let mut responses = error_responses(&["400", "404", "503"]);
    responses.insert(
        "200".into(),
        json!({ "description": "A page of resources", "content": json_content(schema_ref(&format!("{}List", kind.name()))) }),
    );
    json!({ "summary": summary, "tags": [kind.name()], "parameters": params, "responses": responses })
}

fn item_ops(kind: Kind, params: Vec<Value>) -> Value {
    let resource = schema_ref(&format!("{}Resource", kind.name()));
    let mut get_responses = error_responses(&["404", "503"]);
    get_responses.insert(
        "200".into(),
        json!({ "description": "The resource", "content": json_content(resource.clone()) }),
    );
    let mut put_responses = error_responses(&["400", "403", "404", "409", "413", "415", "503"]);
    put_responses.insert(
        "200".into(),
        json!({ "description": "Updated, or unchanged", "content": json_content(schema_ref("PutResult")) }),
    );
    put_responses.insert(
        "201".into(),
        json!({ "description": "Created", "content": json_content(schema_ref("PutResult")) }),
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
    let mut delete_responses = error_responses(&["400", "403", "404", "409", "503"]);
    delete_responses.insert(
        "200".into(),
        json!({ "description": "Deleted", "content": json_content(json!({"type": "object", "properties": {"revision": {"type": "integer"}}})) }),
    );
    let name = kind.name();
    json!({
        "get": { "summary": format!("Read a {name}"), "tags": [name], "parameters": params, "responses": get_responses },
        "put": {
            "summary": format!("Create or replace a {name}"),
            "tags": [name],
            "parameters": params,
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": { "schema": resource.clone() },
                    "application/yaml": { "schema": resource }
                }
            },
            "responses": put_responses
        },
        "delete": { "summary": format!("Delete a {name}"), "tags": [name], "parameters": delete_params, "responses": delete_responses }
    })
}

fn resource_schema(kind: Kind, spec: Value) -> Value {
    let mut meta = json!({
        "type": "object",
        "required": ["type", "name"],
        "properties": {
            "type": { "type": "string", "enum": [kind.name()] },
            "name": { "type": "string", "description": "A DNS-1123 label" },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
            "version": { "type": "integer", "description": "On write: refuse unless the stored version is this (0: create only)" },
            "creationTime": { "type": "string", "format": "date-time", "readOnly": true },
            "modificationTime": { "type": "string", "format": "date-time", "readOnly": true }
        }
    });
    if kind.scope() == Scope::Mesh {
        meta["properties"]["mesh"] = json!({ "type": "string", "default": "default" });
    }
    if kind.spec_inline() {
        json!({ "description": format!("A {} in the universal form; its spec fields sit beside type and name.", kind.name()), "allOf": [meta, spec] })
    } else {
        meta["properties"]["spec"] = spec;
        meta["description"] = json!(format!("A {} in the universal form.", kind.name()));
        meta
    }
}

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let mesh_param = || param("mesh", "path", "The mesh", json!({"type": "string"}));
    let name_param = || param("name", "path", "The resource's name", json!({"type": "string"}));
    for &kind in Kind::ALL {
        let spec = serde_json::to_value(kind.spec_schema(&mut generator)).unwrap_or(Value::Null);
        schemas.insert(format!("{}Resource", kind.name()), resource_schema(kind, spec));
        schemas.insert(
            format!("{}List", kind.name()),
            json!({
                "type": "object",
                "properties": {
                    "total": { "type": "integer" },
                    "items": { "type": "array", "items": schema_ref(&format!("{}Resource", kind.name())) },
                    "next": { "type": "string", "nullable": true, "description": "URL of the next page" }
                }
            }),
        );
        match kind.scope() {
            Scope::Global if kind != Kind::Mesh => {
                let plural = kind.plural();
                paths.insert(
                    format!("/{plural}"),
                    json!({ "get": list_op(kind, vec![], format!("List {plural}")) }),
                );
                paths.insert(format!("/{plural}/{{name}}"), item_ops(kind, vec![name_param()]));
            }
            Scope::Global => {
                paths.insert(
                    "/meshes".into(),
                    json!({ "get": list_op(kind, vec![], "List meshes".into()) }),
                );
                paths.insert("/meshes/{name}".into(), item_ops(kind, vec![name_param()]));
            }
            Scope::Mesh => {
                let plural = kind.plural();
                paths.insert(
                    format!("/meshes/{{mesh}}/{plural}"),
                    json!({ "get": list_op(kind, vec![mesh_param()], format!("List {plural} in a mesh")) }),
                );
                paths.insert(
                    format!("/meshes/{{mesh}}/{plural}/{{name}}"),
                    item_ops(kind, vec![mesh_param(), name_param()]),
                );
                paths.insert(
                    format!("/{plural}"),
                    json!({ "get": list_op(kind, vec![], format!("List {plural} in every mesh")) }),
                );
            }
        }
    }
    let text = |description: &str| json!({ "description": description, "content": { "text/plain": { "schema": { "type": "string" } } } });
    paths.insert("/healthz".into(), json!({ "get": { "summary": "200 once the API serves and the store answers", "responses": { "200": text("ok"), "503": text("store unavailable") } } }));
    paths.insert("/metrics".into(), json!({ "get": { "summary": "Prometheus metrics", "responses": { "200": text("Prometheus text format") } } }));
    paths.insert("/openapi.json".into(), json!({ "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.0" } } } }));
    schemas.extend(generator.take_definitions(true));
    let field_error = serde_json::to_value(generator.subschema_for::<FieldError>()).unwrap_or(Value::Null);
    schemas.extend(generator.take_definitions(true));
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["title", "details", "causes"],
            "properties": {
                "title": { "type": "string" },
                "details": { "type": "string" },
                "causes": { "type": "array", "items": field_error }
            }
        }),
    );
    schemas.insert(
        "PutResult".into(),
        json!({
            "type": "object",
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
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Meridian global control plane",
            "description": "Kuma-compatible REST API for meshes and policies. Bodies are JSON or YAML, in the universal or the Kubernetes form.",
            "version": env!("CARGO_PKG_VERSION")
        },
        "paths": paths,
        "components": { "schemas": schemas }
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn openapi_document_is_checked_in() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = format!(
            "{}\n",
            serde_json::to_string_pretty(&super::document()).expect("encode")
        );
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p meridian-api openapi` and commit it"
        );
    }
}
