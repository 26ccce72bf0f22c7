//! MeshRetry: how failed requests to a destination (`to`) are retried, for TCP, HTTP and gRPC.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::common::{To, validate_to, validate_top};
use crate::targetref::{self, TargetRef};
use crate::validate::{Validate, Validator, check_header_name};
use crate::values::GoDuration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To<RetryConf>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRetry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRetry {
    /// Connection attempts made before giving up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempt: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Retries of a failed request (1 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<i64>,
    /// Timeout of each attempt; `0` turns it off, unset uses the route's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// Conditions that cause a retry: the names below or an HTTP status code as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<HttpRetryOn>>,
    /// A retry happens if the response carries any of these headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_response_headers: Option<Vec<HeaderMatch>>,
    /// Only requests carrying these headers are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_request_headers: Option<Vec<HeaderMatch>>,
    /// How endpoints are chosen for a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection: Option<Vec<Predicate>>,
    /// Attempts at choosing an endpoint before the last one chosen is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection_max_attempts: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<GrpcRetryOn>>,
}

/// Exponential back-off between retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackOff {
    /// 25ms when unset; must be greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<GoDuration>,
    /// 10 times `baseInterval` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<GoDuration>,
}

/// Back-off told by the destination through a response header (`Retry-After`...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitedBackOff {
    /// Headers tried in order; the first that parses gives the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_headers: Option<Vec<ResetHeader>>,
    /// 300s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<GoDuration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitFormat {
    /// Seconds to wait.
    Seconds,
    /// Unix time (seconds) to retry at.
    UnixTimestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetHeader {
    pub name: String,
    pub format: RateLimitFormat,
}

/// How a header is matched; Kuma's older upper-case names are accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HeaderMatchType {
    #[serde(alias = "EXACT")]
    Exact,
    #[serde(alias = "PRESENT")]
    Present,
    #[serde(alias = "REGULAR_EXPRESSION")]
    RegularExpression,
    #[serde(alias = "ABSENT")]
    Absent,
    #[serde(alias = "PREFIX")]
    Prefix,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// `Exact` when unset.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub match_type: Option<HeaderMatchType>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PredicateType {
    OmitPreviousHosts,
    OmitHostsWithTags,
    OmitPreviousPriorities,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Predicate {
    pub predicate: PredicateType,
    /// Endpoints with these tags are skipped (`OmitHostsWithTags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// How often priority load is recomputed (`OmitPreviousPriorities`, 2 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_frequency: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GrpcRetryOn {
    Canceled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

/// A condition of `http.retryOn`: one of Kuma's names or an HTTP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRetryOn {
    Named(&'static str),
    Status(u16),
}

/// Kuma's names; `5XX` is also accepted for `5xx`, as older Kuma releases wrote it.
const HTTP_RETRY_ON: &[&str] = &[
    "5xx",
    "GatewayError",
    "Reset",
    "Retriable4xx",
    "ConnectFailure",
    "EnvoyRatelimited",
    "RefusedStream",
    "Http3PostConnectFailure",
    "HttpMethodConnect",
    "HttpMethodDelete",
    "HttpMethodGet",
    "HttpMethodHead",
    "HttpMethodOptions",
    "HttpMethodPatch",
    "HttpMethodPost",
    "HttpMethodPut",
    "HttpMethodTrace",
];

impl HttpRetryOn {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = if text == "5XX" { "5xx" } else { text };
        if let Some(name) = HTTP_RETRY_ON.iter().find(|n| **n == text) {
            return Ok(HttpRetryOn::Named(name));
        }
        match text.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Ok(HttpRetryOn::Status(code)),
            _ => Err(format!(
                "unknown retry condition {text:?}: expected an HTTP status code or one of {}",
                HTTP_RETRY_ON.join(", ")
            )),
        }
    }
}

impl fmt::Display for HttpRetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpRetryOn::Named(n) => f.write_str(n),
            HttpRetryOn::Status(code) => write!(f, "{code}"),
        }
    }
}

impl Serialize for HttpRetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HttpRetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HttpRetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a retry condition such as 5xx, Reset or \"503\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HttpRetryOn, E> {
                HttpRetryOn::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HttpRetryOn, E> {
                HttpRetryOn::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for HttpRetryOn {
    fn schema_name() -> Cow<'static, str> {
        "HttpRetryOn".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A retry condition: one of Kuma's names, or an HTTP status code as a string.",
            "anyOf": [
                {"type": "string", "enum": HTTP_RETRY_ON},
                {"type": "string", "pattern": "^[1-5][0-9][0-9]$"}
            ]
        })
    }
}

impl Validate for MeshRetrySpec {
    fn validate(&self, v: &mut Validator) {
        validate_top(v, &self.target_ref, targetref::TOP_LEVEL_OR_ROUTE);
        let to_kinds = self.to.iter().flatten().map(|t| t.target_ref.kind);
        targetref::validate_route_target(v, self.target_ref.as_ref(), to_kinds, false);
        // As Kuma: an empty or absent `to` is valid and configures nothing.
        validate_to(v, &self.to, targetref::TO_OR_ROUTE);
    }
}

