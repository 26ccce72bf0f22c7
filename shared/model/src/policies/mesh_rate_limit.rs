//! MeshRateLimit: local rate limits on a proxy's inbounds (`from` with `targetRef: Mesh`, or
//! `rules`): HTTP requests per interval, answered with `onRateLimit`'s status and headers
//! beyond it, and TCP connections per interval.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{From, Rule, validate_inbound_only};
use super::mesh_http_route::HeaderValue;
use crate::targetref::TargetRef;
use crate::validate::{Validate, Validator, check_header_name};
use crate::values::GoDuration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRateLimitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<From<RateLimitConf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule<RateLimitConf>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalLimits>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpLimit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate: Option<Rate>,
}

/// `num` per `interval`: a bucket of `num` tokens, refilled every `interval`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rate {
    pub num: u32,
    pub interval: GoDuration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnRateLimit {
    /// 429 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<ResponseHeaders>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HeaderValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HeaderValue>>,
}

/// The statuses a limited request may be answered with: the 4xx and 5xx of Envoy's status
/// enum (it refuses others, and answers 429 for anything under 400).
pub const LIMIT_STATUSES: &[u32] = &[
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423,
    424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// Envoy refills a token bucket no more often than every 50 ms.
pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

fn validate_rate(v: &mut Validator, field: &str, rate: &Option<Rate>, disabled: Option<bool>) {
    match rate {
        None if disabled != Some(true) => v.error_at(field, "must be set unless disabled is true"),
        None => {}
        Some(r) => v.field(field, |v| {
            if r.num == 0 {
                v.error_at("num", "must be greater than 0");
            }
            if r.interval.as_duration() < MIN_INTERVAL {
                v.error_at("interval", "must be at least 50ms");
            }
        }),
    }
}

impl Validate for MeshRateLimitSpec {
    fn validate(&self, v: &mut Validator) {
        validate_inbound_only(v, &self.target_ref, &self.from, &self.rules);
    }
}

impl Validate for RateLimitConf {
    fn validate(&self, v: &mut Validator) {
        let Some(local) = &self.local else {
            return v.error_at("local", "must be set: the limits to enforce");
        };
        v.field("local", |v| {
            if local.http.is_none() && local.tcp.is_none() {
                v.error("at least one of http, tcp must be set");
            }
            if let Some(h) = &local.http {
                v.field("http", |v| {
                    validate_rate(v, "requestRate", &h.request_rate, h.disabled);
                    let Some(on) = &h.on_rate_limit else { return };
                    v.field("onRateLimit", |v| {
                        if let Some(s) = on.status.filter(|s| !LIMIT_STATUSES.contains(s)) {
                            v.error_at(
                                "status",
                                format!(
                                    "must be a 4xx or 5xx status Envoy knows (429, 423, 503, ...), got {s}"
                                ),
                            );
                        }
                        let headers = on.headers.iter().flat_map(|h| [("set", &h.set), ("add", &h.add)]);
                        for (field, list) in headers {
                            for (i, h) in list.iter().flatten().enumerate() {
                                v.field(&format!("headers.{field}[{i}].name"), |v| {
                                    check_header_name(v, &h.name)
                                });
                            }
                        }
                    });
                });
            }
            if let Some(t) = &local.tcp {
                v.field("tcp", |v| {
                    validate_rate(v, "connectionRate", &t.connection_rate, t.disabled)
                });
            }
        });
    }
}

impl crate::resolve::Targeted for MeshRateLimitSpec {
    const KIND: crate::Kind = crate::Kind::MeshRateLimit;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Inbound for MeshRateLimitSpec {
    type Conf = RateLimitConf;
    fn from(&self) -> &[From<RateLimitConf>] {
        self.from.as_deref().unwrap_or_default()
    }
    fn rules(&self) -> &[Rule<RateLimitConf>] {
        self.rules.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(RateLimitConf { local });
crate::merge_fields!(LocalLimits { http, tcp });
crate::merge_fields!(HttpLimit {
    disabled,
    request_rate,
    on_rate_limit
});
crate::merge_fields!(TcpLimit {
    disabled,
    connection_rate
});
crate::merge_by_replacing!(Rate, OnRateLimit);
