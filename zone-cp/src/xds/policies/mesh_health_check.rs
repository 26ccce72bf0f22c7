//! MeshHealthCheck on outbounds: active health checks on the destination's cluster.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::HealthCheck;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    HealthChecker, HttpHealthCheck as EnvoyHttpCheck, TcpHealthCheck as EnvoyTcpCheck,
};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_health_check::HealthCheckConf;
use meridian_model::resolve::outbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::duration;

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshHealthCheck]
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        for o in &mut generated.outbounds {
            if let Some(r) = outbound(&input.ctx.policies.health_checks, &input.view, &o.service) {
                let http = o.http.is_some();
                apply_health_check(&mut o.cluster, &r.conf, http);
            }
        }
    }
}

/// Applies a MeshHealthCheck's active checks to a cluster (HTTP when the service speaks it
/// and the check is not disabled, else TCP).
pub fn apply_health_check(cluster: &mut Cluster, conf: &HealthCheckConf, http: bool) {
    let secs = |d: &Option<meridian_model::values::GoDuration>, default: u64| {
        Some(duration(
            d.as_ref()
                .map_or(StdDuration::from_secs(default), |d| d.as_duration()),
        ))
    };
    let u32v = |v: Option<i32>, default: u32| {
        Some(UInt32Value {
            value: v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default),
        })
    };
    let http_check = conf.http.as_ref().filter(|h| !h.disabled.unwrap_or(false));
    let checker = match (http, http_check) {
        (true, Some(h)) => HealthChecker::HttpHealthCheck(EnvoyHttpCheck {
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            expected_statuses: h
                .expected_statuses
                .iter()
                .flatten()
                .map(|s| Int64Range {
                    start: i64::from(*s),
                    end: i64::from(*s) + 1,
                })
                .collect(),
            ..Default::default()
        }),
        (true, None) if conf.tcp.is_none() => HealthChecker::HttpHealthCheck(EnvoyHttpCheck {
            path: "/".into(),
            ..Default::default()
        }),
        _ => HealthChecker::TcpHealthCheck(EnvoyTcpCheck::default()),
    };
    cluster.health_checks = vec![HealthCheck {
        timeout: secs(&conf.timeout, 1),
        interval: secs(&conf.interval, 1),
        unhealthy_interval: conf
            .unhealthy_interval
            .as_ref()
            .map(|d| duration(d.as_duration())),
        unhealthy_threshold: u32v(conf.unhealthy_threshold, 2),
        healthy_threshold: u32v(conf.healthy_threshold, 1),
        no_traffic_interval: conf
            .no_traffic_interval
            .as_ref()
            .map(|d| duration(d.as_duration())),
        health_checker: Some(checker),
        ..Default::default()
    }];
}
