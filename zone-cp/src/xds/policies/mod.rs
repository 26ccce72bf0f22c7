//! Policy plugins: each applies one kind's resolved value to a proxy's generated resources.
//!
//! ```text
//!   base resources (translate::proxy_snapshot: listeners, clusters, routes, endpoints, typed)
//!     └─> PLUGINS in order, each: resolve its kind for the proxy (meridian_model::resolve),
//!         change the resources it owns; with no policy, apply the kind's defaults
//!     └─> packed into the proxy's snapshot
//! ```
//!
//! Adding a kind: its model module (`shared/model/src/policies/<kind>.rs`: types, validation,
//! merge), its plugin here (`<kind>.rs`), and a line in [`PLUGINS`]. A test fails when a
//! policy kind has no plugin.

pub mod mesh_circuit_breaker;
pub mod mesh_health_check;
pub mod mesh_load_balancing_strategy;
pub mod mesh_retry;
pub mod mesh_timeout;
pub mod mesh_trace;
pub mod mesh_traffic_permission;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use meridian_model::Kind;
use meridian_model::resolve::ProxyView;
use meridian_model::resolve::access::Access;

use super::translate::{MeshContext, ServiceEndpoint, TlsSettings};

/// What a plugin reads: the mesh, the proxy, and whether mTLS is on for it.
pub struct ProxyInput<'a> {
    pub ctx: &'a MeshContext,
    pub view: ProxyView<'a>,
    /// Set when the mesh has mTLS on and the proxy has its certificate.
    pub tls: Option<&'a TlsSettings>,
    /// The service the proxy's first inbound serves (its name otherwise), for span tags.
    pub own_service: String,
}

/// One inbound's resources, before they are packed.
pub struct InboundResources {
    /// The Dataplane's inbound these are for.
    pub spec: meridian_model::policies::dataplane::Inbound,
    pub port: u32,
    pub address: String,
    pub tags: BTreeMap<String, String>,
    /// The cluster to the app.
    pub cluster: Cluster,
    /// An HTTP inbound's connection manager (its routes inline); `None` for TCP.
    pub http: Option<HttpConnectionManager>,
    pub tcp: Option<TcpProxy>,
    /// Who may call, enforced over mTLS (set by the permissions plugin).
    pub access: Option<Access>,
}

/// Traffic to one service: its listener's filter, route, cluster and endpoints.
pub struct OutboundResources {
    pub service: String,
    /// The service speaks gRPC.
    pub grpc: bool,
    pub address: String,
    pub port: u32,
    pub cluster: Cluster,
    pub endpoints: ClusterLoadAssignment,
    /// The local endpoints `endpoints` starts with, with their tags (for affinity).
    pub local: Vec<ServiceEndpoint>,
    /// HTTP: the route configuration (served by RDS) and the connection manager.
    pub route: Option<RouteConfiguration>,
    pub http: Option<HttpConnectionManager>,
    pub tcp: Option<TcpProxy>,
}

/// A proxy's resources while plugins shape them.
#[derive(Default)]
pub struct Generated {
    pub inbounds: Vec<InboundResources>,
    pub outbounds: Vec<OutboundResources>,
    /// Clusters that belong to no inbound or outbound (a trace collector's).
    pub clusters: Vec<Cluster>,
}

impl Generated {
    /// Every HTTP connection manager, inbound and outbound.
    pub fn connection_managers(&mut self) -> impl Iterator<Item = &mut HttpConnectionManager> {
        let inbound = self.inbounds.iter_mut().filter_map(|i| i.http.as_mut());
        let outbound = self.outbounds.iter_mut().filter_map(|o| o.http.as_mut());
        inbound.chain(outbound)
    }
}

/// Applies one kind's resolved value to a proxy's resources.
pub trait PolicyPlugin: Sync {
    /// The kinds whose policies this applies.
    fn kinds(&self) -> &'static [Kind];
    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated);
}

/// Every plugin, in the order they run.
pub const PLUGINS: &[&dyn PolicyPlugin] = &[
    &mesh_traffic_permission::Plugin,
    &mesh_timeout::Plugin,
    &mesh_retry::Plugin,
    &mesh_circuit_breaker::Plugin,
    &mesh_health_check::Plugin,
    &mesh_load_balancing_strategy::Plugin,
    &mesh_trace::Plugin,
];

/// Runs every plugin over `generated`.
pub fn apply_all(input: &ProxyInput<'_>, generated: &mut Generated) {
    for plugin in PLUGINS {
        plugin.apply(input, generated);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A policy kind is one whose resources select proxies; each needs exactly one plugin.
    fn is_policy(kind: Kind) -> bool {
        kind.scope() == meridian_model::Scope::Mesh && !matches!(kind, Kind::Dataplane | Kind::Secret)
    }

    #[test]
    fn every_policy_kind_has_exactly_one_plugin() {
        let mut seen = BTreeSet::new();
        for plugin in PLUGINS {
            for kind in plugin.kinds() {
                assert!(is_policy(*kind), "{kind} is not a policy kind");
                assert!(seen.insert(*kind), "{kind} has two plugins");
            }
        }
        let missing: Vec<_> = Kind::ALL
            .iter()
            .filter(|k| is_policy(**k) && !seen.contains(*k))
            .collect();
        assert!(missing.is_empty(), "policy kinds without a plugin: {missing:?}");
    }
}
