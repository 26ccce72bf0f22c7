//! MeshRetry on outbounds. HTTP services: the route's retry policy from `http` (gRPC
//! services from `grpc`, falling back to `http`): conditions, attempts, per-try timeout,
//! back-off (also as the destination tells it, `rateLimitedBackOff`), which requests and
//! responses qualify (headers, `HttpMethod*`), and how hosts are chosen for a retry (by
//! default another host, away from the zone that failed). TCP services: the TCP proxy's
//! connection attempts (`tcp.maxConnectAttempt`).

use crate::xds::cache::{LISTENER, ROUTE, Types};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType as HostPredicateConfig;
use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType as PriorityConfig;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RateLimitedRetryBackOff, ResetHeader as EnvoyResetHeader, ResetHeaderFormat, RetryBackOff,
    RetryHostPredicate, RetryPriority,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RetryPolicy};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_retry::{
    BackOff, DEFAULT_BASE_INTERVAL, GrpcRetryOn, HeaderMatch, HeaderMatchType, HttpRetryOn, PredicateType,
    RateLimitFormat, RateLimitedBackOff, RetryConf,
};
use meridian_model::resolve::{names_routes, outbound, outbound_route};
use meridian_model::values::GoDuration;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::{duration, pack, route_actions};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshRetry, Kind::Retry]
    }

    fn shapes(&self) -> Types {
        Types::of(&[LISTENER, ROUTE])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.retries;
        let per_route = names_routes(policies);
        for o in &mut generated.outbounds {
            if per_route && !o.route_origins.is_empty() {
                // Routes a MeshHTTPRoute made may have retries of their own.
                let grpc = o.grpc;
                let (service, actions) = o.actions_with_origins();
                for (origins, action) in actions {
                    let own = outbound_route(policies, &input.view, service, origins);
                    action.retry_policy = own.as_ref().and_then(|r| match r.conf.grpc.is_some() && grpc {
                        true => grpc_retry_policy(&r.conf),
                        false => retry_policy(&r.conf),
                    });
                }
                continue;
            }
            let resolved = outbound(policies, &input.view, &o.service);
            let Some(conf) = resolved.as_ref().map(|r| &r.conf) else {
                continue;
            };
            if let Some(tcp) = &mut o.tcp {
                tcp.max_connect_attempts = conf
                    .tcp
                    .as_ref()
                    .and_then(|t| t.max_connect_attempt)
                    .map(|value| UInt32Value { value });
            }
            let Some(route) = &mut o.route else { continue };
            let policy = if o.grpc && conf.grpc.is_some() {
                grpc_retry_policy(conf)
            } else {
                retry_policy(conf)
            };
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

fn interval(d: &Option<GoDuration>) -> Option<envoy_types::pb::google::protobuf::Duration> {
    d.as_ref().map(|d| duration(d.as_duration()))
}

/// Envoy refuses a maximum below the base, which merged policies can still produce: the
/// maximum is then the base.
fn back_off(b: &BackOff) -> RetryBackOff {
    let base = b
        .base_interval
        .as_ref()
        .map_or(DEFAULT_BASE_INTERVAL, GoDuration::as_duration);
    RetryBackOff {
        base_interval: Some(duration(base)),
        max_interval: b
            .max_interval
            .as_ref()
            .map(|m| duration(m.as_duration().max(base))),
    }
}

fn rate_limited(r: &RateLimitedBackOff) -> RateLimitedRetryBackOff {
    RateLimitedRetryBackOff {
        reset_headers: r
            .reset_headers
            .iter()
            .flatten()
            .map(|h| EnvoyResetHeader {
                name: h.name.clone(),
                format: match h.format {
                    RateLimitFormat::Seconds => ResetHeaderFormat::Seconds,
                    RateLimitFormat::UnixTimestamp => ResetHeaderFormat::UnixTimestamp,
                } as i32,
            })
            .collect(),
        max_interval: interval(&r.max_interval),
    }
}

pub(crate) fn header_matcher(m: &HeaderMatch) -> HeaderMatcher {
    let value = m.value.clone().unwrap_or_default();
    let string = |pattern| {
        HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        })
    };
    let specifier = match m.match_type.unwrap_or(HeaderMatchType::Exact) {
        HeaderMatchType::Exact => string(MatchPattern::Exact(value)),
        HeaderMatchType::Prefix => string(MatchPattern::Prefix(value)),
        HeaderMatchType::RegularExpression => string(MatchPattern::SafeRegex(RegexMatcher {
            regex: value,
            ..Default::default()
        })),
        HeaderMatchType::Present => HeaderMatchSpecifier::PresentMatch(true),
        HeaderMatchType::Absent => HeaderMatchSpecifier::PresentMatch(false),
    };
    HeaderMatcher {
        name: m.name.to_ascii_lowercase(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// The retry policy's shared parts: attempts, per-try timeout, back-offs, and how hosts are
/// chosen (`hostSelection`; by default another host, away from the priority, a zone, that
/// failed).
#[allow(clippy::too_many_arguments)]
fn policy(
    retry_on: String,
    num_retries: Option<i64>,
    per_try_timeout: &Option<GoDuration>,
    back: Option<&BackOff>,
    limited: Option<&RateLimitedBackOff>,
    conf: &RetryConf,
    for_http: bool,
) -> RetryPolicy {
    let http = conf.http.as_ref();
    let previous_hosts = || RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".into(),
        config_type: Some(HostPredicateConfig::TypedConfig(pack(
            &PreviousHostsPredicate::default(),
        ))),
    };
    let previous_priorities = |update_frequency: i32| RetryPriority {
        name: "envoy.retry_priorities.previous_priorities".into(),
        config_type: Some(PriorityConfig::TypedConfig(pack(&PreviousPrioritiesConfig {
            update_frequency,
        }))),
    };
    let (hosts, priority) = match http.and_then(|h| h.host_selection.as_ref()) {
        None => (vec![previous_hosts()], Some(previous_priorities(1))),
        Some(predicates) => {
            let hosts = predicates
                .iter()
                .filter(|p| p.predicate == PredicateType::OmitPreviousHosts)
                .map(|_| previous_hosts())
                .take(1)
                .collect();
            let priority = predicates
                .iter()
                .find(|p| p.predicate == PredicateType::OmitPreviousPriorities)
                .map(|p| previous_priorities(p.update_frequency.unwrap_or(2)));
            (hosts, priority)
        }
    };
    let retriable_headers: Vec<HeaderMatcher> = http
        .filter(|_| for_http)
        .and_then(|h| h.retriable_response_headers.as_ref())
        .into_iter()
        .flatten()
        .map(header_matcher)
        .collect();
    // Envoy looks at retriable_headers only when retry_on says so.
    let retry_on = if retriable_headers.is_empty() {
        retry_on
    } else {
        format!("{retry_on},retriable-headers")
    };
    RetryPolicy {
        retry_on,
        num_retries: num_retries.map(|n| UInt32Value {
            value: u32::try_from(n).unwrap_or(0),
        }),
        per_try_timeout: interval(per_try_timeout),
        retry_back_off: back.map(back_off),
        rate_limited_retry_back_off: limited.map(rate_limited),
        retry_host_predicate: hosts,
        host_selection_retry_max_attempts: http.and_then(|h| h.host_selection_max_attempts).unwrap_or(3),
        retry_priority: priority,
        retriable_headers,
        ..Default::default()
    }
}

fn retry_policy(conf: &RetryConf) -> Option<RetryPolicy> {
    let http = conf.http.as_ref()?;
    let mut codes = Vec::new();
    let mut conditions = Vec::new();
    let mut methods = Vec::new();
    for c in http.retry_on.iter().flatten() {
        match c {
            HttpRetryOn::Status(code) => codes.push(u32::from(*code)),
            // Only requests with these methods are retried: a request header match.
            HttpRetryOn::Named(name) if name.starts_with("HttpMethod") => {
                methods.push(name["HttpMethod".len()..].to_ascii_uppercase());
            }
            HttpRetryOn::Named(name) => conditions.push(envoy_retry_condition(name)),
        }
    }
    if conditions.is_empty() && codes.is_empty() {
        conditions = vec!["5xx", "gateway-error", "reset", "connect-failure"];
    }
    if !codes.is_empty() {
        conditions.push("retriable-status-codes");
    }
    let mut out = policy(
        conditions.join(","),
        http.num_retries,
        &http.per_try_timeout,
        http.back_off.as_ref(),
        http.rate_limited_back_off.as_ref(),
        conf,
        true,
    );
    out.retriable_status_codes = codes;
    out.retriable_request_headers = http
        .retriable_request_headers
        .iter()
        .flatten()
        .map(header_matcher)
        .chain(methods.into_iter().map(|m| {
            header_matcher(&HeaderMatch {
                match_type: Some(HeaderMatchType::Exact),
                name: ":method".into(),
                value: Some(m),
            })
        }))
        .collect();
    Some(out)
}

/// A gRPC service's retry policy, from `grpc`.
fn grpc_retry_policy(conf: &RetryConf) -> Option<RetryPolicy> {
    let grpc = conf.grpc.as_ref()?;
    let mut conditions: Vec<&str> = grpc
        .retry_on
        .iter()
        .flatten()
        .map(|c| match c {
            GrpcRetryOn::Canceled => "cancelled",
            GrpcRetryOn::DeadlineExceeded => "deadline-exceeded",
            GrpcRetryOn::Internal => "internal",
            GrpcRetryOn::ResourceExhausted => "resource-exhausted",
            GrpcRetryOn::Unavailable => "unavailable",
        })
        .collect();
    if conditions.is_empty() {
        conditions = vec![
            "cancelled",
            "deadline-exceeded",
            "resource-exhausted",
            "unavailable",
        ];
    }
    Some(policy(
        conditions.join(","),
        grpc.num_retries,
        &grpc.per_try_timeout,
        grpc.back_off.as_ref(),
        grpc.rate_limited_back_off.as_ref(),
        conf,
        false,
    ))
}
