//! The older outbound kinds (Timeout, Retry, CircuitBreaker, HealthCheck): `sources` become
//! the top-level targetRef, `destinations` the `to` entries, `conf` their `default`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{LegacyConf, json as j, to_targets};
use crate::policies::mesh_circuit_breaker::{Consecutive, FailurePercentage};
use crate::policies::mesh_retry::BackOff;
use crate::policies::traffic_permission::Selector;
use crate::targetref::TargetRef;
use crate::values::{GoDuration, IntOrDecimal, Percentage};
use crate::{FieldError, Kind};

/// `{to: [{targetRef, default}]}` for each destination.
fn to_spec(destinations: &[Selector], default: Value) -> Result<Vec<Option<Value>>, FieldError> {
    let to: Vec<Value> = to_targets("destinations", destinations)?
        .into_iter()
        .map(|t| json!({ "targetRef": j(&t), "default": default.clone() }))
        .collect();
    Ok(vec![Some(json!({ "to": to }))])
}

/// An object of the fields that are set.
fn object(fields: &[(&str, Value)]) -> Value {
    let map: Map<String, Value> = fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Value::Object(map)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTimeouts>,
    /// Kuma deprecated it for `http`; read the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcTimeouts>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<GoDuration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<GoDuration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<GoDuration>,
}

impl LegacyConf for TimeoutConf {
    const BECOMES: &'static [Kind] = &[Kind::MeshTimeout];
    const INBOUND: bool = false;

    fn convert(&self, _: &TargetRef, destinations: &[Selector]) -> Result<Vec<Option<Value>>, FieldError> {
        let http = self.http.as_ref();
        let grpc = self.grpc.as_ref();
        let idle = self
            .tcp
            .as_ref()
            .and_then(|t| t.idle_timeout.as_ref())
            .or(http.and_then(|h| h.idle_timeout.as_ref()));
        let http_part = object(&[
            (
                "requestTimeout",
                j(&http.and_then(|h| h.request_timeout.as_ref())),
            ),
            (
                "streamIdleTimeout",
                j(&http
                    .and_then(|h| h.stream_idle_timeout.as_ref())
                    .or(grpc.and_then(|g| g.stream_idle_timeout.as_ref()))),
            ),
            (
                "maxStreamDuration",
                j(&http
                    .and_then(|h| h.max_stream_duration.as_ref())
                    .or(grpc.and_then(|g| g.max_stream_duration.as_ref()))),
            ),
        ]);
        let http_part = match http_part.as_object().is_some_and(|m| m.is_empty()) {
            true => Value::Null,
            false => http_part,
        };
        let default = object(&[
            ("connectionTimeout", j(&self.connect_timeout)),
            ("idleTimeout", j(&idle)),
            ("http", http_part),
        ]);
        to_spec(destinations, default)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRetry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_status_codes: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempts: Option<u32>,
}

/// Kuma's older `retryOn` names as MeshRetry's.
fn http_retry_on(name: &str) -> Option<&'static str> {
    Some(match name {
        "all_5xx" => "5xx",
        "gateway_error" => "GatewayError",
        "reset" => "Reset",
        "connect_failure" => "ConnectFailure",
        "envoy_ratelimited" => "EnvoyRatelimited",
        "retriable_4xx" => "Retriable4xx",
        "refused_stream" => "RefusedStream",
        "http3_post_connect_failure" => "Http3PostConnectFailure",
        _ => return None,
    })
}

fn grpc_retry_on(name: &str) -> Option<&'static str> {
    Some(match name {
        "cancelled" => "Canceled",
        "deadline_exceeded" => "DeadlineExceeded",
        "internal" => "Internal",
        "resource_exhausted" => "ResourceExhausted",
        "unavailable" => "Unavailable",
        _ => return None,
    })
}

