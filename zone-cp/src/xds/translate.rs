//! Model to Envoy: the resources one proxy gets.
//!
//! ```text
//!   inbound  dp.address:port ──HCM or TCP──> cluster localhost:<servicePort> (static, the app)
//!   outbound 127.0.0.1:port  ──HCM (RDS) or TCP──> cluster <service> (EDS: every Dataplane
//!                                                  inbound tagged kuma.io/service=<service>)
//! ```
//!
//! MeshTimeout and MeshRetry `to` entries shape each outbound's route and cluster. With mesh
//! mTLS on, inbounds take TLS and check permissions, outbound clusters speak TLS (see
//! [`super::tls`]). Everything here is a pure function of the zone's state and the proxy's
//! certificate, so snapshot tests pin its output.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, HttpProtocolOptions,
    SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCluster;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as UpstreamHttpOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::google::protobuf::{Any, Duration};
use meridian_model::policies::dataplane::{DataplaneSpec, SERVICE_TAG, speaks_http};
use meridian_model::policies::virtual_ips::VIP_PORT;
use meridian_model::resolve::ProxyView;
use prost::{Message, Name};

use super::cache::{SECRET, Snapshot, Types};
use super::policies::mesh_timeout::DEFAULT_CONNECT_TIMEOUT;
use super::policies::{self, Generated, InboundResources, OutboundResources, ProxyInput};
use super::tls;

pub use meridian_model::policies::dataplane::PROTOCOL_TAG;

pub use super::context::{
    DEFAULT_CERT_LIFETIME, Identity, MeshContext, ServiceEndpoint, ServiceInfo, TlsSettings,
};

pub(crate) fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub(crate) fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A percentage as Envoy's fraction: of a hundred when whole, of a million otherwise.
pub(crate) fn fractional(percent: f64) -> envoy_types::pb::envoy::r#type::v3::FractionalPercent {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    let (numerator, denominator) = if percent.fract() == 0.0 {
        (percent as u32, DenominatorType::Hundred)
    } else {
        ((percent * 10_000.0).round() as u32, DenominatorType::Million)
    };
    envoy_types::pb::envoy::r#type::v3::FractionalPercent {
        numerator,
        denominator: denominator as i32,
    }
}

pub(crate) fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A cluster named `name` whose endpoints come over EDS on the ADS stream.
pub(crate) fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack(&Router::default()))),
        ..Default::default()
    }
}

pub(crate) fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(FilterConfig::TypedConfig(pack(hcm))),
    }
}

pub(crate) fn tcp_proxy(stat_prefix: &str, cluster: &str) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(TcpCluster::Cluster(cluster.to_owned())),
        ..Default::default()
    }
}

pub(crate) fn tcp_filter(proxy: &TcpProxy) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(FilterConfig::TypedConfig(pack(proxy))),
    }
}

/// Every route action of a route configuration (what timeouts and retries shape).
pub(crate) fn route_actions(routes: &mut RouteConfiguration) -> impl Iterator<Item = &mut RouteAction> {
    routes
        .virtual_hosts
        .iter_mut()
        .flat_map(|vh| vh.routes.iter_mut())
        .filter_map(|r| match &mut r.action {
            Some(Action::Route(action)) => Some(action),
            _ => None,
        })
}

/// Sets an HTTP upstream's common options (idle timeout, connection and stream lifetimes);
/// a TCP cluster has no HTTP options and is left alone.
pub(crate) fn set_upstream_options(cluster: &mut Cluster, common: HttpProtocolOptions) {
    if !cluster.typed_extension_protocol_options.is_empty() {
        cluster.typed_extension_protocol_options = upstream_http_options(Some(common));
    }
}

pub(crate) fn listener(
    name: String,
    address: &str,
    port: u32,
    direction: TrafficDirection,
    filter_chains: Vec<FilterChain>,
) -> Listener {
    Listener {
        name,
        address: Some(socket(address, port)),
        filter_chains,
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

pub(crate) fn chain_of(filters: Vec<Filter>) -> FilterChain {
    FilterChain {
        filters,
        ..Default::default()
    }
}

fn route_to(cluster: &str, action: RouteAction) -> Route {
    Route {
        name: cluster.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(RouteCluster::Cluster(cluster.to_owned())),
            ..action
        })),
        ..Default::default()
    }
}

/// Generates every resource of the proxy `name` with Dataplane `dp`: the base resources,
/// shaped by each policy plugin in turn (see [`super::policies`]), then packed. With mTLS on,
/// a proxy without its `identity` gets no listeners: it must not serve or call in plaintext.
pub fn proxy_snapshot(
    ctx: &MeshContext,
    name: &str,
    labels: &BTreeMap<String, String>,
    dp: &DataplaneSpec,
    identity: Option<Identity<'_>>,
) -> Snapshot {
    proxy_snapshot_of(ctx, name, labels, dp, identity, Types::ALL)
}

