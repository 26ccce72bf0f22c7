//! TrafficRoute: becomes a MeshHTTPRoute (for HTTP services: its `http` entries as rules, then
//! its `split` or `destination` for every other request) and a MeshTCPRoute (for TCP ones: the
//! `split` or `destination`). Kuma's default `route-all` (every service to itself, round
//! robin) becomes nothing: that is what a mesh does without routes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{LegacyConf, json as j, target_of, to_targets};
use crate::policies::dataplane::{PROTOCOL_TAG, SERVICE_TAG};
use crate::policies::traffic_permission::Selector;
use crate::targetref::{TargetRef, TargetRefKind};
use crate::{FieldError, Kind};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRouteConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<Split>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRoute>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub weight: u32,
    pub destination: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(rename = "match")]
    pub matches: HttpMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modify: Option<Modify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<Split>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BTreeMap<String, String>>,
}

/// One of `exact`, `prefix`, `regex`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, StringMatch>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Modify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostModify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeadersModify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeadersModify>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostModify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_path: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersModify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<AddHeader>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Vec<RemoveHeader>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddHeader {
    pub name: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveHeader {
    pub name: String,
}

fn err(field: String, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// A destination selector as a backendRef of traffic to `service` (`*` is that service).
fn backend(
    field: &str,
    to: &str,
    selector: &BTreeMap<String, String>,
    weight: Option<u32>,
) -> Result<Value, FieldError> {
    let name = match selector.get(SERVICE_TAG).map(String::as_str) {
        None => return Err(err(format!("{field}.{SERVICE_TAG}"), "must name the service")),
        Some("*") => to.to_owned(),
        Some(s) => s.to_owned(),
    };
    let tags: BTreeMap<&String, &String> = selector
        .iter()
        .filter(|(k, v)| k.as_str() != SERVICE_TAG && k.as_str() != PROTOCOL_TAG && v.as_str() != "*")
        .collect();
    let mut b = match tags.is_empty() {
        true => json!({ "kind": "MeshService", "name": name }),
        false => json!({ "kind": "MeshServiceSubset", "name": name, "tags": tags }),
    };
    if let Some(w) = weight {
        b["weight"] = json!(w);
    }
    Ok(b)
}

/// The backends of a `split` or a `destination`, or `None` when neither is given.
fn backends(
    field: &str,
    to: &str,
    split: &Option<Vec<Split>>,
    destination: &Option<BTreeMap<String, String>>,
) -> Result<Option<Vec<Value>>, FieldError> {
    if let Some(split) = split {
        let refs = split
            .iter()
            .enumerate()
            .map(|(i, s)| {
                backend(
                    &format!("{field}.split[{i}].destination"),
                    to,
                    &s.destination,
                    Some(s.weight),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Some(refs));
    }
    destination
        .as_ref()
        .map(|d| backend(&format!("{field}.destination"), to, d, None).map(|b| vec![b]))
        .transpose()
}

fn string_match(field: &str, m: &StringMatch) -> Result<(&'static str, String), FieldError> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => Ok(("Exact", v.clone())),
        (None, Some(v), None) => Ok(("Prefix", v.clone())),
        (None, None, Some(v)) => Ok(("RegularExpression", v.clone())),
        _ => Err(err(
            field.to_owned(),
            "must have exactly one of exact, prefix, regex",
        )),
    }
}

fn rule(field: &str, to: &str, r: &HttpRoute) -> Result<Value, FieldError> {
    let mut m = Map::new();
    let mut prefix = false;
    if let Some(p) = &r.matches.path {
        let (kind, value) = string_match(&format!("{field}.match.path"), p)?;
        let (kind, value) = match kind {
            // Kuma's older prefix; a trailing slash says nothing more to a segment match.
            "Prefix" => {
                prefix = true;
                let trimmed = if value.len() > 1 {
                    value.trim_end_matches('/').to_owned()
                } else {
                    value
                };
                ("PathPrefix", trimmed)
            }
            other => (other, value),
        };
        m.insert("path".into(), json!({ "type": kind, "value": value }));
    }
    if let Some(method) = &r.matches.method {
        match string_match(&format!("{field}.match.method"), method)? {
            ("Exact", v) => m.insert("method".into(), json!(v.to_ascii_uppercase())),
            _ => {
                return Err(err(
                    format!("{field}.match.method"),
                    "only exact converts: MeshHTTPRoute matches one method",
                ));
            }
        };
    }
    if let Some(headers) = &r.matches.headers {
        let list = headers
            .iter()
            .map(|(name, hm)| {
                string_match(&format!("{field}.match.headers.{name}"), hm)
                    .map(|(kind, value)| json!({ "type": kind, "name": name, "value": value }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        m.insert("headers".into(), Value::Array(list));
    }
    let mut filters = Vec::new();
    if let Some(modify) = &r.modify {
        let at = format!("{field}.modify");
        let mut rewrite = Map::new();
        if let Some(path) = &modify.path {
            if path.regex.is_some() {
                return Err(err(
                    format!("{at}.path.regex"),
                    "has no MeshHTTPRoute equivalent: use rewritePrefix",
                ));
            }
            if let Some(p) = &path.rewrite_prefix {
                if !prefix {
                    return Err(err(
                        format!("{at}.path.rewritePrefix"),
                        "needs match.path.prefix: it replaces that prefix",
                    ));
                }
                // The match's prefix lost its trailing slash: so does its replacement.
                let p = if p.len() > 1 {
                    p.trim_end_matches('/')
                } else {
                    p.as_str()
                };
                rewrite.insert(
                    "path".into(),
                    json!({ "type": "ReplacePrefixMatch", "replacePrefixMatch": p }),
                );
            }
        }
        if let Some(host) = &modify.host {
            if host.from_path.is_some() {
                return Err(err(
                    format!("{at}.host.fromPath"),
                    "has no MeshHTTPRoute equivalent: use value",
                ));
            }
            if let Some(h) = &host.value {
                rewrite.insert("hostname".into(), json!(h));
            }
        }
        if !rewrite.is_empty() {
            filters.push(json!({ "type": "URLRewrite", "urlRewrite": rewrite }));
        }
        for (kind, field_name, headers) in [
            (
                "RequestHeaderModifier",
                "requestHeaderModifier",
                &modify.request_headers,
            ),
            (
                "ResponseHeaderModifier",
                "responseHeaderModifier",
                &modify.response_headers,
            ),
        ] {
            let Some(h) = headers else { continue };
            let pick = |append: bool| -> Vec<Value> {
                h.add
                    .iter()
                    .flatten()
                    .filter(|a| a.append.unwrap_or(false) == append)
                    .map(|a| json!({ "name": a.name, "value": a.value }))
                    .collect()
            };
            let mut modifier = Map::new();
            for (k, list) in [("set", pick(false)), ("add", pick(true))] {
                if !list.is_empty() {
                    modifier.insert(k.into(), Value::Array(list));
                }
            }
            let removed: Vec<&String> = h.remove.iter().flatten().map(|r| &r.name).collect();
            if !removed.is_empty() {
                modifier.insert("remove".into(), json!(removed));
            }
            if !modifier.is_empty() {
                filters.push(json!({ "type": kind, field_name: modifier }));
            }
        }
    }
    let mut default = Map::new();
    if !filters.is_empty() {
        default.insert("filters".into(), Value::Array(filters));
    }
    if let Some(refs) = backends(field, to, &r.split, &r.destination)? {
        default.insert("backendRefs".into(), Value::Array(refs));
    }
    Ok(json!({ "matches": [m], "default": default }))
}

impl LegacyConf for TrafficRouteConf {
    const BECOMES: &'static [Kind] = &[Kind::MeshHTTPRoute, Kind::MeshTCPRoute];
    const INBOUND: bool = false;

    fn convert(&self, _: &TargetRef, destinations: &[Selector]) -> Result<Vec<Option<Value>>, FieldError> {
        if let Some(lb) = &self.load_balancer
            && let Some(other) = lb.keys().find(|k| k.as_str() != "roundRobin")
        {
            return Err(err(
                format!("conf.loadBalancer.{other}"),
                "only roundRobin converts: give the algorithm in a MeshLoadBalancingStrategy",
            ));
        }
        let everything = destinations
            .iter()
            .all(|d| target_of(d).kind == TargetRefKind::Mesh);
        let to_itself = self.split.is_none()
            && self.http.is_none()
            && self
                .destination
                .as_ref()
                .is_none_or(|d| d.iter().all(|(k, v)| v == "*" || k == PROTOCOL_TAG));
        if everything && to_itself {
            return Ok(vec![None, None]);
        }
        if everything {
            return Err(err(
                "destinations".into(),
                "kuma.io/service: '*' with a split, destination or http routes cannot be converted: name the service whose traffic is routed",
            ));
        }
        let (mut http_to, mut tcp_to) = (Vec::new(), Vec::new());
        for target in to_targets("destinations", destinations)? {
            let service = target.name.clone().unwrap_or_default();
            let fallback = backends("conf", &service, &self.split, &self.destination)?;
            let mut rules = self
                .http
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| rule(&format!("conf.http[{i}]"), &service, r))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(refs) = &fallback {
                rules.push(json!({
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/" } }],
                    "default": { "backendRefs": refs },
                }));
                tcp_to.push(
                    json!({ "targetRef": j(&target), "rules": [{ "default": { "backendRefs": refs } }] }),
                );
            }
            if !rules.is_empty() {
                http_to.push(json!({ "targetRef": j(&target), "rules": rules }));
            }
        }
        let http = (!http_to.is_empty()).then(|| json!({ "to": http_to }));
        let tcp = (!tcp_to.is_empty()).then(|| json!({ "to": tcp_to }));
        Ok(vec![http, tcp])
    }
}
