//! MeshCircuitBreaker: connection limits and outlier detection (passive health checking),
//! inbound (`from`, `rules`) and outbound (`to`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    From, Rule, To, non_empty, require_some, validate_from, validate_rules, validate_to, validate_top_for,
};
use crate::targetref::{self, TargetRef};
use crate::validate::{Validate, Validator};
use crate::values::{GoDuration, IntOrDecimal, Percentage};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshCircuitBreakerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<From<BreakerConf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To<BreakerConf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule<BreakerConf>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakerConf {
    /// Limits which, once exceeded, open the circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimits>,
    /// Ejects endpoints that fail more than the others from load balancing for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_pools: Option<u32>,
    /// Requests queued while waiting for a connection; a connection limit for non-HTTP traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Parallel retries to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Parallel requests to the destination (HTTP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Time between two ejection sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// An ejected endpoint stays out this long times the number of times it was ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<GoDuration>,
    /// At most this percentage of endpoints is ejected at once (0 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Counts locally originated failures (timeouts, resets) apart from upstream errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_and_local_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Detectors>,
    /// Below this percentage of healthy endpoints, all endpoints are used again (panic mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percentage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Detectors {
    /// Consecutive errors of any kind (5xx for HTTP, connection failures for TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<Consecutive>,
    /// Consecutive 502, 503 or 504 responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_failures: Option<Consecutive>,
    /// Consecutive locally originated failures; needs `splitExternalAndLocalErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<Consecutive>,
    /// Ejects endpoints whose success rate is far below the mean of all endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    /// Ejects endpoints whose failure percentage reaches a fixed threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Consecutive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuccessRate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// Ejection threshold: mean success rate minus this factor times the standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_deviation_factor: Option<IntOrDecimal>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailurePercentage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    /// Failure percentage (0 to 100) at or above which an endpoint is ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
}

impl Validate for MeshCircuitBreakerSpec {
    fn validate(&self, v: &mut Validator) {
        let inbound = non_empty(&self.from) || non_empty(&self.rules);
        validate_top_for(v, &self.target_ref, targetref::TOP_LEVEL, inbound);
        if non_empty(&self.to) && self.target_ref.as_ref().is_some_and(|t| t.section_name.is_some()) {
            v.error_at(
                "to",
                "must not be set when targetRef.sectionName names an inbound: put the outbound conf in a policy of its own",
            );
        }
        require_some(
            v,
            &[
                ("from", non_empty(&self.from)),
                ("to", non_empty(&self.to)),
                ("rules", non_empty(&self.rules)),
            ],
        );
        if non_empty(&self.rules) && (non_empty(&self.to) || non_empty(&self.from)) {
            v.error_at(
                "rules",
                "must not be set together with to or from (as in Kuma): move their confs into rules, or drop rules",
            );
        }
        validate_from(v, &self.from, targetref::FROM_ALL);
        validate_to(v, &self.to, targetref::TO);
        validate_rules(v, &self.rules);
    }
}

fn positive(v: &mut Validator, field: &str, value: Option<u32>) {
    if value == Some(0) {
        v.error_at(field, "must be greater than 0");
    }
}

fn positive_duration(v: &mut Validator, field: &str, value: &Option<GoDuration>) {
    if value.as_ref().is_some_and(|d| d.as_duration().is_zero()) {
        v.error_at(field, "must be greater than 0");
    }
}

fn percent(v: &mut Validator, field: &str, value: Option<u32>) {
    if value.is_some_and(|p| p > 100) {
        v.error_at(field, "must be between 0 and 100");
    }
}