/// What [`proxy_snapshot`] makes of the resources of `types` alone: plugins that shape none
/// of them do not run, and no other type is packed.
pub fn proxy_snapshot_of(
    ctx: &MeshContext,
    name: &str,
    labels: &BTreeMap<String, String>,
    dp: &DataplaneSpec,
    identity: Option<Identity<'_>>,
    types: Types,
) -> Snapshot {
    let mut snap = Snapshot::default();
    let (tls, complete) = match (&ctx.tls, identity) {
        (None, _) => (None, true),
        (Some(settings), Some(id)) => {
            if types.contains(SECRET) {
                snap.insert(
                    SECRET,
                    tls::IDENTITY_SECRET.into(),
                    tls::identity_secret(id.cert, id.key),
                );
                snap.insert(SECRET, tls::CA_SECRET.into(), tls::ca_secret(id.ca_cert));
            }
            (Some(settings), true)
        }
        (Some(_), None) => (None, false),
    };
    let view = ProxyView {
        name,
        labels,
        dataplane: dp,
    };
    let generated = if complete {
        base_resources(ctx, name, dp, tls, None)
    } else {
        Generated::default()
    };
    shape_and_pack(&mut snap, ctx, view, tls, generated, types);
    snap
}

/// What [`proxy_snapshot`] makes of `dp`'s outbounds to `services` alone (their listeners,
/// clusters, routes and endpoints, and what plugins add beside them), for a proxy that has
/// its certificate if the mesh has mTLS on: all that a change to those services' instances
/// can alter (see [`super::cache::SnapshotCache::patch_endpoints`]).
pub fn outbounds_snapshot(
    ctx: &MeshContext,
    name: &str,
    labels: &BTreeMap<String, String>,
    dp: &DataplaneSpec,
    services: &BTreeSet<String>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    let view = ProxyView {
        name,
        labels,
        dataplane: dp,
    };
    let tls = ctx.tls.as_ref();
    let generated = base_resources(ctx, name, dp, tls, Some(services));
    shape_and_pack(&mut snap, ctx, view, tls, generated, Types::ALL);
    snap
}

fn shape_and_pack(
    snap: &mut Snapshot,
    ctx: &MeshContext,
    view: ProxyView<'_>,
    tls: Option<&TlsSettings>,
    mut generated: Generated,
    types: Types,
) {
    let dp = view.dataplane;
    let own_service = dp
        .networking
        .inbound
        .iter()
        .flatten()
        .find_map(|i| i.tags.get(SERVICE_TAG).cloned())
        .unwrap_or_else(|| view.name.to_owned());
    let input = ProxyInput {
        ctx,
        view,
        tls,
        own_service,
    };
    policies::apply_all(&input, &mut generated, types);
    super::pack::pack_into(snap, ctx, generated, tls, types);
}

