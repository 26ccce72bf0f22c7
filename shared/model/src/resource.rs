//! Resources as users write them, in either of Kuma's two forms, and as the API returns them.
//!
//! ```text
//!  universal                        Kubernetes
//!  type: MeshTrace                  apiVersion: kuma.io/v1alpha1
//!  name: default                    kind: MeshTrace
//!  mesh: default                    metadata: {name: default, labels: {kuma.io/mesh: default}}
//!  spec: {...}                      spec: {...}
//!            \                      /
//!             +--> Submission { Resource { mesh, name, labels, Spec }, expected_version }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::validate::{Validate, Validator, dns1123_label, validate_labels};
use crate::{FieldError, Kind, ResourceError, Scope, SpanContext, Spec};

pub const DEFAULT_MESH: &str = "default";
pub const K8S_API_VERSION: &str = "kuma.io/v1alpha1";
/// The Kubernetes label that names a resource's mesh.
pub const MESH_LABEL: &str = "kuma.io/mesh";
/// The label that names the zone a resource was reported by.
pub const ZONE_LABEL: &str = "kuma.io/zone";

/// The zone of a zone-reported resource as global and the other zones hold it, named
/// `ZONE.NAME` (a resource's own name is a DNS-1123 label, so the dot is unambiguous).
pub fn synced_zone(name: &str) -> Option<&str> {
    name.split_once('.').map(|(zone, _)| zone)
}

/// Checks a name: a DNS-1123 label, or `ZONE.NAME` for a zone-owned kind carrying the
/// `kuma.io/zone: ZONE` label.
fn check_name(kind: Kind, name: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
    match name.split_once('.') {
        Some((zone, local)) if kind.zone_owned() => {
            if dns1123_label(zone).is_err() || dns1123_label(local).is_err() {
                return Err(
                    "must be a DNS-1123 label, or ZONE.NAME (two labels) for a resource reported by a zone"
                        .to_owned(),
                );
            }
            if labels.get(ZONE_LABEL).map(String::as_str) != Some(zone) {
                return Err(format!(
                    "names a resource reported by zone {zone:?}, which needs the label {ZONE_LABEL}: {zone}"
                ));
            }
            Ok(())
        }
        // Kuma names secrets as DNS-1123 subdomains (`api.key`).
        _ if kind.is_secret() => crate::validate::dns1123_subdomain(name),
        _ => dns1123_label(name),
    }
}

/// Identifies one resource. `mesh` is empty for kinds that live beside meshes (Mesh itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub mesh: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, mesh: impl Into<String>, name: impl Into<String>) -> Self {
        let mesh = match kind.scope() {
            Scope::Global => String::new(),
            Scope::Mesh => mesh.into(),
        };
        Self {
            kind,
            mesh,
            name: name.into(),
        }
    }

    /// For a resource a zone reported: the zone (see [`synced_zone`]).
    pub fn synced_zone(&self) -> Option<&str> {
        synced_zone(&self.name)
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mesh.is_empty() {
            write!(f, "{} {:?}", self.kind, self.name)
        } else {
            write!(f, "{} {:?} in mesh {:?}", self.kind, self.name, self.mesh)
        }
    }
}

