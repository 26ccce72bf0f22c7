//! The inspect endpoints' part of the OpenAPI documents.

use meridian_model::{Kind, Scope};
use serde_json::{Map, Value, json};

use super::{errors, json_content, op, page_params, param, read_security, with};

fn policy_kinds() -> impl Iterator<Item = Kind> {
    Kind::ALL
        .iter()
        .copied()
        .filter(|k| k.scope() == Scope::Mesh && !matches!(k, Kind::Dataplane | Kind::Secret))
}

/// Asking why: `_rules`, `_resources/dataplanes`, `_traffic` (both roles).
pub(super) fn inspect_paths(paths: &mut Map<String, Value>) {
    let mesh_param = || param("mesh", "path", "The mesh", json!({"type": "string"}));
    let name_param = || param("name", "path", "The resource's name", json!({"type": "string"}));
    let meta = json!({"type": "object", "required": ["type", "mesh", "name"], "properties": {
        "type": {"type": "string"}, "mesh": {"type": "string"}, "name": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}}
    }});
    let rule = json!({"type": "object", "required": ["conf", "origin"], "properties": {
        "matchers": {"type": "array", "items": {"type": "object"}},
        "conf": {},
        "origin": {"type": "array", "items": meta.clone()}
    }});
    let rules = json!({"type": "object", "required": ["resource", "rules"], "properties": {
        "resource": meta.clone(),
        "rules": {"type": "array", "items": {"type": "object", "required": ["type", "toRules", "fromRules", "warnings"], "properties": {
            "type": {"type": "string"},
            "toRules": {"type": "array", "items": rule.clone()},
            "fromRules": {"type": "array", "items": {"type": "object", "required": ["inbound", "rules"], "properties": {
                "inbound": {"type": "object", "required": ["port", "tags"], "properties": {"port": {"type": "integer"}, "tags": {"type": "object"}}},
                "rules": {"type": "array", "items": rule.clone()}
            }}},
            "proxyRule": {"type": "object", "nullable": true, "required": ["conf", "origin"], "properties": {"conf": {}, "origin": {"type": "array", "items": meta.clone()}}},
            "warnings": {"type": "array", "items": {"type": "string"}}
        }}}
    }});
    paths.insert(
        "/meshes/{mesh}/dataplanes/{name}/_rules".into(),
        json!({ "get": op(
            "What the mesh's policies come to for a Dataplane: per kind, rules per destination (toRules), per inbound (fromRules) and for the whole proxy (proxyRule), each with the policies it came from (origin, in merge order: the last won)",
            "Inspect",
            read_security(),
            vec![mesh_param(), name_param()],
            with(errors(&[401, 404, 503]), "200", "The resolved rules", json_content(rules)),
        ) }),
    );
    let dataplanes = json!({"type": "object", "required": ["total", "items"], "properties": {
        "total": {"type": "integer"}, "items": {"type": "array", "items": meta.clone()},
        "next": {"type": "string", "nullable": true}
    }});
    for kind in policy_kinds() {
        let mut params = vec![mesh_param(), name_param()];
        params.extend(page_params());
        paths.insert(
            format!("/meshes/{{mesh}}/{}/{{name}}/_resources/dataplanes", kind.plural()),
            json!({ "get": op(
                &format!("The Dataplanes a {} selects", kind.name()),
                "Inspect",
                read_security(),
                params,
                with(errors(&[400, 401, 403, 404, 503]), "200", "A page of Dataplanes", json_content(dataplanes.clone())),
            ) }),
        );
    }
    let service = |name: &str, what: &str| {
        let mut p = param(name, "query", what, json!({"type": "string"}));
        p["required"] = json!(true);
        p
    };
    let traffic = json!({"type": "object", "required": ["from", "to", "mesh", "allowed", "enforced", "destinations"], "properties": {
        "from": {"type": "string"}, "to": {"type": "string"}, "mesh": {"type": "string"},
        "allowed": {"type": "boolean"}, "enforced": {"type": "boolean", "description": "false when the mesh has mTLS off: permissions are then not enforced"},
        "note": {"type": "string", "nullable": true},
        "destinations": {"type": "array", "items": {"type": "object", "required": ["dataplane", "port", "allowed", "reason"], "properties": {
            "dataplane": {"type": "string"}, "port": {"type": "integer"}, "allowed": {"type": "boolean"},
            "policy": {"type": "object", "nullable": true, "required": ["type", "mesh", "name"]}, "reason": {"type": "string"}
        }}}
    }});
    paths.insert(
        "/meshes/{mesh}/_traffic".into(),
        json!({ "get": op(
            "Whether service `from` may call service `to`, at each inbound of `to`, and the policy that decides it",
            "Inspect",
            read_security(),
            vec![mesh_param(), service("from", "The calling service (kuma.io/service)"), service("to", "The called service")],
            with(errors(&[400, 401, 404, 503]), "200", "The decision", json_content(traffic)),
        ) }),
    );
}
