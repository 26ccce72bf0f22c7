//! Kubernetes CustomResourceDefinitions for the kinds users write, in group `kuma.io` with
//! Kuma's kind and plural names, generated from the spec types' schemas so they cannot drift
//! from the model (copies live in `deploy/helm/meridian/crds/`; a test fails when they differ).
//!
//! Kubernetes wants *structural* schemas: every node typed, no references, no `anyOf` that
//! changes shape. [`structural`] turns the schemars output into one, and where the model
//! accepts more than one shape (an untagged enum, Kuma's older forms) it keeps the node open
//! (`x-kubernetes-preserve-unknown-fields`): the API server keeps the field and the validating
//! webhook, which runs the model's own validation, decides. Scopes follow Kuma: Mesh and the
//! older policies (with their top-level `mesh`) are cluster-scoped; Dataplanes, ZoneIngresses
//! and the `Mesh*` policies are namespaced and name their mesh with the `kuma.io/mesh` label.
//! Secrets are Kubernetes Secrets on Kubernetes, and virtual IPs are the zone's own, so
//! neither has a definition.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::{K8S_API_VERSION, Kind};

pub const GROUP: &str = "kuma.io";

/// The version part of [`K8S_API_VERSION`].
pub fn version() -> &'static str {
    K8S_API_VERSION.rsplit('/').next().unwrap_or("v1alpha1")
}

/// The built-in kinds that have a definition.
pub fn kinds() -> impl Iterator<Item = Kind> {
    Kind::ALL
        .iter()
        .copied()
        .filter(|k| !matches!(k, Kind::Secret | Kind::GlobalSecret | Kind::VirtualIPs))
}

/// Kuma's Kubernetes plural: the REST one without dashes (`traffic-permissions` ->
/// `trafficpermissions`).
pub fn plural(kind: Kind) -> String {
    kind.plural().replace('-', "")
}

/// `Cluster` or `Namespaced`, as Kuma has them.
pub fn scope(kind: Kind) -> &'static str {
    if cluster_scoped(kind) {
        "Cluster"
    } else {
        "Namespaced"
    }
}

/// Mesh and Kuma's older policies live beside namespaces; the older policies name their mesh
/// in a top-level `mesh` field.
pub fn cluster_scoped(kind: Kind) -> bool {
    kind == Kind::Mesh || (kind.spec_inline() && !matches!(kind, Kind::Dataplane | Kind::ZoneIngress))
}

/// The file name of `kind`'s definition (`kuma.io_meshtraces.yaml`).
pub fn file_name(kind: Kind) -> String {
    format!("{GROUP}_{}.yaml", plural(kind))
}

/// Every definition, with the file name each is kept under.
pub fn definitions() -> Vec<(String, Value)> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let specs: Vec<(Kind, Value)> = kinds()
        .map(|k| {
            (
                k,
                serde_json::to_value(k.spec_schema(&mut generator)).unwrap_or(Value::Null),
            )
        })
        .collect();
    let defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    specs
        .into_iter()
        .map(|(kind, spec)| (file_name(kind), definition(kind, &structural(&spec, &defs))))
        .collect()
}

fn definition(kind: Kind, spec: &Value) -> Value {
    let mut properties = json!({
        "apiVersion": {"type": "string", "description": "kuma.io/v1alpha1"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
        "status": {
            "type": "object",
            "description": "Set by the control plane: whether it took the resource, and why not.",
            "x-kubernetes-preserve-unknown-fields": true
        }
    });
    if cluster_scoped(kind) && kind != Kind::Mesh {
        properties["mesh"] = json!({"type": "string", "description": "The mesh (default `default`)."});
    }
    let mut columns = Vec::new();
    if kind != Kind::Mesh {
        columns.push(if cluster_scoped(kind) {
            json!({"name": "Mesh", "type": "string", "jsonPath": ".mesh"})
        } else {
            json!({"name": "Mesh", "type": "string", "jsonPath": ".metadata.labels.kuma\\.io/mesh"})
        });
    }
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    let plural = plural(kind);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.name(),
                "listKind": format!("{}List", kind.name()),
                "plural": plural,
                "singular": kind.name().to_lowercase(),
                "categories": ["kuma"]
            },
            "scope": scope(kind),
            "versions": [{
                "name": version(),
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": format!("Kuma's {}: validated by the model when applied.", kind.name()),
                    "properties": properties
                }}
            }]
        }
    })
}

