//! MeshCircuitBreaker. Outbound (`to`): the destination cluster's connection limits, outlier
//! detection and panic threshold, with Meridian's outlier detection defaults where no policy
//! applies (they are what makes a dead zone's traffic fail over). Inbound (`from` with
//! `targetRef: Mesh`, and `rules`): the same on the cluster to the app, only as set.

use crate::xds::cache::{CLUSTER, Types};
use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_circuit_breaker::BreakerConf;
use meridian_model::resolve::{inbound, outbound};

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::duration;

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshCircuitBreaker, Kind::CircuitBreaker]
    }

    fn shapes(&self) -> Types {
        Types::of(&[CLUSTER])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.breakers;
        for u in generated.outbounds.iter_mut().flat_map(|o| &mut o.upstreams) {
            let resolved = outbound(policies, &input.view, &u.service);
            let conf = resolved.as_ref().map(|r| &r.conf);
            u.cluster.outlier_detection = outlier_detection(conf);
            if let Some(conf) = conf {
                limit(&mut u.cluster, conf);
            }
        }
        for i in &mut generated.inbounds {
            let Some(resolved) = inbound(policies, &input.view, &i.spec) else {
                continue;
            };
            if resolved.conf.outlier_detection.is_some() {
                i.cluster.outlier_detection = outlier_detection(Some(&resolved.conf));
            }
            limit(&mut i.cluster, &resolved.conf);
        }
    }
}

/// Connection limits as Envoy's circuit-breaker thresholds, and the panic threshold.
fn limit(cluster: &mut Cluster, conf: &BreakerConf) {
    let u32v = |v: Option<u32>| v.map(|value| UInt32Value { value });
    if let Some(l) = &conf.connection_limits {
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: u32v(l.max_connections),
                max_pending_requests: u32v(l.max_pending_requests),
                max_requests: u32v(l.max_requests),
                max_retries: u32v(l.max_retries),
                max_connection_pools: u32v(l.max_connection_pools),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let panic = conf
        .outlier_detection
        .as_ref()
        .and_then(|o| o.healthy_panic_threshold);
    if let Some(p) = panic {
        cluster
            .common_lb_config
            .get_or_insert_with(CommonLbConfig::default)
            .healthy_panic_threshold = Some(Percent { value: p.value() });
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
        if let Some(sr) = &d.success_rate {
            out.success_rate_minimum_hosts = sr.minimum_hosts.and_then(u32v);
            out.success_rate_request_volume = sr.request_volume.and_then(u32v);
            // Envoy takes the factor in thousandths (1900 for 1.9).
            out.success_rate_stdev_factor = sr
                .standard_deviation_factor
                .as_ref()
                .and_then(|f| f.value())
                .and_then(|f| u32v((f * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32));
            out.enforcing_success_rate = u32v(100);
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
