//! MeshHealthCheck on outbounds: active health checks on the destination's cluster (HTTP,
//! gRPC or TCP, as the service speaks and the policy says), with their timing, jitter,
//! thresholds, logging and connection reuse, and the cluster's panic threshold.

use crate::xds::cache::{CLUSTER, Types};
use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, ZoneAwareLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::health_check::payload::Payload as PayloadKind;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    GrpcHealthCheck as EnvoyGrpcCheck, HealthChecker, HttpHealthCheck as EnvoyHttpCheck, Payload,
    TcpHealthCheck as EnvoyTcpCheck,
};
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, HealthCheck};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_health_check::{HeaderModifier, HealthCheckConf, decode_payload};
use meridian_model::resolve::outbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::duration;

/// What a MeshHealthCheck leaves unset gets Kuma's defaults: a check every minute, 15 s to
/// answer, unhealthy after 5 failures, healthy again after 1 pass.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_TIMEOUT_SECS: u64 = 15;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 5;
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshHealthCheck, Kind::HealthCheck]
    }

    fn shapes(&self) -> Types {
        Types::of(&[CLUSTER])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        for u in generated.outbounds.iter_mut().flat_map(|o| &mut o.upstreams) {
            if let Some(r) = outbound(&input.ctx.policies.health_checks, &input.view, &u.service) {
                // The cluster's own service's protocol: a route may send to another service.
                let http = !u.cluster.typed_extension_protocol_options.is_empty();
                apply_health_check(&mut u.cluster, &r.conf, http, u.grpc);
            }
        }
    }
}

/// Applies a MeshHealthCheck's active checks to a cluster (HTTP when the service speaks it
/// and the check is not disabled, else TCP).
pub fn apply_health_check(cluster: &mut Cluster, conf: &HealthCheckConf, http: bool, grpc: bool) {
    if conf.healthy_panic_threshold.is_some() || conf.fail_traffic_on_panic.is_some() {
        let lb = cluster
            .common_lb_config
            .get_or_insert_with(CommonLbConfig::default);
        if let Some(p) = conf.healthy_panic_threshold {
            lb.healthy_panic_threshold = Some(Percent { value: p.value() });
        }
        if let Some(fail) = conf.fail_traffic_on_panic {
            lb.locality_config_specifier =
                Some(LocalityConfigSpecifier::ZoneAwareLbConfig(ZoneAwareLbConfig {
                    fail_traffic_on_panic: fail,
                    ..Default::default()
                }));
        }
    }
    let secs = |d: &Option<meridian_model::values::GoDuration>, default: u64| {
        Some(duration(
            d.as_ref()
                .map_or(StdDuration::from_secs(default), |d| d.as_duration()),
        ))
    };
    let opt = |d: &Option<meridian_model::values::GoDuration>| d.as_ref().map(|d| duration(d.as_duration()));
    let u32v = |v: Option<i32>, default: u32| {
        Some(UInt32Value {
            value: v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default),
        })
    };
    let on = |disabled: Option<bool>| !disabled.unwrap_or(false);
    let http_check = conf.http.as_ref().filter(|h| on(h.disabled));
    let grpc_check = conf.grpc.as_ref().filter(|g| on(g.disabled));
    let tcp_check = conf.tcp.as_ref().filter(|t| on(t.disabled));
    let checker = match (http, http_check) {
        _ if grpc && grpc_check.is_some() => {
            let g = grpc_check.expect("checked");
            HealthChecker::GrpcHealthCheck(EnvoyGrpcCheck {
                service_name: g.service_name.clone().unwrap_or_default(),
                authority: g.authority.clone().unwrap_or_default(),
                ..Default::default()
            })
        }
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
            request_headers_to_add: h.request_headers_to_add.as_ref().map(headers).unwrap_or_default(),
            ..Default::default()
        }),
        (true, None) if conf.tcp.is_none() && conf.http.is_none() => {
            HealthChecker::HttpHealthCheck(EnvoyHttpCheck {
                path: "/".into(),
                ..Default::default()
            })
        }
        _ if conf.tcp.is_some() && tcp_check.is_none() => return,
        _ => {
            let payload = |text: &String| {
                decode_payload(text).map(|bytes| Payload {
                    payload: Some(PayloadKind::Binary(bytes)),
                })
            };
            HealthChecker::TcpHealthCheck(EnvoyTcpCheck {
                send: tcp_check.and_then(|t| t.send.as_ref()).and_then(payload),
                receive: tcp_check
                    .and_then(|t| t.receive.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(payload)
                    .collect(),
                ..Default::default()
            })
        }
    };
    cluster.health_checks = vec![HealthCheck {
        timeout: secs(&conf.timeout, DEFAULT_TIMEOUT_SECS),
        interval: secs(&conf.interval, DEFAULT_INTERVAL_SECS),
        initial_jitter: opt(&conf.initial_jitter),
        interval_jitter: opt(&conf.interval_jitter),
        interval_jitter_percent: conf
            .interval_jitter_percent
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        unhealthy_interval: opt(&conf.unhealthy_interval),
        unhealthy_threshold: u32v(conf.unhealthy_threshold, DEFAULT_UNHEALTHY_THRESHOLD),
        healthy_threshold: u32v(conf.healthy_threshold, DEFAULT_HEALTHY_THRESHOLD),
        no_traffic_interval: opt(&conf.no_traffic_interval),
        reuse_connection: conf.reuse_connection.map(|value| BoolValue { value }),
        #[allow(deprecated)]
        event_log_path: conf.event_log_path.clone().unwrap_or_default(),
        always_log_health_check_failures: conf.always_log_health_check_failures.unwrap_or(false),
        health_checker: Some(checker),
        ..Default::default()
    }];
}

/// Headers a health check request carries: `set` replaces, `add` appends.
fn headers(m: &HeaderModifier) -> Vec<HeaderValueOption> {
    let entries = |list: &Option<Vec<meridian_model::policies::mesh_health_check::HeaderKeyValue>>,
                   action: HeaderAppendAction| {
        list.iter()
            .flatten()
            .map(move |h| HeaderValueOption {
                header: Some(HeaderValue {
                    key: h.name.clone(),
                    // Envoy reads `%...%` in a header value as a variable: a value is a literal.
                    value: h.value.replace('%', "%%"),
                    ..Default::default()
                }),
                append_action: action as i32,
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    let mut out = entries(&m.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
    out.extend(entries(&m.add, HeaderAppendAction::AppendIfExistsOrAdd));
    out
}