impl Validate for RetryConf {
    fn validate(&self, v: &mut Validator) {
        if self.tcp.is_none() && self.http.is_none() && self.grpc.is_none() {
            v.error("at least one of tcp, http, grpc must be set");
        }
        if let Some(tcp) = &self.tcp {
            v.field("tcp", |v| match tcp.max_connect_attempt {
                None => v.error_at("maxConnectAttempt", "must be set"),
                Some(0) => v.error_at("maxConnectAttempt", "must be greater than 0"),
                Some(_) => {}
            });
        }
        if let Some(h) = &self.http {
            v.field("http", |v| {
                let empty = h.num_retries.is_none()
                    && h.per_try_timeout.is_none()
                    && h.back_off.is_none()
                    && h.rate_limited_back_off.is_none()
                    && h.retry_on.is_none()
                    && h.retriable_response_headers.is_none()
                    && h.retriable_request_headers.is_none()
                    && h.host_selection.is_none()
                    && h.host_selection_max_attempts.is_none();
                if empty {
                    v.error("must not be empty");
                }
                common(v, h.num_retries, &h.back_off, &h.rate_limited_back_off);
                if h.host_selection_max_attempts.is_some_and(|n| n < 0) {
                    v.error_at("hostSelectionMaxAttempts", "must not be negative");
                }
                for (name, list) in [
                    ("retriableResponseHeaders", &h.retriable_response_headers),
                    ("retriableRequestHeaders", &h.retriable_request_headers),
                ] {
                    if let Some(list) = list {
                        v.field(name, |v| list.validate(v));
                    }
                }
                if let Some(preds) = &h.host_selection {
                    v.field("hostSelection", |v| validate_host_selection(v, preds));
                }
            });
        }
        if let Some(g) = &self.grpc {
            v.field("grpc", |v| {
                let empty = g.num_retries.is_none()
                    && g.per_try_timeout.is_none()
                    && g.back_off.is_none()
                    && g.rate_limited_back_off.is_none()
                    && g.retry_on.is_none();
                if empty {
                    v.error("must not be empty");
                }
                common(v, g.num_retries, &g.back_off, &g.rate_limited_back_off);
            });
        }
    }
}

/// Checks shared by `http` and `grpc`.
fn common(
    v: &mut Validator,
    num_retries: Option<i64>,
    back_off: &Option<BackOff>,
    rl: &Option<RateLimitedBackOff>,
) {
    if num_retries.is_some_and(|n| !(0..=i64::from(u32::MAX)).contains(&n)) {
        v.error_at("numRetries", "must be between 0 and 4294967295");
    }
    if let Some(b) = back_off {
        v.field("backOff", |v| {
            if b.base_interval.is_none() && b.max_interval.is_none() {
                v.error("at least one of baseInterval, maxInterval must be set");
            }
            if b.base_interval
                .as_ref()
                .is_some_and(|d| d.as_duration().is_zero())
            {
                v.error_at("baseInterval", "must be greater than 0");
            }
            let base = b
                .base_interval
                .as_ref()
                .map_or(DEFAULT_BASE_INTERVAL, GoDuration::as_duration);
            if b.max_interval
                .as_ref()
                .is_some_and(|max| max.as_duration() < base)
            {
                v.error_at(
                    "maxInterval",
                    "must not be less than baseInterval (25ms when not given)",
                );
            }
        });
    }
    if let Some(rl) = rl {
        v.field("rateLimitedBackOff", |v| {
            if rl
                .max_interval
                .as_ref()
                .is_some_and(|d| d.as_duration().is_zero())
            {
                v.error_at("maxInterval", "must be greater than 0");
            }
            match &rl.reset_headers {
                None => v.error_at("resetHeaders", "must be set"),
                Some(headers) if headers.is_empty() => {
                    v.error_at("resetHeaders", "must have at least one entry")
                }
                Some(headers) => v.field("resetHeaders", |v| {
                    for (i, h) in headers.iter().enumerate() {
                        v.index(i, |v| v.field("name", |v| check_header_name(v, &h.name)));
                    }
                }),
            }
        });
    }
}

/// The back-off's base interval when a policy gives none (Envoy's).
pub const DEFAULT_BASE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(25);

impl Validate for HeaderMatch {
    fn validate(&self, v: &mut Validator) {
        v.field("name", |v| check_header_name(v, &self.name));
    }
}

fn validate_host_selection(v: &mut Validator, preds: &[Predicate]) {
    let mut seen_priorities = false;
    for (i, p) in preds.iter().enumerate() {
        v.index(i, |v| match p.predicate {
            PredicateType::OmitHostsWithTags => v.error_at(
                "predicate",
                "OmitHostsWithTags is not supported yet: endpoints carry no tag metadata to omit by",
            ),
            PredicateType::OmitPreviousPriorities => {
                if seen_priorities {
                    v.error_at("predicate", "OmitPreviousPriorities may be given only once");
                }
                seen_priorities = true;
                if p.update_frequency.is_some_and(|n| n <= 0) {
                    v.error_at("updateFrequency", "must be greater than 0");
                }
            }
            PredicateType::OmitPreviousHosts => {}
        });
    }
}