/// A validated resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// Empty for kinds that live beside meshes.
    pub mesh: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// What the resource says that Meridian accepts but does not apply (Kuma's older
    /// mesh-wide sections), in words for the writer: a PUT answers them as `warnings`.
    pub fn warnings(&self) -> Vec<String> {
        let Spec::Mesh(mesh) = &self.spec else {
            return Vec::new();
        };
        [
            (mesh.tracing.is_some(), "tracing", "MeshTrace"),
            (
                mesh.logging.is_some(),
                "logging",
                "MeshAccessLog (not in Meridian yet)",
            ),
            (
                mesh.metrics.is_some(),
                "metrics",
                "MeshMetric (not in Meridian yet)",
            ),
        ]
        .into_iter()
        .filter(|(set, ..)| *set)
        .map(|(_, field, instead)| {
            format!("{field} is kept but not applied: Kuma's mesh-wide {field} is replaced by {instead}")
        })
        .collect()
    }

    /// The resource as a reader who is not an admin may see it: secret values hidden.
    pub fn redacted(mut self) -> Self {
        match &mut self.spec {
            Spec::MeshTrace(trace) => trace.redact(),
            Spec::Mesh(mesh) => mesh.redact(),
            Spec::Secret(s) | Spec::GlobalSecret(s) => s.data = crate::policies::secret::REDACTED.to_owned(),
            _ => {}
        }
        self
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.kind(), self.mesh.clone(), self.name.clone())
    }

    /// The universal form without store metadata: what a client sends to write it.
    pub fn to_universal(&self) -> Value {
        render_universal(self, None)
    }
}

/// A resource to be written, with the version its writer last read (for optimistic
/// concurrency: a write whose version is stale is refused).
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    pub resource: Resource,
    pub expected_version: Option<i64>,
    /// The span of the request that makes this write, when it is traced: kept with the
    /// stored resource, so whoever carries the change on continues the trace.
    pub trace: Option<SpanContext>,
}

/// A resource as the store holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub resource: Resource,
    /// Starts at 1 and goes up by one with each change of this resource.
    pub version: i64,
    /// The store-wide revision of the write that last changed it.
    pub revision: i64,
    /// Milliseconds since the Unix epoch.
    pub creation_time_ms: i64,
    pub modification_time_ms: i64,
    /// The span of the write that last changed it, when that write was traced.
    pub trace: Option<SpanContext>,
}

impl Stored {
    /// The universal form with metadata, as the REST API returns it.
    pub fn to_universal(&self) -> Value {
        render_universal(&self.resource, Some(self))
    }
}

