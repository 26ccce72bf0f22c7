//! MeshTrace: where proxies send spans, how many, and with which tags.
//!
//! Two forms are accepted. The targetRef form (`targetRef` + `default.backends[]` with
//! `openTelemetry.endpoint`, `zipkin.url` or `datadog.url`) and the older form that lists
//! `backends[]` with `type: open_telemetry|zipkin|datadog` and a `conf` (`endpoint`, `url`,
//! `headers`), which users of Kuma's mesh-level tracing write.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::targetref::{self, TargetRef};
use crate::validate::{Validate, Validator, check_header_name};
use crate::values::Percentage;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTraceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// The targetRef form's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<MeshTraceConf>,
    /// The older form's backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<LegacyTraceBackend>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTraceConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<TraceBackend>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<TraceTag>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TraceBackendType {
    Zipkin,
    Datadog,
    OpenTelemetry,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceBackend {
    #[serde(rename = "type")]
    pub backend_type: TraceBackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<DatadogBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OpenTelemetryBackend>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZipkinBackend {
    pub url: String,
    #[serde(default, rename = "traceId128bit", skip_serializing_if = "Option::is_none")]
    pub trace_id_128bit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_span_context: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatadogBackend {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_service: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenTelemetryBackend {
    /// The collector's OTLP/gRPC address, `host:port`.
    pub endpoint: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<Percentage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTag>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LegacyTraceBackendType {
    OpenTelemetry,
    Zipkin,
    Datadog,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyTraceBackend {
    pub name: String,
    #[serde(rename = "type")]
    pub backend_type: LegacyTraceBackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Percentage>,
    pub conf: LegacyTraceConf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegacyTraceConf {
    /// OpenTelemetry: the collector's `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Sent with every export, as gRPC metadata for OpenTelemetry (an API key, say): a value,
    /// or `{secret: NAME}`, the mesh's Secret NAME. Only admins read the values back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, HeaderValue>>,
    /// Zipkin and Datadog: the collector's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, rename = "traceId128bit", skip_serializing_if = "Option::is_none")]
    pub trace_id_128bit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_span_context: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_service: Option<bool>,
}

/// A header's value: written inline, or taken from a Secret of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HeaderValue {
    Inline(String),
    Secret(SecretRef),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The name of a Secret in the policy's mesh.
    pub secret: String,
}

impl MeshTraceSpec {
    /// Hides the values of inline headers (for readers who are not admins); a secret's name
    /// stays, its value is not here.
    pub fn redact(&mut self) {
        for backend in self.backends.iter_mut().flatten() {
            for value in backend.conf.headers.iter_mut().flat_map(|h| h.values_mut()) {
                if let HeaderValue::Inline(text) = value {
                    *text = crate::policies::secret::REDACTED.to_owned();
                }
            }
        }
    }
}

/// Checks `host:port`, the form OTLP/gRPC endpoints take.
pub fn check_host_port(text: &str) -> Result<(), String> {
    let bad = || format!("{text:?} must be host:port (e.g. otel-collector:4317)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

fn check_url(v: &mut Validator, field: &str, url: &str) {
    let ok = ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    });
    if !ok {
        v.error_at(field, format!("{url:?} must be an http:// or https:// URL"));
    }
}

impl Validate for MeshTraceSpec {
    fn validate(&self, v: &mut Validator) {
        match (&self.default, &self.backends) {
            (Some(_), Some(_)) => v.error_at(
                "backends",
                "must not be set together with default: use default.backends (targetRef form) or backends (older form)",
            ),
            (None, None) => v.error("one of default (targetRef form) or backends (older form) must be set"),
            _ => {}
        }
        if let Some(tr) = &self.target_ref {
            v.field("targetRef", |v| tr.validate_in(v, targetref::TOP_LEVEL));
        }
        if let Some(conf) = &self.default {
            v.nested("default", conf);
        }
        if let Some(backends) = &self.backends {
            if self.target_ref.is_some() {
                v.error_at(
                    "targetRef",
                    "is only used with the targetRef form (default.backends)",
                );
            }
            v.field("backends", |v| {
                if backends.is_empty() {
                    v.error("must have at least one backend");
                }
                backends.validate(v);
            });
        }
    }
}

impl Validate for MeshTraceConf {
    fn validate(&self, v: &mut Validator) {
        if let Some(backends) = &self.backends {
            v.field("backends", |v| {
                if backends.len() > 1 {
                    v.error("at most one backend is supported");
                }
                backends.validate(v);
            });
        }
        if let Some(tags) = &self.tags {
            v.field("tags", |v| {
                for (i, tag) in tags.iter().enumerate() {
                    v.index(i, |v| {
                        if tag.name.is_empty() {
                            v.error_at("name", "must not be empty");
                        }
                        match (&tag.literal, &tag.header) {
                            (Some(_), Some(_)) => {
                                v.error("exactly one of literal or header must be set, not both")
                            }
                            (None, None) => v.error("exactly one of literal or header must be set"),
                            (None, Some(h)) if h.name.is_empty() => {
                                v.error_at("header", "name must not be empty")
                            }
                            _ => {}
                        }
                    });
                }
            });
        }
    }
}

impl Validate for TraceBackend {
    fn validate(&self, v: &mut Validator) {
        if self.backend_type == TraceBackendType::Datadog {
            v.error_at("type", DATADOG);
        }
        let (wanted, present) = match self.backend_type {
            TraceBackendType::Zipkin => ("zipkin", self.zipkin.is_some()),
            TraceBackendType::Datadog => ("datadog", self.datadog.is_some()),
            TraceBackendType::OpenTelemetry => ("openTelemetry", self.open_telemetry.is_some()),
        };
        if !present {
            v.error_at(wanted, format!("must be set for type {:?}", self.backend_type));
        }
        let set = [
            ("zipkin", self.zipkin.is_some()),
            ("datadog", self.datadog.is_some()),
            ("openTelemetry", self.open_telemetry.is_some()),
        ];
        for (name, is_set) in set {
            if is_set && name != wanted {
                v.error_at(name, format!("must not be set for type {:?}", self.backend_type));
            }
        }
        if let Some(z) = &self.zipkin {
            v.field("zipkin", |v| {
                check_url(v, "url", &z.url);
                check_zipkin_api(v, &z.api_version);
            });
        }
        if let Some(d) = &self.datadog {
            v.field("datadog", |v| check_url(v, "url", &d.url));
        }
        if let Some(o) = &self.open_telemetry {
            v.field("openTelemetry", |v| {
                if let Err(e) = check_host_port(&o.endpoint) {
                    v.error_at("endpoint", e);
                }
            });
        }
    }
}

const DATADOG: &str = "Datadog is not supported yet: send spans to an OpenTelemetry collector (it exports to Datadog) or Zipkin";

/// Zipkin's API versions, as Kuma names them (v1 is gone from Envoy).
fn check_zipkin_api(v: &mut Validator, version: &Option<String>) {
    if let Some(version) = version
        && !matches!(version.as_str(), "httpJson" | "httpProto")
    {
        v.error_at(
            "apiVersion",
            format!("{version:?} is not supported: expected httpJson or httpProto"),
        );
    }
}

impl Validate for LegacyTraceBackend {
    fn validate(&self, v: &mut Validator) {
        if self.backend_type == LegacyTraceBackendType::Datadog {
            v.error_at("type", DATADOG);
        }
        if self.name.is_empty() {
            v.error_at("name", "must not be empty");
        }
        v.field("conf", |v| {
            let c = &self.conf;
            match self.backend_type {
                LegacyTraceBackendType::OpenTelemetry => match &c.endpoint {
                    None => v.error_at("endpoint", "must be set for type open_telemetry"),
                    Some(e) => {
                        if let Err(e) = check_host_port(e) {
                            v.error_at("endpoint", e);
                        }
                    }
                },
                LegacyTraceBackendType::Zipkin | LegacyTraceBackendType::Datadog => match &c.url {
                    None => v.error_at("url", "must be set for this type"),
                    Some(u) => check_url(v, "url", u),
                },
            }
            check_zipkin_api(v, &c.api_version);
            if let Some(headers) = &c.headers {
                v.field("headers", |v| {
                    for (name, value) in headers {
                        v.field(name, |v| {
                            check_header_name(v, name);
                            if let HeaderValue::Secret(r) = value
                                && let Err(e) = crate::validate::dns1123_subdomain(&r.secret)
                            {
                                v.error_at("secret", format!("{:?} {e}", r.secret));
                            }
                        });
                    }
                });
            }
        });
    }
}

crate::merge_fields!(MeshTraceConf {
    backends,
    sampling,
    tags
});
crate::merge_fields!(Sampling {
    overall,
    client,
    random
});