/// What a proxy gets before any policy shapes it: an inbound listener and a cluster to the
/// app per inbound, and per outbound a listener, a cluster (EDS), its endpoints and, for
/// HTTP, a route. With `only`, just the outbounds to those services.
fn base_resources(
    ctx: &MeshContext,
    name: &str,
    dp: &DataplaneSpec,
    tls: Option<&TlsSettings>,
    only: Option<&BTreeSet<String>>,
) -> Generated {
    let mut generated = Generated::default();
    let inbounds = dp.networking.inbound.iter().flatten();
    for inbound in inbounds.filter(|_| only.is_none()) {
        let service = inbound.tags.get(SERVICE_TAG).cloned().unwrap_or_default();
        let app_address = inbound
            .service_address
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        let app_port = inbound.service_port.unwrap_or(inbound.port);
        let cluster_name = format!("localhost:{app_port}");
        let cluster = Cluster {
            name: cluster_name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
            connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
            load_assignment: Some(load_assignment(
                &cluster_name,
                &[ServiceEndpoint {
                    address: app_address,
                    port: app_port,
                    ready: true,
                    tags: BTreeMap::new(),
                }],
            )),
            ..Default::default()
        };
        let address = inbound
            .address
            .clone()
            .unwrap_or_else(|| dp.networking.address.clone());
        let stat_prefix = format!("inbound:{address}:{}", inbound.port).replace(':', "_");
        let (http, tcp) = if speaks_http(&inbound.tags) {
            let routes = RouteConfiguration {
                name: format!("inbound:{service}"),
                virtual_hosts: vec![VirtualHost {
                    name: service.clone(),
                    domains: vec!["*".into()],
                    routes: vec![route_to(
                        &cluster_name,
                        RouteAction {
                            // The caller's sidecar enforces the request timeout; the inbound does not cut it short.
                            timeout: Some(duration(StdDuration::ZERO)),
                            ..Default::default()
                        },
                    )],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let hcm = HttpConnectionManager {
                stat_prefix,
                codec_type: CodecType::Auto as i32,
                route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
                http_filters: vec![router_filter()],
                ..Default::default()
            };
            (Some(hcm), None)
        } else {
            (None, Some(tcp_proxy(&stat_prefix, &cluster_name)))
        };
        generated.inbounds.push(InboundResources {
            spec: inbound.clone(),
            port: inbound.port,
            address,
            tags: inbound.tags.clone(),
            cluster,
            http,
            tcp,
            network_filters: Vec::new(),
            tls: None,
            access: None,
            bind: true,
        });
    }
    for outbound in dp.networking.outbound.iter().flatten() {
        let Some(service) = outbound.service() else {
            continue;
        };
        if only.is_some_and(|services| !services.contains(service)) {
            continue;
        }
        let address = outbound.address.clone().unwrap_or_else(|| "127.0.0.1".into());
        let o = outbound_resources(ctx, tls, service, address, outbound.port, true);
        generated.outbounds.push(o);
    }
    if let Some(tp) = &dp.networking.transparent_proxying {
        for (service, vip) in super::transparent::reachable(ctx, name, dp, tp) {
            if only.is_some_and(|services| !services.contains(&service)) {
                continue;
            }
            let o = outbound_resources(ctx, tls, &service, vip.to_string(), VIP_PORT, false);
            generated.outbounds.push(o);
        }
        if only.is_none() {
            super::transparent::redirect(ctx, tp, &mut generated);
            for inbound in &mut generated.inbounds {
                inbound.bind = false;
            }
        }
    }
    generated
}

/// Traffic to `service` on `address:port`: a listener (bound, or virtual at the service's
/// virtual IP), the service's cluster and endpoints and, for HTTP, a route.
fn outbound_resources(
    ctx: &MeshContext,
    tls: Option<&TlsSettings>,
    service: &str,
    address: String,
    port: u32,
    bind: bool,
) -> OutboundResources {
    let own = upstream(ctx, tls, service, &BTreeMap::new());
    let info_http = !own.cluster.typed_extension_protocol_options.is_empty();
    let stat_prefix = format!("outbound:{address}:{port}").replace(':', "_");
    let (route, http, tcp) = if info_http {
        let route_name = format!("outbound:{service}");
        let routes = RouteConfiguration {
            name: route_name.clone(),
            virtual_hosts: vec![VirtualHost {
                name: service.to_owned(),
                domains: vec!["*".into()],
                routes: vec![route_to(service, RouteAction::default())],
                ..Default::default()
            }],
            validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        };
        let hcm = HttpConnectionManager {
            stat_prefix,
            codec_type: CodecType::Auto as i32,
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: route_name,
            })),
            http_filters: vec![router_filter()],
            ..Default::default()
        };
        (Some(routes), Some(hcm), None)
    } else {
        (None, None, Some(tcp_proxy(&stat_prefix, service)))
    };
    OutboundResources {
        service: service.to_owned(),
        address,
        port,
        grpc: own.grpc,
        upstreams: vec![own],
        route,
        route_origins: Vec::new(),
        http,
        tcp,
        bind,
    }
}

/// The cluster to `service`, or to its instances with `tags` (its subset): EDS, HTTP options
/// when the service speaks HTTP, TLS to the service's identity with mTLS on. A function of the
/// service and tags alone, so every outbound that needs it makes the same one.
pub(crate) fn upstream(
    ctx: &MeshContext,
    tls: Option<&TlsSettings>,
    service: &str,
    tags: &BTreeMap<String, String>,
) -> policies::Upstream {
    // A service with no instances anywhere gets HTTP, which answers its callers a fast 503
    // (a TCP caller fails either way); flipping to TCP would turn that into resets.
    let info = ctx.services.get(service).cloned().unwrap_or(ServiceInfo {
        endpoints: Default::default(),
        http: true,
        grpc: false,
    });
    let name = super::crosszone::tagged(service, tags);
    let cluster = Cluster {
        typed_extension_protocol_options: if info.http {
            upstream_http_options(None)
        } else {
            Default::default()
        },
        transport_socket: tls.map(|_| tls::outbound_socket(&ads(), &ctx.mesh, service, tags)),
        ..eds_cluster(&name)
    };
    let local = if tags.is_empty() {
        info.endpoints
    } else {
        let matching = info
            .endpoints
            .iter()
            .filter(|e| tags.iter().all(|(k, v)| e.tags.get(k) == Some(v)));
        std::sync::Arc::new(matching.cloned().collect())
    };
    policies::Upstream {
        service: service.to_owned(),
        tags: tags.clone(),
        grpc: info.grpc,
        endpoints: load_assignment(&name, &local),
        cluster,
        local,
    }
}

/// HTTP upstreams speak the protocol the downstream spoke, with MeshTimeout's idle timeout.
/// (A single entry: prost encodes maps in iteration order, and one entry keeps it stable.)
fn upstream_http_options(common: Option<HttpProtocolOptions>) -> std::collections::HashMap<String, Any> {
    let options = UpstreamHttpOptions {
        common_http_protocol_options: common,
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Default::default()),
                http2_protocol_options: Some(Default::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    std::collections::HashMap::from([(UpstreamHttpOptions::full_name(), pack(&options))])
}

pub(crate) fn load_assignment(cluster: &str, endpoints: &[ServiceEndpoint]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|e| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(&e.address, e.port)),
                        ..Default::default()
                    })),
                    health_status: if e.ready {
                        HealthStatus::Healthy
                    } else {
                        HealthStatus::Unhealthy
                    } as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