impl Validate for BreakerConf {
    fn validate(&self, v: &mut Validator) {
        if self.connection_limits.is_none() && self.outlier_detection.is_none() {
            v.error("at least one of connectionLimits, outlierDetection must be set");
        }
        if let Some(l) = &self.connection_limits {
            v.field("connectionLimits", |v| {
                positive(v, "maxConnections", l.max_connections);
                positive(v, "maxConnectionPools", l.max_connection_pools);
                positive(v, "maxPendingRequests", l.max_pending_requests);
                positive(v, "maxRetries", l.max_retries);
                positive(v, "maxRequests", l.max_requests);
            });
        }
        if let Some(od) = &self.outlier_detection {
            v.nested("outlierDetection", od);
        }
    }
}

impl Validate for OutlierDetection {
    fn validate(&self, v: &mut Validator) {
        positive_duration(v, "interval", &self.interval);
        positive_duration(v, "baseEjectionTime", &self.base_ejection_time);
        percent(v, "maxEjectionPercent", self.max_ejection_percent);
        let Some(d) = &self.detectors else {
            if self.disabled != Some(true) {
                v.error_at("detectors", "must be set unless outlier detection is disabled");
            }
            return;
        };
        v.field("detectors", |v| {
            let consecutive = [
                ("totalFailures", &d.total_failures),
                ("gatewayFailures", &d.gateway_failures),
                ("localOriginFailures", &d.local_origin_failures),
            ];
            if consecutive.iter().all(|(_, c)| c.is_none())
                && d.success_rate.is_none()
                && d.failure_percentage.is_none()
            {
                v.error("at least one of totalFailures, gatewayFailures, localOriginFailures, successRate, failurePercentage must be set");
            }
            for (name, c) in consecutive {
                if let Some(c) = c {
                    v.field(name, |v| positive(v, "consecutive", c.consecutive));
                }
            }
            if let Some(sr) = &d.success_rate {
                v.field("successRate", |v| {
                    positive(v, "minimumHosts", sr.minimum_hosts);
                    positive(v, "requestVolume", sr.request_volume);
                    if let Some(f) = &sr.standard_deviation_factor {
                        v.field("standardDeviationFactor", |v| {
                            f.check(v, |x| x > 0.0, "must be greater than 0")
                        });
                    }
                });
            }
            if let Some(fp) = &d.failure_percentage {
                v.field("failurePercentage", |v| {
                    positive(v, "minimumHosts", fp.minimum_hosts);
                    positive(v, "requestVolume", fp.request_volume);
                    percent(v, "threshold", fp.threshold);
                });
            }
        });
    }
}