fn render_universal(resource: &Resource, stored: Option<&Stored>) -> Value {
    let kind = resource.kind();
    let mut out = Map::new();
    out.insert("type".into(), kind.name().into());
    if kind.scope() == Scope::Mesh {
        out.insert("mesh".into(), resource.mesh.clone().into());
    }
    out.insert("name".into(), resource.name.clone().into());
    if let Some(s) = stored {
        out.insert("version".into(), s.version.into());
        out.insert("creationTime".into(), rfc3339(s.creation_time_ms).into());
        out.insert("modificationTime".into(), rfc3339(s.modification_time_ms).into());
    }
    if !resource.labels.is_empty() {
        let labels = resource
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out.insert("labels".into(), Value::Object(labels));
    }
    match (kind.spec_inline(), resource.spec.to_value()) {
        (true, Value::Object(fields)) => out.extend(fields),
        (_, spec) => {
            out.insert("spec".into(), spec);
        }
    }
    Value::Object(out)
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC (`2026-11-24T22:11:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// The syntax a body or file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// Splits text into documents (YAML may hold several, separated by `---`; empty ones are
/// skipped). A syntax error names its line and column; nesting deeper than
/// [`crate::text::MAX_DEPTH`] and duplicate keys are refused (see [`crate::text`]).
pub fn parse_documents(text: &str, format: Format) -> Result<Vec<Value>, ResourceError> {
    let (name, read) = match format {
        Format::Json => ("JSON", crate::text::json_values(text)),
        Format::Yaml => ("YAML", crate::text::yaml_values(text)),
    };
    read.map_err(|e| ResourceError::Syntax {
        format: name,
        line: e.line,
        column: e.column,
        message: e.message,
    })
}

/// Parses text that must hold exactly one resource.
pub fn parse_one(text: &str, format: Format) -> Result<Submission, ResourceError> {
    let mut docs = parse_documents(text, format)?;
    match docs.len() {
        1 => from_value(docs.remove(0)),
        0 => Err(invalid("", "expected one resource, found an empty document")),
        n => Err(invalid("", format!("expected one resource, found {n} documents"))),
    }
}

/// Parses every document in `text`; all must be valid for any to be used.
pub fn parse_all(
    text: &str,
    format: Format,
) -> Result<Vec<Result<Submission, ResourceError>>, ResourceError> {
    Ok(parse_documents(text, format)?
        .into_iter()
        .map(from_value)
        .collect())
}

fn invalid(field: &str, message: impl Into<String>) -> ResourceError {
    ResourceError::Invalid(vec![FieldError::new(field, message)])
}

/// Turns one decoded document, in either form, into a validated submission.
pub fn from_value(value: Value) -> Result<Submission, ResourceError> {
    let Value::Object(obj) = value else {
        return Err(invalid(
            "",
            "expected a mapping with `type` (universal form) or `apiVersion` and `kind` (Kubernetes form)",
        ));
    };
    if obj.contains_key("apiVersion") || obj.contains_key("kind") {
        from_kubernetes(obj)
    } else {
        from_universal(obj)
    }
}

/// Fields collected from either form before the spec is decoded.
struct Envelope {
    kind: Kind,
    name: Option<String>,
    /// Where the name was written, for errors (`name` or `metadata.name`).
    name_field: &'static str,
    mesh: Option<String>,
    labels: BTreeMap<String, String>,
    expected_version: Option<i64>,
    spec_root: &'static str,
    spec: Value,
    errors: Vec<FieldError>,
}

fn take_string(
    obj: &mut Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match obj.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(FieldError::new(
                path,
                format!("expected a string, got {}", type_name(&other)),
            ));
            None
        }
    }
}

fn take_labels(
    obj: &mut Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => BTreeMap::<String, String>::deserialize(v).unwrap_or_else(|e| {
            errors.push(FieldError::new(
                path,
                format!("expected a map of strings to strings: {e}"),
            ));
            BTreeMap::new()
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn parse_kind(name: Option<String>, field: &str) -> Result<Kind, ResourceError> {
    match name {
        None => Err(invalid(field, "must be set to the resource's kind")),
        Some(name) => Kind::from_name(&name).ok_or(ResourceError::UnknownKind { kind: name }),
    }
}

fn from_universal(mut obj: Map<String, Value>) -> Result<Submission, ResourceError> {
    let mut errors = Vec::new();
    let kind = parse_kind(take_string(&mut obj, "type", "type", &mut errors), "type");
    let kind = match (kind, errors.is_empty()) {
        (Ok(kind), true) => kind,
        (Err(e), true) => return Err(e),
        (_, false) => return Err(ResourceError::Invalid(errors)),
    };
    let name = take_string(&mut obj, "name", "name", &mut errors);
    let mesh = take_string(&mut obj, "mesh", "mesh", &mut errors);
    let labels = take_labels(&mut obj, "labels", "labels", &mut errors);
    let expected_version = match obj.remove("version") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(n),
            _ => {
                errors.push(FieldError::new("version", "expected a non-negative integer"));
                None
            }
        },
    };
    // Read-only fields that GET returns: accepted so that a read resource can be written back.
    obj.remove("creationTime");
    obj.remove("modificationTime");
    let (spec_root, spec) = match obj.remove("spec") {
        Some(spec) => {
            for key in obj.keys() {
                errors.push(FieldError::new(
                    key.clone(),
                    "unknown field; the spec belongs under `spec`",
                ));
            }
            ("spec", spec)
        }
        None if kind.spec_inline() => ("", Value::Object(obj)),
        None => {
            for key in obj.keys() {
                errors.push(FieldError::new(
                    key.clone(),
                    format!("unknown field; the fields of a {kind} belong under `spec`"),
                ));
            }
            ("spec", Value::Object(Map::new()))
        }
    };
    finish(Envelope {
        kind,
        name,
        name_field: "name",
        mesh,
        labels,
        expected_version,
        spec_root,
        spec,
        errors,
    })
}

fn from_kubernetes(mut obj: Map<String, Value>) -> Result<Submission, ResourceError> {
    let mut errors = Vec::new();
    match take_string(&mut obj, "apiVersion", "apiVersion", &mut errors) {
        Some(v) if v == K8S_API_VERSION => {}
        Some(v) => errors.push(FieldError::new(
            "apiVersion",
            format!("must be {K8S_API_VERSION:?}, got {v:?}"),
        )),
        None => errors.push(FieldError::new(
            "apiVersion",
            format!("must be {K8S_API_VERSION:?}"),
        )),
    }
    let kind = parse_kind(take_string(&mut obj, "kind", "kind", &mut errors), "kind");
    let kind = match (kind, errors.is_empty()) {
        (Ok(kind), true) => kind,
        (Err(e), true) => return Err(e),
        (_, false) => return Err(ResourceError::Invalid(errors)),
    };
    let mut metadata = match obj.remove("metadata") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            errors.push(FieldError::new(
                "metadata",
                format!("expected a mapping, got {}", type_name(&other)),
            ));
            Map::new()
        }
        None => Map::new(),
    };
    let name = take_string(&mut metadata, "name", "metadata.name", &mut errors);
    let labels = take_labels(&mut metadata, "labels", "metadata.labels", &mut errors);
    let expected_version = match metadata.remove("resourceVersion") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
            Some(n) if n >= 0 => Some(n),
            _ => {
                errors.push(FieldError::new(
                    "metadata.resourceVersion",
                    "expected a non-negative integer",
                ));
                None
            }
        },
    };
    // Kuma's older Kubernetes policies carry `mesh` at the top level; newer ones use the label.
    let top_mesh = take_string(&mut obj, "mesh", "mesh", &mut errors);
    let mesh = labels.get(MESH_LABEL).cloned().or(top_mesh);
    obj.remove("status");
    let spec = obj.remove("spec").unwrap_or(Value::Object(Map::new()));
    for key in obj.keys() {
        errors.push(FieldError::new(
            key.clone(),
            "unknown field; expected apiVersion, kind, metadata, spec",
        ));
    }
    finish(Envelope {
        kind,
        name,
        name_field: "metadata.name",
        mesh,
        labels,
        expected_version,
        spec_root: "spec",
        spec,
        errors,
    })
}

fn finish(env: Envelope) -> Result<Submission, ResourceError> {
    let Envelope {
        kind,
        name,
        name_field,
        mesh,
        labels,
        expected_version,
        spec_root,
        spec,
        mut errors,
    } = env;
    let name = match name {
        Some(name) => {
            if let Err(e) = check_name(kind, &name, &labels) {
                errors.push(FieldError::new(name_field, format!("{name:?} {e}")));
            }
            name
        }
        None => {
            errors.push(FieldError::new(name_field, "must be set"));
            String::new()
        }
    };
    let mesh = match (kind.scope(), mesh) {
        (Scope::Global, None) => String::new(),
        (Scope::Global, Some(_)) => {
            errors.push(FieldError::new(
                "mesh",
                format!("must not be set: a {kind} does not belong to a mesh"),
            ));
            String::new()
        }
        (Scope::Mesh, mesh) => {
            let mesh = mesh.unwrap_or_else(|| DEFAULT_MESH.to_owned());
            if let Err(e) = dns1123_label(&mesh) {
                errors.push(FieldError::new("mesh", format!("{mesh:?} {e}")));
            }
            mesh
        }
    };
    let mut v = Validator::new(if name_field == "name" {
        "labels"
    } else {
        "metadata.labels"
    });
    validate_labels(&mut v, &labels);
    errors.extend(v.finish());
    match Spec::from_value(kind, spec_root, spec) {
        Ok(spec) => {
            let mut v = Validator::new(spec_root);
            spec.validate(&mut v);
            errors.extend(v.finish());
            if errors.is_empty() {
                return Ok(Submission {
                    resource: Resource {
                        mesh,
                        name,
                        labels,
                        spec,
                    },
                    expected_version,
                    trace: None,
                });
            }
        }
        Err(e) => errors.push(e),
    }
    Err(ResourceError::Invalid(errors))
}