impl crate::resolve::Targeted for MeshRetrySpec {
    const KIND: crate::Kind = crate::Kind::MeshRetry;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Outbound for MeshRetrySpec {
    type Conf = RetryConf;
    fn to(&self) -> &[To<RetryConf>] {
        self.to.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(RetryConf { tcp, http, grpc });
crate::merge_fields!(TcpRetry { max_connect_attempt });
crate::merge_fields!(HttpRetry {
    num_retries,
    per_try_timeout,
    back_off,
    rate_limited_back_off,
    retry_on,
    retriable_response_headers,
    retriable_request_headers,
    host_selection,
    host_selection_max_attempts
});
crate::merge_fields!(GrpcRetry {
    num_retries,
    per_try_timeout,
    back_off,
    rate_limited_back_off,
    retry_on
});
crate::merge_fields!(BackOff {
    base_interval,
    max_interval
});
crate::merge_fields!(RateLimitedBackOff {
    reset_headers,
    max_interval
});

#[cfg(test)]
mod tests {
    use super::HttpRetryOn;
    use crate::{Format, Spec, parse_one};

    const HEAD: &str = "type: MeshRetry\nname: x\nmesh: default\nspec:\n";

    fn errors(spec: &str) -> Vec<String> {
        crate::testing::errors(&format!("{HEAD}{spec}"))
    }

    #[test]
    fn kuma_example_parses() {
        let spec = "  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: MeshService
        name: backend
      default:
        tcp:
          maxConnectAttempt: 5
        http:
          numRetries: 10
          perTryTimeout: 1s
          backOff: {baseInterval: 15s, maxInterval: 20m}
          rateLimitedBackOff:
            maxInterval: 1m
            resetHeaders:
              - {name: retry-after, format: Seconds}
              - {name: x-ratelimit-reset, format: UnixTimestamp}
          retryOn: [5xx, 5XX, GatewayError, Reset, Retriable4xx, HttpMethodGet, \"429\", \"503\"]
          retriableResponseHeaders:
            - {type: Exact, name: x-retry, value: \"true\"}
          retriableRequestHeaders:
            - {type: Present, name: x-idempotent}
          hostSelection:
            - predicate: OmitPreviousHosts
            - predicate: OmitPreviousPriorities
              updateFrequency: 2
          hostSelectionMaxAttempts: 3
        grpc:
          numRetries: 5
          perTryTimeout: 200ms
          backOff: {baseInterval: 25ms}
          retryOn: [Canceled, DeadlineExceeded, Internal, ResourceExhausted, Unavailable]
";
        let sub = parse_one(&format!("{HEAD}{spec}"), Format::Yaml).unwrap();
        let Spec::MeshRetry(s) = &sub.resource.spec else {
            panic!()
        };
        let http = s.to.as_ref().unwrap()[0].default.http.as_ref().unwrap();
        let retry_on = http.retry_on.as_ref().unwrap();
        assert_eq!(retry_on[0], HttpRetryOn::Named("5xx"));
        assert_eq!(retry_on[1], HttpRetryOn::Named("5xx"));
        assert_eq!(retry_on[6], HttpRetryOn::Status(429));
    }

    #[test]
    fn invalid_examples_name_their_fields() {
        let to = "  to:\n    - targetRef: {kind: Mesh}\n      default:\n";
        let d = "spec.to[0].default";
        let errs = errors(&format!(
            "{to}        http:\n          numRetries: -1\n          backOff: {{}}\n          rateLimitedBackOff: {{maxInterval: 10s}}\n          hostSelection:\n            - predicate: OmitHostsWithTags\n"
        ));
        assert_eq!(
            errs,
            vec![
                format!("{d}.http.numRetries: must be between 0 and 4294967295"),
                format!("{d}.http.backOff: at least one of baseInterval, maxInterval must be set"),
                format!("{d}.http.rateLimitedBackOff.resetHeaders: must be set"),
                format!(
                    "{d}.http.hostSelection[0].predicate: OmitHostsWithTags is not supported yet: endpoints carry no tag metadata to omit by"
                ),
            ]
        );
        let errs = errors(&format!(
            "{to}        http:\n          retryOn: [5xx, Sometimes]\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!(
                "{d}.http.retryOn[1]: unknown retry condition \"Sometimes\""
            )),
            "{errs:?}"
        );
        let errs = errors(&format!("{to}        grpc:\n          retryOn: [Unknown]\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!("{d}.grpc.retryOn[0]: unknown variant `Unknown`")),
            "{errs:?}"
        );
        let errs = errors(&format!("{to}        tcp: {{}}\n        grpc: {{}}\n"));
        assert_eq!(
            errs,
            vec![
                format!("{d}.tcp.maxConnectAttempt: must be set"),
                format!("{d}.grpc: must not be empty")
            ]
        );
        // As in Kuma, a MeshRetry without `to` entries is valid and configures nothing.
        let bare = format!("{HEAD}  targetRef: {{kind: Mesh}}\n  to: []\n");
        assert!(crate::parse_one(&bare, crate::Format::Yaml).is_ok());
    }
}