impl crate::resolve::Targeted for MeshCircuitBreakerSpec {
    const KIND: crate::Kind = crate::Kind::MeshCircuitBreaker;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Inbound for MeshCircuitBreakerSpec {
    type Conf = BreakerConf;
    fn from(&self) -> &[From<BreakerConf>] {
        self.from.as_deref().unwrap_or_default()
    }
    fn rules(&self) -> &[Rule<BreakerConf>] {
        self.rules.as_deref().unwrap_or_default()
    }
}

impl crate::resolve::Outbound for MeshCircuitBreakerSpec {
    type Conf = BreakerConf;
    fn to(&self) -> &[To<BreakerConf>] {
        self.to.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(BreakerConf {
    connection_limits,
    outlier_detection
});
crate::merge_fields!(ConnectionLimits {
    max_connections,
    max_connection_pools,
    max_pending_requests,
    max_retries,
    max_requests
});
crate::merge_fields!(OutlierDetection {
    disabled,
    interval,
    base_ejection_time,
    max_ejection_percent,
    split_external_and_local_errors,
    detectors,
    healthy_panic_threshold
});
crate::merge_fields!(Detectors {
    total_failures,
    gateway_failures,
    local_origin_failures,
    success_rate,
    failure_percentage
});
crate::merge_fields!(Consecutive { consecutive });
crate::merge_fields!(SuccessRate {
    minimum_hosts,
    request_volume,
    standard_deviation_factor
});
crate::merge_fields!(FailurePercentage {
    request_volume,
    minimum_hosts,
    threshold
});

#[cfg(test)]
mod tests {
    use crate::{Format, Spec, parse_one};

    const HEAD: &str = "type: MeshCircuitBreaker\nname: x\nmesh: default\nspec:\n";

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
        connectionLimits:
          maxConnections: 2
          maxPendingRequests: 8
          maxRetries: 2
          maxRequests: 2
        outlierDetection:
          disabled: false
          interval: 5s
          baseEjectionTime: 30s
          maxEjectionPercent: 20
          splitExternalAndLocalErrors: true
          healthyPanicThreshold: \"60.5\"
          detectors:
            totalFailures: {consecutive: 10}
            gatewayFailures: {consecutive: 10}
            localOriginFailures: {consecutive: 10}
            successRate:
              minimumHosts: 5
              requestVolume: 10
              standardDeviationFactor: \"1.9\"
            failurePercentage:
              requestVolume: 10
              minimumHosts: 5
              threshold: 85
  from:
    - targetRef: {kind: Mesh}
      default:
        connectionLimits: {maxConnections: 1024}
";
        let sub = parse_one(&format!("{HEAD}{spec}"), Format::Yaml).unwrap();
        let Spec::MeshCircuitBreaker(s) = &sub.resource.spec else {
            panic!()
        };
        let od = s.to.as_ref().unwrap()[0]
            .default
            .outlier_detection
            .as_ref()
            .unwrap();
        assert_eq!(od.healthy_panic_threshold.map(|p| p.value()), Some(60.5));
    }

    #[test]
    fn rules_do_not_mix_with_to_or_from_and_from_is_for_every_client() {
        let mixed = "  to:\n    - targetRef: {kind: Mesh}\n      default: {connectionLimits: {maxConnections: 1}}\n  rules:\n    - default: {connectionLimits: {maxConnections: 2}}\n";
        assert_eq!(
            errors(mixed),
            vec![
                "spec.rules: must not be set together with to or from (as in Kuma): move their confs into rules, or drop rules"
            ]
        );
        let from_one = "  from:\n    - targetRef: {kind: MeshService, name: web}\n      default: {connectionLimits: {maxConnections: 1}}\n";
        assert_eq!(
            errors(from_one),
            vec!["spec.from[0].targetRef.kind: MeshService is not allowed here; expected one of Mesh"]
        );
    }

    #[test]
    fn invalid_examples_name_their_fields() {
        let to = "  to:\n    - targetRef: {kind: Mesh}\n      default:\n";
        let errs = errors(&format!(
            "{to}        connectionLimits: {{maxConnections: 0}}\n        outlierDetection:\n          maxEjectionPercent: 120\n          detectors:\n            successRate: {{standardDeviationFactor: \"abc\"}}\n            failurePercentage: {{threshold: 101}}\n"
        ));
        let d = "spec.to[0].default";
        assert_eq!(
            errs,
            vec![
                format!("{d}.connectionLimits.maxConnections: must be greater than 0"),
                format!("{d}.outlierDetection.maxEjectionPercent: must be between 0 and 100"),
                format!(
                    "{d}.outlierDetection.detectors.successRate.standardDeviationFactor: must be an integer or a decimal number"
                ),
                format!(
                    "{d}.outlierDetection.detectors.failurePercentage.threshold: must be between 0 and 100"
                ),
            ]
        );
        let errs = errors(&format!("{to}        outlierDetection: {{interval: 0s}}\n"));
        assert_eq!(
            errs,
            vec![
                format!("{d}.outlierDetection.interval: must be greater than 0"),
                format!("{d}.outlierDetection.detectors: must be set unless outlier detection is disabled"),
            ]
        );
        let errs = errors("  rules:\n    - default: {}\n");
        assert_eq!(
            errs,
            vec!["spec.rules[0].default: at least one of connectionLimits, outlierDetection must be set"]
        );
        let errs = errors(&format!("{to}        connectionLimits: {{maxRetries: -1}}\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!("{d}.connectionLimits.maxRetries: invalid value")),
            "{errs:?}"
        );
    }
}
