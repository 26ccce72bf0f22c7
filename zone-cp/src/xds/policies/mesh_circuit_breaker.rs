//! MeshCircuitBreaker on outbounds: the cluster's outlier detection, with Meridian's defaults
//! where no policy applies (they are what makes a dead zone's traffic fail over).

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as EnvoyOutlierDetection;
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_circuit_breaker::BreakerConf;
use meridian_model::resolve::outbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::duration;

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshCircuitBreaker]
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        for o in &mut generated.outbounds {
            let conf = outbound(&input.ctx.policies.breakers, &input.view, &o.service);
            o.cluster.outlier_detection = outlier_detection(conf.as_ref().map(|r| &r.conf));
        }
    }
}

/// Outlier detection: Meridian's defaults (eject a host after 3 gateway failures or 5 errors,
/// for 5 s at first, any share of hosts, so a dead zone empties and its traffic fails over,
/// and a recovered one gets traffic back within seconds), with what a MeshCircuitBreaker says
/// on top. `None` when the breaker disables it.
pub fn outlier_detection(conf: Option<&BreakerConf>) -> Option<EnvoyOutlierDetection> {
    let od = conf.and_then(|c| c.outlier_detection.as_ref());
    if od.and_then(|o| o.disabled).unwrap_or(false) {
        return None;
    }
    let u32v = |v: u32| Some(UInt32Value { value: v });
    let mut out = EnvoyOutlierDetection {
        consecutive_5xx: u32v(5),
        consecutive_gateway_failure: u32v(3),
        enforcing_consecutive_gateway_failure: u32v(100),
        interval: Some(duration(StdDuration::from_secs(1))),
        base_ejection_time: Some(duration(StdDuration::from_secs(5))),
        max_ejection_percent: u32v(100),
        enforcing_success_rate: u32v(0),
        ..Default::default()
    };
    let Some(od) = od else { return Some(out) };
    if let Some(d) = &od.interval {
        out.interval = Some(duration(d.as_duration()));
    }
    if let Some(d) = &od.base_ejection_time {
        out.base_ejection_time = Some(duration(d.as_duration()));
    }
    if let Some(p) = od.max_ejection_percent {
        out.max_ejection_percent = u32v(p);
    }
    out.split_external_local_origin_errors = od.split_external_and_local_errors.unwrap_or(false);
    if let Some(d) = &od.detectors {
        if let Some(n) = d.total_failures.as_ref().and_then(|c| c.consecutive) {
            out.consecutive_5xx = u32v(n);
        }
        if let Some(n) = d.gateway_failures.as_ref().and_then(|c| c.consecutive) {
            out.consecutive_gateway_failure = u32v(n);
        }
        if let Some(n) = d.local_origin_failures.as_ref().and_then(|c| c.consecutive) {
            out.consecutive_local_origin_failure = u32v(n);
        }
        if let Some(fp) = &d.failure_percentage {
            out.failure_percentage_threshold = fp.threshold.and_then(u32v);
            out.failure_percentage_request_volume = fp.request_volume.and_then(u32v);
            out.failure_percentage_minimum_hosts = fp.minimum_hosts.and_then(u32v);
            out.enforcing_failure_percentage = u32v(100);
        }
    }
    Some(out)
}
