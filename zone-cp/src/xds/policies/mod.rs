//! Policy plugins: each applies one kind's resolved value to a proxy's generated resources.
//!
//! ```text
//!   base resources (translate::proxy_snapshot: listeners, clusters, routes, endpoints, typed)
//!     └─> PLUGINS in order, each: resolve its kind for the proxy (meridian_model::resolve),
//!         change the resources it owns; with no policy, apply the kind's defaults
//!     └─> packed into the proxy's snapshot
//! ```
//!
//! Adding a built-in kind: its model module (`shared/model/src/policies/<kind>.rs`: types,
//! validation, merge) with its line in the model's kind table, its plugin here (`<kind>.rs`),
//! and a line in [`PLUGINS`]. A kind defined outside Meridian is its two files and one call to
//! [`register`], which takes both halves at once (`zone-cp/tests/extension_kind/` is one).
//! [`check`] refuses a policy kind without exactly one plugin; zone-cp checks at start.

pub mod mesh_circuit_breaker;
pub mod mesh_fault_injection;
pub mod mesh_health_check;
pub mod mesh_http_route;
pub mod mesh_load_balancing_strategy;
pub mod mesh_rate_limit;
pub mod mesh_retry;
pub mod mesh_tcp_route;
pub mod mesh_timeout;
pub mod mesh_tls;
pub mod mesh_trace;
pub mod mesh_traffic_permission;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{RouteAction, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use meridian_model::Kind;
use meridian_model::extension::{self, ExtensionKind, RegisterError};
use meridian_model::resolve::ProxyView;
use meridian_model::resolve::access::Access;

use super::cache::Types;
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
    /// Network filters ahead of the HTTP or TCP one (a connection rate limit).
    pub network_filters: Vec<envoy_types::pb::envoy::config::listener::v3::Filter>,
    /// How mTLS into it is taken, where a MeshTLS says (the Mesh's mode otherwise).
    pub tls: Option<InboundTls>,
    /// Who may call, enforced over mTLS (set by the permissions plugin).
    pub access: Option<Access>,
    /// Whether its listener binds its address; a transparent proxy's inbounds do not (the
    /// redirect listener hands their connections over).
    pub bind: bool,
}

/// One cluster traffic to an outbound may take: the service's own, one of its subsets (by
/// tags), or another service a route sends to.
pub struct Upstream {
    /// The service the cluster reaches (whose policies shape it).
    pub service: String,
    /// The subset's tags; empty for the whole service.
    pub tags: BTreeMap<String, String>,
    /// The service speaks gRPC.
    pub grpc: bool,
    pub cluster: Cluster,
    pub endpoints: ClusterLoadAssignment,
    /// The local endpoints `endpoints` starts with, with their tags (for affinity).
    pub local: std::sync::Arc<Vec<ServiceEndpoint>>,
}

/// What a MeshTLS says of an inbound's mTLS.
#[derive(Clone, Debug, Default)]
pub struct InboundTls {
    /// Plaintext is taken beside mTLS (`None`: as the Mesh says).
    pub permissive: Option<bool>,
    /// The TLS versions and cipher suites accepted.
    pub params: Option<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsParameters>,
}

/// Traffic to one service: its listener's filter, route, clusters and endpoints.
pub struct OutboundResources {
    pub service: String,
    /// The service speaks gRPC.
    pub grpc: bool,
    pub address: String,
    pub port: u32,
    /// The service's own cluster first, then any a route added.
    pub upstreams: Vec<Upstream>,
    /// HTTP: the route configuration (served by RDS) and the connection manager.
    pub route: Option<RouteConfiguration>,
    /// The MeshHTTPRoutes behind each of `route`'s routes, in order (empty: none made them).
    pub route_origins: Vec<Vec<String>>,
    pub http: Option<HttpConnectionManager>,
    pub tcp: Option<TcpProxy>,
    /// Whether its listener binds its address: a declared outbound does; a transparent
    /// proxy's listener at the service's virtual IP does not (the redirect listener hands
    /// connections to it).
    pub bind: bool,
}

/// A proxy's resources while plugins shape them.
#[derive(Default)]
pub struct Generated {
    pub inbounds: Vec<InboundResources>,
    pub outbounds: Vec<OutboundResources>,
    /// Clusters that belong to no inbound or outbound (a trace collector's, passthrough).
    pub clusters: Vec<Cluster>,
    /// Listeners that belong to no inbound or outbound (transparent proxying's redirect
    /// listeners, and the DNS records meridian-dp answers from).
    pub listeners: Vec<envoy_types::pb::envoy::config::listener::v3::Listener>,
}

impl OutboundResources {
    /// Each route action, with the MeshHTTPRoutes behind its route (none for the service's
    /// own route), and the service: what a policy that may target routes shapes.
    pub fn actions_with_origins(&mut self) -> (&str, Vec<(&[String], &mut RouteAction)>) {
        let Self {
            service,
            route,
            route_origins,
            ..
        } = self;
        let routes = route
            .iter_mut()
            .flat_map(|r| r.virtual_hosts.iter_mut())
            .flat_map(|vh| vh.routes.iter_mut());
        let actions = routes
            .enumerate()
            .filter_map(|(i, r)| match &mut r.action {
                Some(Action::Route(action)) => {
                    Some((route_origins.get(i).map_or(&[][..], Vec::as_slice), action))
                }
                _ => None,
            })
            .collect();
        (service.as_str(), actions)
    }
}

