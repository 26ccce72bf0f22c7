//! MeshTimeout. Outbound (`to`): the cluster's connect timeout; the upstream's idle timeout
//! and connection and stream lifetimes (HTTP) or the TCP proxy's idle timeout; the route's
//! request, stream-idle and stream-duration limits and the listener's request-headers timeout.
//! Inbound (`from` with `targetRef: Mesh`, and `rules`): the same on the inbound's listener,
//! route and cluster to the app. Kuma's defaults apply where no policy sets a value.

use crate::xds::cache::{CLUSTER, LISTENER, ROUTE, Types};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::config::route::v3::route_action::MaxStreamDuration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use meridian_model::Kind;
use meridian_model::policies::mesh_timeout::TimeoutConf;
use meridian_model::resolve::{inbound, names_routes, outbound, outbound_route};
use meridian_model::values::GoDuration;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::{duration, route_actions, set_upstream_options};

/// Timeouts that apply when no MeshTimeout says otherwise (Kuma's defaults).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Plugin;

fn d(value: &Option<GoDuration>) -> Option<envoy_types::pb::google::protobuf::Duration> {
    value.as_ref().map(|v| duration(v.as_duration()))
}

/// What a conf says about a connection manager: request headers, stream idle (inbound only:
/// an outbound's is on its route), idle and connection lifetime.
fn shape_listener(hcm: &mut HttpConnectionManager, conf: &TimeoutConf, inbound: bool) {
    let http = conf.http.as_ref();
    if let Some(t) = http.and_then(|h| d(&h.request_headers_timeout)) {
        hcm.request_headers_timeout = Some(t);
    }
    if !inbound {
        return;
    }
    if let Some(t) = http.and_then(|h| d(&h.stream_idle_timeout)) {
        hcm.stream_idle_timeout = Some(t);
    }
    let idle = d(&conf.idle_timeout);
    let lifetime = http.and_then(|h| d(&h.max_connection_duration));
    if idle.is_some() || lifetime.is_some() {
        let common = hcm
            .common_http_protocol_options
            .get_or_insert_with(Default::default);
        common.idle_timeout = idle.or(common.idle_timeout);
        common.max_connection_duration = lifetime.or(common.max_connection_duration);
    }
}

/// What a conf says about an upstream cluster: the connect timeout (Kuma's default without
/// one), and an HTTP upstream's idle timeout and connection lifetime.
fn shape_cluster(
    cluster: &mut envoy_types::pb::envoy::config::cluster::v3::Cluster,
    conf: Option<&TimeoutConf>,
) {
    let connect = conf
        .and_then(|t| t.connection_timeout.as_ref())
        .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.as_duration());
    cluster.connect_timeout = Some(duration(connect));
    let idle = conf.and_then(|t| d(&t.idle_timeout));
    let lifetime = conf
        .and_then(|t| t.http.as_ref())
        .and_then(|h| d(&h.max_connection_duration));
    if idle.is_some() || lifetime.is_some() {
        set_upstream_options(
            cluster,
            HttpProtocolOptions {
                idle_timeout: idle,
                max_connection_duration: lifetime,
                ..Default::default()
            },
        );
    }
}

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshTimeout, Kind::Timeout]
    }

    fn shapes(&self) -> Types {
        Types::of(&[CLUSTER, LISTENER, ROUTE])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.timeouts;
        let per_route = names_routes(policies);
        for o in &mut generated.outbounds {
            let resolved = outbound(policies, &input.view, &o.service);
            let conf = resolved.as_ref().map(|r| &r.conf);
            for u in &mut o.upstreams {
                // Each cluster as the policies to its own service say (a route may send to another).
                let own;
                let conf = if u.service == o.service {
                    conf
                } else {
                    own = outbound(policies, &input.view, &u.service);
                    own.as_ref().map(|r| &r.conf)
                };
                shape_cluster(&mut u.cluster, conf);
            }
            let idle = conf.and_then(|t| d(&t.idle_timeout));
            if let Some(tcp) = &mut o.tcp {
                tcp.idle_timeout = idle;
            }
            let http = conf.and_then(|t| t.http.as_ref());
            if let (Some(hcm), Some(conf)) = (&mut o.http, conf) {
                shape_listener(hcm, conf, false);
            }
            let (service, actions) = o.actions_with_origins();
            for (origins, action) in actions {
                // A route a MeshHTTPRoute made may have timeouts of its own.
                let own;
                let http = if per_route && !origins.is_empty() {
                    own = outbound_route(policies, &input.view, service, origins);
                    own.as_ref().and_then(|r| r.conf.http.as_ref())
                } else {
                    http
                };
                let request = http
                    .and_then(|h| h.request_timeout.as_ref())
                    .map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.as_duration());
                action.timeout = Some(duration(request));
                action.idle_timeout = http.and_then(|h| d(&h.stream_idle_timeout));
                action.max_stream_duration =
                    http.and_then(|h| d(&h.max_stream_duration))
                        .map(|t| MaxStreamDuration {
                            max_stream_duration: Some(t),
                            ..Default::default()
                        });
            }
        }
        for i in &mut generated.inbounds {
            let Some(resolved) = inbound(policies, &input.view, &i.spec) else {
                continue;
            };
            let conf = &resolved.conf;
            let http = conf.http.as_ref();
            if let Some(t) = d(&conf.connection_timeout) {
                i.cluster.connect_timeout = Some(t);
            }
            if let Some(tcp) = &mut i.tcp {
                tcp.idle_timeout = d(&conf.idle_timeout).or(tcp.idle_timeout);
            }
            let Some(hcm) = &mut i.http else { continue };
            shape_listener(hcm, conf, true);
            let routes = match &mut hcm.route_specifier {
                Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::RouteConfig(r)) => r,
                _ => continue,
            };
            for action in route_actions(routes) {
                if let Some(t) = http.and_then(|h| d(&h.request_timeout)) {
                    action.timeout = Some(t);
                }
                if let Some(t) = http.and_then(|h| d(&h.max_stream_duration)) {
                    action.max_stream_duration = Some(MaxStreamDuration {
                        max_stream_duration: Some(t),
                        ..Default::default()
                    });
                }
            }
        }
    }
}
