//! MeshHealthCheck: active health checking of a destination's endpoints (`to`) over HTTP,
//! TCP or gRPC.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{To, validate_to, validate_top};
use crate::targetref::{self, TargetRef};
use crate::validate::{Validate, Validator, check_header_name};
use crate::values::{GoDuration, Percentage};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshHealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To<HealthCheckConf>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckConf {
    /// Time between two checks (1m when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Time between two checks of an endpoint found unhealthy (`interval` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_interval: Option<GoDuration>,
    /// How long to wait for an answer (15s when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Failed checks in a row before an endpoint counts as unhealthy (5 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i32>,
    /// Passed checks in a row before an endpoint counts as healthy again (1 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i32>,
    /// The first check starts after a random delay up to this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_jitter: Option<GoDuration>,
    /// Up to this much is added to every interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<GoDuration>,
    /// Up to this percentage of the interval is added to every interval (0 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter_percent: Option<i32>,
    /// Below this percentage of healthy endpoints, all endpoints are used again (panic mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percentage>,
    /// In panic mode, fail every request instead of using unhealthy endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_traffic_on_panic: Option<bool>,
    /// Interval used while the destination has never received traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_interval: Option<GoDuration>,
    /// File the proxy writes health check events to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log_path: Option<String>,
    /// Log every failed check, not only the first of a series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_log_health_check_failures: Option<bool>,
    /// Keep the connection open between checks (true when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_connection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Base64 payload sent to the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Base64 blocks that must all appear in the answer, in order; without them a successful
    /// connection is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Path requested (`/` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_to_add: Option<HeaderModifier>,
    /// Response statuses counted as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<i32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Service name sent in the gRPC health check request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// `:authority` of the request (the cluster's name when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Headers added to (`add`) or replaced in (`set`) each check request, at most 16 of each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HeaderKeyValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HeaderKeyValue>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderKeyValue {
    pub name: String,
    pub value: String,
}

/// A TCP check's payload (`send`, `receive[]`), which Kuma writes in base64.
pub fn decode_payload(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()
}

impl Validate for MeshHealthCheckSpec {
    fn validate(&self, v: &mut Validator) {
        validate_top(v, &self.target_ref, targetref::TOP_LEVEL);
        // As Kuma: an empty or absent `to` is valid and configures nothing.
        validate_to(v, &self.to, targetref::TO);
    }
}

fn positive_duration(v: &mut Validator, field: &str, value: &Option<GoDuration>) {
    if value.as_ref().is_some_and(|d| d.as_duration().is_zero()) {
        v.error_at(field, "must be greater than 0");
    }
}

impl Validate for HealthCheckConf {
    fn validate(&self, v: &mut Validator) {
        positive_duration(v, "interval", &self.interval);
        positive_duration(v, "unhealthyInterval", &self.unhealthy_interval);
        positive_duration(v, "timeout", &self.timeout);
        positive_duration(v, "initialJitter", &self.initial_jitter);
        positive_duration(v, "intervalJitter", &self.interval_jitter);
        positive_duration(v, "noTrafficInterval", &self.no_traffic_interval);
        for (field, value) in [
            ("unhealthyThreshold", self.unhealthy_threshold),
            ("healthyThreshold", self.healthy_threshold),
        ] {
            if value.is_some_and(|n| n <= 0) {
                v.error_at(field, "must be greater than 0");
            }
        }
        if self
            .interval_jitter_percent
            .is_some_and(|p| !(0..=100).contains(&p))
        {
            v.error_at("intervalJitterPercent", "must be between 0 and 100");
        }
        if self.event_log_path.as_ref().is_some_and(|p| p.trim().is_empty()) {
            v.error_at("eventLogPath", "must not be empty");
        }
        if self.http.is_none() && self.tcp.is_none() && self.grpc.is_none() {
            v.error("at least one of http, tcp, grpc must be set");
        }
        if let Some(tcp) = &self.tcp {
            v.field("tcp", |v| {
                if let Some(send) = &tcp.send
                    && decode_payload(send).is_none()
                {
                    v.error_at("send", "must be base64");
                }
                for (i, r) in tcp.receive.iter().flatten().enumerate() {
                    if decode_payload(r).is_none() {
                        v.field("receive", |v| v.index(i, |v| v.error("must be base64")));
                    }
                }
            });
        }
        if let Some(http) = &self.http {
            v.field("http", |v| {
                if http.path.as_ref().is_some_and(|p| p.is_empty()) {
                    v.error_at("path", "must not be empty");
                }
                if let Some(statuses) = &http.expected_statuses {
                    v.field("expectedStatuses", |v| {
                        for (i, s) in statuses.iter().enumerate() {
                            if !(100..=599).contains(s) {
                                v.index(i, |v| {
                                    v.error(format!("{s} is not an HTTP status code (100-599)"))
                                });
                            }
                        }
                    });
                }
                if let Some(m) = &http.request_headers_to_add {
                    v.field("requestHeadersToAdd", |v| {
                        for (name, list) in [("set", &m.set), ("add", &m.add)] {
                            let Some(list) = list else { continue };
                            v.field(name, |v| {
                                if list.len() > 16 {
                                    v.error("must have at most 16 entries");
                                }
                                for (i, h) in list.iter().enumerate() {
                                    v.index(i, |v| v.field("name", |v| check_header_name(v, &h.name)));
                                }
                            });
                        }
                    });
                }
            });
        }
    }
}

