//! MeshFaultInjection on HTTP inbounds: each `http` entry of the resolved conf becomes one
//! `envoy.filters.http.fault` filter (abort, delay, response bandwidth, each on its percentage
//! of requests), ahead of the router and behind the permissions check.

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_rate_limit::{
    FixedLimit, LimitType,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, FaultRateLimit};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use meridian_model::Kind;
use meridian_model::policies::mesh_fault_injection::HttpFault as Fault;
use meridian_model::resolve::inbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::cache::{LISTENER, Types};
use crate::xds::translate::{duration, fractional, pack};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshFaultInjection, Kind::FaultInjection]
    }

    fn shapes(&self) -> Types {
        Types::of(&[LISTENER])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.faults;
        if policies.is_empty() {
            return;
        }
        for i in &mut generated.inbounds {
            let Some(hcm) = &mut i.http else { continue };
            let Some(resolved) = inbound(policies, &input.view, &i.spec) else {
                continue;
            };
            let router = hcm.http_filters.len().saturating_sub(1);
            let faults = resolved.conf.http.iter().flatten().map(fault_filter);
            hcm.http_filters.splice(router..router, faults);
        }
    }
}

fn fault_filter(f: &Fault) -> HttpFilter {
    let fault = HttpFault {
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error_type: Some(ErrorType::HttpStatus(a.http_status)),
            percentage: Some(fractional(a.percentage.value())),
            ..Default::default()
        }),
        delay: f.delay.as_ref().map(|d| FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.value.as_duration()))),
            percentage: Some(fractional(d.percentage.value())),
        }),
        response_rate_limit: f.response_bandwidth.as_ref().map(|b| FaultRateLimit {
            // Validated when stored: the limit parses.
            limit_type: Some(LimitType::FixedLimit(FixedLimit {
                limit_kbps: b.kbps().unwrap_or(1),
            })),
            percentage: Some(fractional(b.percentage.value())),
        }),
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.fault".into(),
        config_type: Some(ConfigType::TypedConfig(pack(&fault))),
        ..Default::default()
    }
}
