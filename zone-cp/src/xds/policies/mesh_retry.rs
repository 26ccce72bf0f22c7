//! MeshRetry on HTTP outbounds: the route's retry policy.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType as HostPredicateConfig;
use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType as PriorityConfig;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RetryBackOff, RetryHostPredicate, RetryPriority,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_retry::{HttpRetryOn, RetryConf};
use meridian_model::resolve::outbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::{duration, pack, route_actions};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshRetry]
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        for o in &mut generated.outbounds {
            let Some(route) = &mut o.route else { continue };
            let conf = outbound(&input.ctx.policies.retries, &input.view, &o.service);
            let policy = conf.as_ref().and_then(|r| retry_policy(&r.conf));
            for action in route_actions(route) {
                action.retry_policy = policy.clone();
            }
        }
    }
}

/// Kuma's `retryOn` name as Envoy's `retry_on` condition.
fn envoy_retry_condition(kuma: &str) -> &str {
    match kuma {
        "GatewayError" => "gateway-error",
        "Reset" => "reset",
        "Retriable4xx" => "retriable-4xx",
        "ConnectFailure" => "connect-failure",
        "EnvoyRatelimited" => "envoy-ratelimited",
        "RefusedStream" => "refused-stream",
        "Http3PostConnectFailure" => "http3-post-connect-failure",
        other => other,
    }
}

fn retry_policy(conf: &RetryConf) -> Option<RetryPolicy> {
    let http = conf.http.as_ref()?;
    let mut codes = Vec::new();
    let mut conditions = Vec::new();
    for c in http.retry_on.iter().flatten() {
        match c {
            HttpRetryOn::Status(code) => codes.push(u32::from(*code)),
            // Method names restrict which requests are retried; Envoy has no condition for them.
            HttpRetryOn::Named(name) if name.starts_with("HttpMethod") => {}
            HttpRetryOn::Named(name) => conditions.push(envoy_retry_condition(name)),
        }
    }
    if conditions.is_empty() && codes.is_empty() {
        conditions = vec!["5xx", "gateway-error", "reset", "connect-failure"];
    }
    if !codes.is_empty() {
        conditions.push("retriable-status-codes");
    }
    let interval =
        |d: &Option<meridian_model::values::GoDuration>| d.as_ref().map(|d| duration(d.as_duration()));
    Some(RetryPolicy {
        retry_on: conditions.join(","),
        num_retries: http.num_retries.map(|n| UInt32Value {
            value: u32::try_from(n).unwrap_or(0),
        }),
        per_try_timeout: interval(&http.per_try_timeout),
        retriable_status_codes: codes,
        retry_back_off: http.back_off.as_ref().map(|b| RetryBackOff {
            base_interval: interval(&b.base_interval).or(Some(duration(StdDuration::from_millis(25)))),
            max_interval: interval(&b.max_interval),
        }),
        // A retry goes to another host, and away from the priority (zone) that failed.
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(HostPredicateConfig::TypedConfig(pack(
                &PreviousHostsPredicate::default(),
            ))),
        }],
        host_selection_retry_max_attempts: 3,
        retry_priority: Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(PriorityConfig::TypedConfig(pack(&PreviousPrioritiesConfig {
                update_frequency: 1,
            }))),
        }),
        ..Default::default()
    })
}
