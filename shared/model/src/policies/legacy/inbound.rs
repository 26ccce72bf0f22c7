//! The older inbound kinds (FaultInjection, RateLimit): `destinations` become the top-level
//! targetRef (the proxies whose inbound traffic they shape), `sources` the `from` entries.
//! Only every client (`kuma.io/service: '*'`) can be converted: the targetRef kinds here take
//! `from` with `Mesh` alone.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::outbound::KeyValueAppend;
use super::{LegacyConf, from_all, json as j};
use crate::policies::traffic_permission::Selector;
use crate::targetref::TargetRef;
use crate::values::{GoDuration, Percentage};
use crate::{FieldError, Kind};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjectionConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<Bandwidth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    pub http_status: u32,
    pub percentage: Percentage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    pub value: GoDuration,
    pub percentage: Percentage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bandwidth {
    pub limit: String,
    pub percentage: Percentage,
}

impl LegacyConf for FaultInjectionConf {
    const BECOMES: &'static [Kind] = &[Kind::MeshFaultInjection];
    const INBOUND: bool = true;

    fn convert(&self, _: &TargetRef, sources: &[Selector]) -> Result<Vec<Option<Value>>, FieldError> {
        from_all(sources)?;
        if self.abort.is_none() && self.delay.is_none() && self.response_bandwidth.is_none() {
            return Err(FieldError::new(
                "conf",
                "at least one of abort, delay, responseBandwidth must be set",
            ));
        }
        let fault = json!({
            "abort": j(&self.abort),
            "delay": j(&self.delay),
            "responseBandwidth": j(&self.response_bandwidth),
        });
        let fault: serde_json::Map<String, Value> = fault
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(vec![Some(json!({
            "from": [{ "targetRef": { "kind": "Mesh" }, "default": { "http": [fault] } }],
        }))])
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConf {
    pub http: HttpRateLimit,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRateLimit {
    pub requests: u32,
    pub interval: GoDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnRateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<KeyValueAppend>>,
}

impl LegacyConf for RateLimitConf {
    const BECOMES: &'static [Kind] = &[Kind::MeshRateLimit];
    const INBOUND: bool = true;

    fn convert(&self, _: &TargetRef, sources: &[Selector]) -> Result<Vec<Option<Value>>, FieldError> {
        from_all(sources)?;
        let h = &self.http;
        let mut http = json!({ "requestRate": { "num": h.requests, "interval": j(&h.interval) } });
        if let Some(on) = &h.on_rate_limit {
            let pick = |append: bool| -> Vec<Value> {
                on.headers
                    .iter()
                    .flatten()
                    .filter(|kv| kv.append.unwrap_or(false) == append)
                    .map(|kv| json!({ "name": kv.key, "value": kv.value }))
                    .collect()
            };
            let mut headers = serde_json::Map::new();
            for (field, list) in [("set", pick(false)), ("add", pick(true))] {
                if !list.is_empty() {
                    headers.insert(field.into(), Value::Array(list));
                }
            }
            let mut limited = serde_json::Map::new();
            if let Some(s) = on.status {
                limited.insert("status".into(), json!(s));
            }
            if !headers.is_empty() {
                limited.insert("headers".into(), Value::Object(headers));
            }
            http["onRateLimit"] = Value::Object(limited);
        }
        Ok(vec![Some(json!({
            "from": [{ "targetRef": { "kind": "Mesh" }, "default": { "local": { "http": http } } }],
        }))])
    }
}
