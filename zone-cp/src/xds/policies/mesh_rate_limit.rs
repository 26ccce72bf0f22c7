//! MeshRateLimit on inbounds: `local.http` becomes `envoy.filters.http.local_ratelimit`
//! (a token bucket of `num` tokens refilled every `interval`, answering `onRateLimit`'s
//! status, 429 by default, with its headers), first among the HTTP filters after the
//! permissions check; `local.tcp` becomes `envoy.filters.network.local_ratelimit` on new
//! connections, ahead of the inbound's HTTP or TCP filter.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as TcpLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, TokenBucket};
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_rate_limit::{HttpLimit, MIN_INTERVAL, Rate, TcpLimit};
use meridian_model::resolve::inbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::cache::{LISTENER, Types};
use crate::xds::translate::{duration, fractional, pack};

/// What a limited request is answered with when the policy does not say (Kuma's).
pub const DEFAULT_STATUS: u32 = 429;

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshRateLimit, Kind::RateLimit]
    }

    fn shapes(&self) -> Types {
        Types::of(&[LISTENER])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.rate_limits;
        if policies.is_empty() {
            return;
        }
        for i in &mut generated.inbounds {
            let Some(resolved) = inbound(policies, &input.view, &i.spec) else {
                continue;
            };
            let Some(local) = &resolved.conf.local else {
                continue;
            };
            if let (Some(hcm), Some(limit)) = (
                &mut i.http,
                local.http.as_ref().filter(|h| h.disabled != Some(true)),
            ) && let Some(filter) = http_limit(limit)
            {
                hcm.http_filters.insert(0, filter);
            }
            if let Some(limit) = local.tcp.as_ref().filter(|t| t.disabled != Some(true))
                && let Some(filter) = tcp_limit(limit, &format!("inbound_{}", i.port))
            {
                i.network_filters.push(filter);
            }
        }
    }
}

/// `num` per `interval` as a bucket of `num` tokens, refilled a token at a time (every
/// `interval / num`) rather than all at once, so that the rate holds over any stretch of
/// time and not only on the interval's boundaries; where that would refill more often than
/// Envoy's 50 ms, as few tokens at a time as keep it to 50 ms.
fn bucket(rate: &Rate) -> TokenBucket {
    let num = rate.num.max(1);
    let interval = rate.interval.as_duration();
    let per_token = (interval / num).as_nanos().max(1);
    let per_fill = (MIN_INTERVAL.as_nanos().div_ceil(per_token) as u32).clamp(1, num);
    TokenBucket {
        max_tokens: num,
        tokens_per_fill: Some(UInt32Value { value: per_fill }),
        fill_interval: Some(duration(interval.mul_f64(f64::from(per_fill) / f64::from(num)))),
    }
}

fn http_limit(limit: &HttpLimit) -> Option<HttpFilter> {
    let rate = limit.request_rate.as_ref()?;
    let on = limit.on_rate_limit.as_ref();
    let header = |name: &str, value: &str, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            // Envoy reads `%...%` in a header value as a variable: a value is a literal.
            value: value.replace('%', "%%"),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let headers = on.and_then(|o| o.headers.as_ref());
    let set = headers
        .and_then(|h| h.set.as_ref())
        .into_iter()
        .flatten()
        .map(|h| header(&h.name, &h.value, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = headers
        .and_then(|h| h.add.as_ref())
        .into_iter()
        .flatten()
        .map(|h| header(&h.name, &h.value, HeaderAppendAction::AppendIfExistsOrAdd));
    let everything = RuntimeFractionalPercent {
        default_value: Some(fractional(100.0)),
        runtime_key: String::new(),
    };
    let config = HttpLocalRateLimit {
        stat_prefix: "rate_limit".into(),
        status: Some(HttpStatus {
            code: on.and_then(|o| o.status).unwrap_or(DEFAULT_STATUS) as i32,
        }),
        token_bucket: Some(bucket(rate)),
        filter_enabled: Some(everything.clone()),
        filter_enforced: Some(everything),
        response_headers_to_add: set.chain(add).collect(),
        ..Default::default()
    };
    Some(HttpFilter {
        name: "envoy.filters.http.local_ratelimit".into(),
        config_type: Some(ConfigType::TypedConfig(pack(&config))),
        ..Default::default()
    })
}

fn tcp_limit(limit: &TcpLimit, stat_prefix: &str) -> Option<Filter> {
    let rate = limit.connection_rate.as_ref()?;
    let config = TcpLocalRateLimit {
        stat_prefix: stat_prefix.to_owned(),
        token_bucket: Some(bucket(rate)),
        ..Default::default()
    };
    Some(Filter {
        name: "envoy.filters.network.local_ratelimit".into(),
        config_type: Some(FilterConfig::TypedConfig(pack(&config))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(num: u32, interval: &str) -> Rate {
        Rate {
            num,
            interval: meridian_model::values::GoDuration::parse(interval).expect("duration"),
        }
    }

    #[test]
    fn buckets_refill_a_token_at_a_time_but_not_under_50ms() {
        let b = bucket(&rate(10, "1s"));
        assert_eq!((b.max_tokens, b.tokens_per_fill.map(|t| t.value)), (10, Some(1)));
        assert_eq!(
            b.fill_interval,
            Some(duration(std::time::Duration::from_millis(100)))
        );
        let b = bucket(&rate(1000, "1s"));
        assert_eq!(b.tokens_per_fill.map(|t| t.value), Some(50));
        assert_eq!(
            b.fill_interval,
            Some(duration(std::time::Duration::from_millis(50)))
        );
        let b = bucket(&rate(3, "100ms"));
        assert_eq!(
            b.tokens_per_fill.map(|t| t.value),
            Some(2),
            "never refill under 50 ms"
        );
    }
}