/// A node that takes any value.
fn open() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    m
}

/// Formats the API server knows; others are dropped rather than guessed at.
const FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "password",
];

/// `schema` as a structural schema, with `$ref`s to `defs` inlined (a reference back into
/// itself is left open).
pub fn structural(schema: &Value, defs: &Map<String, Value>) -> Value {
    Value::Object(node(schema, defs, &mut Vec::new()))
}

fn node(schema: &Value, defs: &Map<String, Value>, seen: &mut Vec<String>) -> Map<String, Value> {
    let Some(obj) = schema.as_object() else {
        return open();
    };
    let mut out = if let Some(target) = obj.get("$ref").and_then(Value::as_str) {
        let name = target.rsplit('/').next().unwrap_or(target).to_owned();
        match defs.get(&name) {
            Some(def) if !seen.contains(&name) => {
                seen.push(name);
                let inlined = node(def, defs, seen);
                seen.pop();
                inlined
            }
            _ => open(),
        }
    } else if let Some(Value::Array(all)) = obj.get("allOf") {
        match all.as_slice() {
            [one] => node(one, defs, seen),
            _ => open(),
        }
    } else if let Some(Value::Array(alts)) = obj.get("anyOf").or_else(|| obj.get("oneOf")) {
        alternatives(alts, defs, seen)
    } else {
        shape(obj, defs, seen)
    };
    for key in ["description", "nullable"] {
        if let Some(v) = obj.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if out.get("nullable") == Some(&Value::Bool(false)) {
        out.remove("nullable");
    }
    out
}

/// One of several shapes: an `Option` is its inner shape made nullable, `string | integer`
/// is int-or-string, a choice among strings stays a string, and anything else stays open.
fn alternatives(alts: &[Value], defs: &Map<String, Value>, seen: &mut Vec<String>) -> Map<String, Value> {
    let mut nullable = false;
    let mut shapes = Vec::new();
    for alt in alts {
        if is_null(alt) {
            nullable = true;
        } else {
            shapes.push(node(alt, defs, seen));
        }
    }
    let types: Vec<Option<&str>> = shapes
        .iter()
        .map(|s| s.get("type").and_then(Value::as_str))
        .collect();
    let mut out = match (shapes.len(), types.first().copied().flatten()) {
        (1, _) => shapes.swap_remove(0),
        (_, Some(first))
            if types.iter().all(|t| *t == Some(first)) && first != "object" && first != "array" =>
        {
            let mut m = Map::new();
            m.insert("type".into(), Value::String(first.to_owned()));
            let enums: Option<Vec<Value>> = shapes
                .iter()
                .map(|s| s.get("enum").and_then(Value::as_array).cloned())
                .collect::<Option<Vec<_>>>()
                .map(|e| e.concat());
            if let Some(values) = enums {
                m.insert("enum".into(), Value::Array(values));
            }
            m
        }
        _ if !types.is_empty() && types.iter().all(|t| matches!(t, Some("string" | "integer"))) => {
            let mut m = Map::new();
            m.insert("x-kubernetes-int-or-string".into(), Value::Bool(true));
            m
        }
        _ if !types.is_empty() && types.iter().all(|t| *t == Some("object")) => {
            let mut m = open();
            m.insert("type".into(), Value::String("object".into()));
            m
        }
        _ => open(),
    };
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    out
}

/// The schema of `null` alone (`Option`'s other half).
fn is_null(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
        || schema.get("const") == Some(&Value::Null)
        || schema
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_null))
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