impl crate::resolve::Targeted for MeshHealthCheckSpec {
    const KIND: crate::Kind = crate::Kind::MeshHealthCheck;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Outbound for MeshHealthCheckSpec {
    type Conf = HealthCheckConf;
    fn to(&self) -> &[To<HealthCheckConf>] {
        self.to.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(HealthCheckConf {
    interval,
    unhealthy_interval,
    timeout,
    unhealthy_threshold,
    healthy_threshold,
    initial_jitter,
    interval_jitter,
    interval_jitter_percent,
    healthy_panic_threshold,
    fail_traffic_on_panic,
    no_traffic_interval,
    event_log_path,
    always_log_health_check_failures,
    reuse_connection,
    tcp,
    http,
    grpc
});
crate::merge_fields!(TcpHealthCheck {
    disabled,
    send,
    receive
});
crate::merge_fields!(HttpHealthCheck {
    disabled,
    path,
    request_headers_to_add,
    expected_statuses
});
crate::merge_fields!(GrpcHealthCheck {
    disabled,
    service_name,
    authority
});
crate::merge_fields!(HeaderModifier { set, add });

#[cfg(test)]
mod tests {
    use crate::{Format, Spec, parse_one};

    const HEAD: &str = "type: MeshHealthCheck\nname: x\nmesh: default\nspec:\n";

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
        interval: 10s
        timeout: 2s
        unhealthyThreshold: 3
        healthyThreshold: 1
        initialJitter: 5s
        intervalJitter: 6s
        intervalJitterPercent: 10
        healthyPanicThreshold: 60
        failTrafficOnPanic: true
        noTrafficInterval: 10s
        eventLogPath: /tmp/health-check.log
        alwaysLogHealthCheckFailures: true
        reuseConnection: false
        http:
          disabled: false
          path: /health
          requestHeadersToAdd:
            add:
              - name: x-some-header
                value: value
            set:
              - name: x-kuma
                value: health
          expectedStatuses: [200, 201]
        tcp:
          disabled: true
          send: Zm9v
          receive: [YmFy, YmF6]
        grpc:
          serviceName: health
          authority: backend.svc
";
        let sub = parse_one(&format!("{HEAD}{spec}"), Format::Yaml).unwrap();
        let Spec::MeshHealthCheck(s) = &sub.resource.spec else {
            panic!()
        };
        let conf = &s.to.as_ref().unwrap()[0].default;
        assert_eq!(
            conf.http.as_ref().unwrap().expected_statuses,
            Some(vec![200, 201])
        );
    }

    #[test]
    fn invalid_examples_name_their_fields() {
        let to = "  to:\n    - targetRef: {kind: Mesh}\n      default:\n";
        let d = "spec.to[0].default";
        let errs = errors(&format!(
            "{to}        interval: 0s\n        unhealthyThreshold: 0\n        intervalJitterPercent: 150\n        http:\n          expectedStatuses: [200, 99]\n          requestHeadersToAdd:\n            add: [{{name: 'bad header', value: x}}]\n"
        ));
        assert_eq!(
            errs,
            vec![
                format!("{d}.interval: must be greater than 0"),
                format!("{d}.unhealthyThreshold: must be greater than 0"),
                format!("{d}.intervalJitterPercent: must be between 0 and 100"),
                format!("{d}.http.expectedStatuses[1]: 99 is not an HTTP status code (100-599)"),
                format!(
                    "{d}.http.requestHeadersToAdd.add[0].name: \"bad header\" is not a valid header name"
                ),
            ]
        );
        let errs = errors(&format!("{to}        interval: 10s\n"));
        assert_eq!(
            errs,
            vec![format!("{d}: at least one of http, tcp, grpc must be set")]
        );
        let errs = errors(&format!("{to}        tcp: {{}}\n        timeout: soon\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!("{d}.timeout: invalid duration")),
            "{errs:?}"
        );
        let errs = errors(
            "  targetRef: {kind: MeshService, name: web}\n  to:\n    - targetRef: {kind: MeshExternalService, name: ext}\n      default: {tcp: {}}\n",
        );
        assert_eq!(
            errs,
            vec![
                "spec.to[0].targetRef.kind: MeshExternalService is not supported yet: Meridian has no MeshExternalService resources to refer to; expected one of Mesh, MeshService"
            ]
        );
    }
}