impl Generated {
    /// Every HTTP connection manager, inbound and outbound.
    pub fn connection_managers(&mut self) -> impl Iterator<Item = &mut HttpConnectionManager> {
        let inbound = self.inbounds.iter_mut().filter_map(|i| i.http.as_mut());
        let outbound = self.outbounds.iter_mut().filter_map(|o| o.http.as_mut());
        inbound.chain(outbound)
    }
}

/// Applies one kind's resolved value to a proxy's resources. What a plugin makes of an
/// outbound must depend on the proxy and that outbound alone, not on the other inbounds and
/// outbounds in `generated`: an endpoints patch translates some outbounds without the rest
/// (see [`crate::xds::translate::outbounds_snapshot`]).
pub trait PolicyPlugin: Sync {
    /// The kinds whose policies this applies.
    fn kinds(&self) -> &'static [Kind];
    /// The resource types `apply` can change: a change to a policy of its kinds regenerates
    /// these alone. All of them unless a plugin says otherwise.
    fn shapes(&self) -> Types {
        Types::ALL
    }
    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated);
}

/// Every plugin, in the order they run.
pub const PLUGINS: &[&dyn PolicyPlugin] = &[
    &mesh_http_route::Plugin,
    &mesh_tcp_route::Plugin,
    &mesh_traffic_permission::Plugin,
    &mesh_fault_injection::Plugin,
    &mesh_rate_limit::Plugin,
    &mesh_tls::Plugin,
    &mesh_timeout::Plugin,
    &mesh_retry::Plugin,
    &mesh_circuit_breaker::Plugin,
    &mesh_health_check::Plugin,
    &mesh_load_balancing_strategy::Plugin,
    &mesh_trace::Plugin,
];

/// Plugins of kinds registered from outside, in the order registered.
static REGISTERED: RwLock<Vec<&'static dyn PolicyPlugin>> = RwLock::new(Vec::new());

/// Every plugin in the order they run: [`PLUGINS`], then the registered ones.
pub fn plugins() -> Vec<&'static dyn PolicyPlugin> {
    let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    PLUGINS
        .iter()
        .copied()
        .chain(registered.iter().copied())
        .collect()
}

/// Runs every plugin that shapes any of `types` over `generated` (the others change nothing
/// that is kept).
pub fn apply_all(input: &ProxyInput<'_>, generated: &mut Generated, types: Types) {
    // Per proxy, on the generation path: no list is built, the lock is a read.
    let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    for plugin in PLUGINS.iter().chain(registered.iter()) {
        if plugin.shapes().intersects(types) {
            plugin.apply(input, generated);
        }
    }
}

/// The resource types a change to a resource of `kind` can alter in a proxy's snapshot: its
/// plugin's, for a policy kind; all of them for any other kind.
pub fn shapes(kind: Kind) -> Types {
    let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    PLUGINS
        .iter()
        .chain(registered.iter())
        .find(|p| p.kinds().contains(&kind))
        .map_or(Types::ALL, |p| p.shapes())
}

/// Why a policy kind and its plugin do not fit together.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Taken(#[from] RegisterError),
    #[error("the plugin given for {kind} applies {applies:?}; it must apply {kind} alone")]
    WrongPlugin { kind: Kind, applies: Vec<Kind> },
    #[error("policy kind {0} has no plugin: register it with xds::policies::register")]
    NoPlugin(Kind),
    #[error("policy kind {0} has more than one plugin")]
    TwoPlugins(Kind),
    #[error("{0} is not a policy kind: no plugin applies it")]
    NotAPolicy(Kind),
}

/// Makes a policy kind defined outside Meridian known, together with the plugin that applies
/// it: the kind is then parsed, validated, stored, served and applied like a built-in one.
pub fn register(
    kind: &'static ExtensionKind,
    plugin: &'static dyn PolicyPlugin,
) -> Result<(), RegistryError> {
    let expected = Kind::Extension(kind);
    if plugin.kinds() != [expected] {
        return Err(RegistryError::WrongPlugin {
            kind: expected,
            applies: plugin.kinds().to_vec(),
        });
    }
    let mut registered = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    extension::register(kind)?;
    registered.push(plugin);
    Ok(())
}

/// A policy kind is one whose resources select proxies; each needs exactly one plugin.
fn is_policy(kind: Kind) -> bool {
    kind.scope() == meridian_model::Scope::Mesh
        && !matches!(kind, Kind::Dataplane | Kind::Secret | Kind::VirtualIPs)
}

/// Checks that every policy kind, built-in or registered, has exactly one plugin.
pub fn check() -> Result<(), RegistryError> {
    let mut seen = BTreeSet::new();
    for plugin in plugins() {
        for kind in plugin.kinds() {
            if !is_policy(*kind) {
                return Err(RegistryError::NotAPolicy(*kind));
            }
            if !seen.insert(*kind) {
                return Err(RegistryError::TwoPlugins(*kind));
            }
        }
    }
    match Kind::all()
        .into_iter()
        .find(|k| is_policy(*k) && !seen.contains(k))
    {
        Some(kind) => Err(RegistryError::NoPlugin(kind)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_kind_has_exactly_one_plugin() {
        assert_eq!(check(), Ok(()));
    }
}