fn shape(obj: &Map<String, Value>, defs: &Map<String, Value>, seen: &mut Vec<String>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut enums: Option<Vec<Value>> = obj.get("enum").and_then(Value::as_array).cloned();
    if let Some(c) = obj.get("const") {
        enums = Some(vec![c.clone()]);
    }
    let ty = match obj.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Array(ts)) => {
            let real: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            if real.len() < ts.len() {
                out.insert("nullable".into(), Value::Bool(true));
            }
            match real.as_slice() {
                [one] => Some((*one).to_owned()),
                _ => return open(),
            }
        }
        _ => enums
            .as_ref()
            .and_then(|e| e.iter().find(|v| !v.is_null()))
            .map(|v| type_of(v).to_owned()),
    };
    let Some(ty) = ty else {
        return open();
    };
    if let Some(values) = enums {
        if values.iter().any(Value::is_null) {
            out.insert("nullable".into(), Value::Bool(true));
        }
        let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
        if values.iter().any(|v| type_of(v) != ty) {
            return open();
        }
        out.insert("enum".into(), Value::Array(values));
    }
    for key in [
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "required",
    ] {
        if let Some(v) = obj.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(f) = obj
        .get("format")
        .and_then(Value::as_str)
        .filter(|f| FORMATS.contains(f))
    {
        out.insert("format".into(), Value::String(f.to_owned()));
    }
    match ty.as_str() {
        "object" => {
            let properties: Map<String, Value> = obj
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| (k.clone(), Value::Object(node(v, defs, seen))))
                        .collect()
                })
                .unwrap_or_default();
            match obj.get("additionalProperties") {
                Some(extra @ Value::Object(_)) if properties.is_empty() => {
                    out.insert(
                        "additionalProperties".into(),
                        Value::Object(node(extra, defs, seen)),
                    );
                }
                Some(Value::Bool(false)) | None if !properties.is_empty() => {}
                _ if properties.is_empty() => {
                    out.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
                }
                // Named fields and open extras together: keep what is named, and the rest.
                _ => {
                    out.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
                }
            }
            if !properties.is_empty() {
                out.insert("properties".into(), Value::Object(properties));
            }
        }
        "array" => {
            let items = match obj.get("items") {
                Some(items @ Value::Object(_)) => node(items, defs, seen),
                _ => open(),
            };
            out.insert("items".into(), Value::Object(items));
        }
        _ => {}
    }
    let mut typed = Map::new();
    typed.insert("type".into(), Value::String(ty));
    typed.extend(out);
    typed
}

/// The reasons `schema` is not structural, by path (empty when it is).
pub fn structural_faults(schema: &Value) -> Vec<String> {
    let mut faults = Vec::new();
    check(schema, "", &mut faults);
    faults
}