fn method_retry_on(method: &str) -> Option<String> {
    let known = [
        "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
    ];
    known.contains(&method).then(|| {
        let mut name = method.to_ascii_lowercase();
        name[..1].make_ascii_uppercase();
        format!("HttpMethod{name}")
    })
}

/// A MeshRetry `http` or `grpc` section: attempts, per-try timeout, back-off, conditions.
fn retry_section(
    num_retries: &Option<u32>,
    per_try_timeout: &Option<GoDuration>,
    back_off: &Option<BackOff>,
    on: Vec<Value>,
) -> Value {
    let on = if on.is_empty() {
        Value::Null
    } else {
        Value::Array(on)
    };
    object(&[
        ("numRetries", j(num_retries)),
        ("perTryTimeout", j(per_try_timeout)),
        ("backOff", j(back_off)),
        ("retryOn", on),
    ])
}

impl LegacyConf for RetryConf {
    const BECOMES: &'static [Kind] = &[Kind::MeshRetry];
    const INBOUND: bool = false;

    fn convert(&self, _: &TargetRef, destinations: &[Selector]) -> Result<Vec<Option<Value>>, FieldError> {
        let http = match &self.http {
            None => Value::Null,
            Some(h) => {
                let mut on = Vec::new();
                for (i, name) in h.retry_on.iter().flatten().enumerate() {
                    match (name.as_str(), http_retry_on(name)) {
                        // The codes come from retriableStatusCodes.
                        ("retriable_status_codes", _) => {}
                        (_, Some(n)) => on.push(json!(n)),
                        (other, None) => {
                            return Err(FieldError::new(
                                format!("conf.http.retryOn[{i}]"),
                                format!("{other:?} has no MeshRetry equivalent"),
                            ));
                        }
                    }
                }
                on.extend(
                    h.retriable_status_codes
                        .iter()
                        .flatten()
                        .map(|c| json!(c.to_string())),
                );
                for (i, m) in h.retriable_methods.iter().flatten().enumerate() {
                    let name = method_retry_on(m).ok_or_else(|| {
                        FieldError::new(
                            format!("conf.http.retriableMethods[{i}]"),
                            format!("{m:?} is not an HTTP method"),
                        )
                    })?;
                    on.push(json!(name));
                }
                retry_section(&h.num_retries, &h.per_try_timeout, &h.back_off, on)
            }
        };
        let grpc = match &self.grpc {
            None => Value::Null,
            Some(g) => {
                let mut on = Vec::new();
                for (i, name) in g.retry_on.iter().flatten().enumerate() {
                    let n = grpc_retry_on(name).ok_or_else(|| {
                        FieldError::new(
                            format!("conf.grpc.retryOn[{i}]"),
                            format!("{name:?} has no MeshRetry equivalent"),
                        )
                    })?;
                    on.push(json!(n));
                }
                retry_section(&g.num_retries, &g.per_try_timeout, &g.back_off, on)
            }
        };
        let tcp = self.tcp.as_ref().map_or(Value::Null, |t| {
            object(&[("maxConnectAttempt", j(&t.max_connect_attempts))])
        });
        to_spec(
            destinations,
            object(&[("http", http), ("grpc", grpc), ("tcp", tcp)]),
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_and_local_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Detectors>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Detectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_errors: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_errors: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_errors: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_deviation: Option<StandardDeviation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailurePercentage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandardDeviation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<IntOrDecimal>,
}

impl LegacyConf for CircuitBreakerConf {
    const BECOMES: &'static [Kind] = &[Kind::MeshCircuitBreaker];
    const INBOUND: bool = false;

    fn convert(&self, _: &TargetRef, destinations: &[Selector]) -> Result<Vec<Option<Value>>, FieldError> {
        let d = self.detectors.as_ref();
        let detectors = d.map_or(Value::Null, |d| {
            object(&[
                ("totalFailures", j(&d.total_errors)),
                ("gatewayFailures", j(&d.gateway_errors)),
                ("localOriginFailures", j(&d.local_errors)),
                (
                    "successRate",
                    d.standard_deviation.as_ref().map_or(Value::Null, |s| {
                        object(&[
                            ("requestVolume", j(&s.request_volume)),
                            ("minimumHosts", j(&s.minimum_hosts)),
                            ("standardDeviationFactor", j(&s.factor)),
                        ])
                    }),
                ),
                ("failurePercentage", j(&d.failure)),
            ])
        });
        let outlier = object(&[
            ("interval", j(&self.interval)),
            ("baseEjectionTime", j(&self.base_ejection_time)),
            ("maxEjectionPercent", j(&self.max_ejection_percent)),
            (
                "splitExternalAndLocalErrors",
                j(&self.split_external_and_local_errors),
            ),
            ("detectors", detectors),
        ]);
        let outlier = match outlier.as_object().is_some_and(|m| m.is_empty()) {
            true => Value::Null,
            false => outlier,
        };
        let default = object(&[
            ("connectionLimits", j(&self.thresholds)),
            ("outlierDetection", outlier),
        ]);
        to_spec(destinations, default)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckConf {
    pub interval: GoDuration,
    pub timeout: GoDuration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_jitter: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_traffic_on_panic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_log_health_check_failures: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_interval: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_connection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCheck {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_to_add: Option<Vec<HeaderToAdd>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderToAdd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<bool>,
    pub header: KeyValue,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl LegacyConf for HealthCheckConf {
    const BECOMES: &'static [Kind] = &[Kind::MeshHealthCheck];
    const INBOUND: bool = false;

    fn convert(&self, _: &TargetRef, destinations: &[Selector]) -> Result<Vec<Option<Value>>, FieldError> {
        let http = self.http.as_ref().map_or(Value::Null, |h| {
            let headers = |append: bool| -> Value {
                let list: Vec<Value> = h
                    .request_headers_to_add
                    .iter()
                    .flatten()
                    .filter(|a| a.append.unwrap_or(false) == append)
                    .map(|a| json!({ "name": a.header.key, "value": a.header.value }))
                    .collect();
                if list.is_empty() {
                    Value::Null
                } else {
                    Value::Array(list)
                }
            };
            let add = object(&[("set", headers(false)), ("add", headers(true))]);
            object(&[
                ("path", json!(h.path)),
                ("expectedStatuses", j(&h.expected_statuses)),
                (
                    "requestHeadersToAdd",
                    if add.as_object().is_some_and(|m| m.is_empty()) {
                        Value::Null
                    } else {
                        add
                    },
                ),
            ])
        });
        let default = object(&[
            ("interval", j(&self.interval)),
            ("timeout", j(&self.timeout)),
            ("unhealthyThreshold", j(&self.unhealthy_threshold)),
            ("healthyThreshold", j(&self.healthy_threshold)),
            ("initialJitter", j(&self.initial_jitter)),
            ("intervalJitter", j(&self.interval_jitter)),
            ("intervalJitterPercent", j(&self.interval_jitter_percent)),
            ("healthyPanicThreshold", j(&self.healthy_panic_threshold)),
            ("failTrafficOnPanic", j(&self.fail_traffic_on_panic)),
            ("eventLogPath", j(&self.event_log_path)),
            (
                "alwaysLogHealthCheckFailures",
                j(&self.always_log_health_check_failures),
            ),
            ("noTrafficInterval", j(&self.no_traffic_interval)),
            ("reuseConnection", j(&self.reuse_connection)),
            // Neither said: a TCP connect check, as Kuma's older kind did.
            (
                "tcp",
                match (&self.tcp, &self.http) {
                    (None, None) => json!({}),
                    (tcp, _) => j(tcp),
                },
            ),
            ("http", http),
        ]);
        to_spec(destinations, default)
    }
}

/// A header as the older kinds write it: `key`, `value`, and whether to append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyValueAppend {
    pub key: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<bool>,
}