fn check(schema: &Value, path: &str, faults: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        faults.push(format!("{path}: not a schema object"));
        return;
    };
    for key in [
        "$ref",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "default",
        "uniqueItems",
        "exclusiveMinimum",
        "exclusiveMaximum",
    ] {
        if obj.contains_key(key) {
            faults.push(format!("{path}: `{key}` is not allowed here"));
        }
    }
    let free = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !free {
        faults.push(format!("{path}: has no type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        faults.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(extra) = obj.get("additionalProperties") {
        if !extra.is_object() {
            faults.push(format!("{path}: additionalProperties must be a schema"));
        } else {
            check(extra, &format!("{path}.*"), faults);
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check(v, &format!("{path}.{k}"), faults);
        }
    }
    if ty == Some("array") {
        match obj.get("items") {
            Some(items) => check(items, &format!("{path}[]"), faults),
            None => faults.push(format!("{path}: an array without items")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn crds_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/meridian/crds")
    }

    #[test]
    fn the_checked_in_definitions_are_the_generated_ones() {
        let dir = crds_dir();
        let generated = definitions();
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(&dir).expect("crds dir");
            for entry in std::fs::read_dir(&dir).expect("crds dir").flatten() {
                std::fs::remove_file(entry.path()).expect("remove a stale definition");
            }
            for (file, crd) in &generated {
                std::fs::write(dir.join(file), crate::text::to_yaml(crd)).expect("write a definition");
            }
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort();
        let mut expected: Vec<String> = generated.iter().map(|(f, _)| f.clone()).collect();
        expected.sort();
        let hint =
            "run `UPDATE_CRDS=1 cargo test -p meridian-model crd` and commit deploy/helm/meridian/crds";
        assert_eq!(on_disk, expected, "the definitions' files: {hint}");
        for (file, crd) in &generated {
            let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(text == crate::text::to_yaml(crd), "{file} is out of date: {hint}");
        }
    }

    #[test]
    fn every_definition_is_structural_and_names_kumas_kind() {
        for (file, crd) in definitions() {
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let faults = structural_faults(schema);
            assert!(faults.is_empty(), "{file}: {faults:#?}");
            let names = &crd["spec"]["names"];
            assert_eq!(
                crd["metadata"]["name"],
                format!("{}.kuma.io", names["plural"].as_str().unwrap_or_default())
            );
        }
        let by_kind = |k: Kind| {
            definitions()
                .into_iter()
                .find(|(f, _)| *f == file_name(k))
                .map(|(_, c)| c)
                .expect("a definition")
        };
        let tp = by_kind(Kind::TrafficPermission);
        assert_eq!(tp["spec"]["names"]["plural"], "trafficpermissions");
        assert_eq!(tp["spec"]["scope"], "Cluster");
        let mt = by_kind(Kind::MeshTrace);
        assert_eq!(mt["spec"]["scope"], "Namespaced");
        assert_eq!(by_kind(Kind::Mesh)["spec"]["scope"], "Cluster");
        // A typed field keeps its type: a MeshTrafficPermission's targetRef.kind is one of Kuma's.
        let kind = &by_kind(Kind::MeshTrafficPermission)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            ["properties"]["spec"]["properties"]["targetRef"]["properties"]["kind"];
        assert_eq!(kind["type"], "string", "{kind}");
        assert!(
            kind["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&json!("MeshService"))),
            "{kind}"
        );
    }

    #[test]
    fn structural_turns_options_choices_and_references_into_kubernetes_shapes() {
        let defs: Map<String, Value> = serde_json::from_value(json!({
            "Port": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "Node": {"type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"}}}
        }))
        .expect("defs");
        let s = structural(
            &json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "port": {"$ref": "#/components/schemas/Port"},
                    "maybe": {"anyOf": [{"type": "string", "enum": ["a"]}, {"nullable": true, "enum": [null]}]},
                    "either": {"oneOf": [{"type": "string", "enum": ["a"]}, {"type": "string", "enum": ["b"]}]},
                    "node": {"$ref": "#/components/schemas/Node"},
                    "free": {"type": "object"},
                    "list": {"type": "array", "items": {"type": "integer", "format": "uint32", "default": 1}}
                }
            }),
            &defs,
        );
        assert!(structural_faults(&s).is_empty(), "{:#?}", structural_faults(&s));
        let p = &s["properties"];
        assert_eq!(p["port"], json!({"x-kubernetes-int-or-string": true}));
        assert_eq!(
            p["maybe"],
            json!({"type": "string", "enum": ["a"], "nullable": true})
        );
        assert_eq!(p["either"], json!({"type": "string", "enum": ["a", "b"]}));
        assert_eq!(
            p["node"]["properties"]["next"],
            json!({"x-kubernetes-preserve-unknown-fields": true}),
            "a reference back into itself stays open"
        );
        assert_eq!(
            p["free"],
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
        );
        assert_eq!(
            p["list"]["items"],
            json!({"type": "integer"}),
            "unknown formats and defaults dropped"
        );
        assert!(s.get("additionalProperties").is_none());
    }
}
