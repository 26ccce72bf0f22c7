//! Traffic between zones: which zones a service's cluster fails over to, and in what order;
//! the health settings that make it fail over; and the zone ingress that lets other zones in.
//!
//! ```text
//!   demo (zone-1) ── cluster reg-server ──> priority 0: zone-1's reg-server sidecars
//!                                       └─> priority 1..: other zones' ingresses (their
//!                                           advertised address), in MeshLoadBalancingStrategy
//!                                           `crossZone.failover` order (default: any zone)
//!   zone-2 ingress: TLS passthrough, SNI `reg-server{mesh=default}` ──> zone-2's reg-server sidecars
//! ```
//!
//! Mesh mTLS carries the destination in SNI and keeps the TLS session end to end (the ingress
//! never decrypts), so cross-zone endpoints exist only in meshes with mTLS on. A zone shows up
//! at a priority only when it has ready instances of the service and a reachable ingress.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::policies::mesh_load_balancing_strategy::LbConf;
use meridian_model::policies::zone_ingress::ZoneIngressSpec;

use super::cache::{CLUSTER, ENDPOINT, LISTENER, Snapshot};
use super::policies::mesh_timeout::DEFAULT_CONNECT_TIMEOUT;
use super::translate::{
    MeshContext, duration, eds_cluster, listener, load_assignment, pack, tcp_filter, tcp_proxy,
};

pub use meridian_model::policies::zone_ingress::INGRESS_NODE_MESH as INGRESS_MESH;

/// The SNI that names a service of a mesh to a zone ingress (Kuma's form).
pub fn sni(mesh: &str, service: &str) -> String {
    sni_tagged(mesh, service, &BTreeMap::new())
}

/// The SNI of a service's instances with `tags` (`backend{mesh=default,version=v2}`).
pub fn sni_tagged(mesh: &str, service: &str, tags: &BTreeMap<String, String>) -> String {
    let mut all = tags.clone();
    all.insert("mesh".into(), mesh.to_owned());
    tagged(service, &all)
}

/// A service, or its instances with `tags` (`backend{version=v2}`): cluster names and SNIs.
pub fn tagged(service: &str, tags: &BTreeMap<String, String>) -> String {
    if tags.is_empty() {
        return service.to_owned();
    }
    let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{service}{{{}}}", pairs.join(","))
}

/// What a zone knows of the others, for every mesh's translation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Zones {
    /// This zone's name.
    pub local: String,
    /// Each other zone's reachable ingresses (advertised host and port).
    pub ingresses: BTreeMap<String, Vec<(String, u32)>>,
}

/// Envoy's overprovisioning factor for a failover threshold: below `percentage` healthy
/// endpoints in a priority, traffic starts spilling to the next one.
pub fn overprovisioning(conf: Option<&LbConf>) -> Option<UInt32Value> {
    let pct = conf?
        .locality_awareness
        .as_ref()?
        .cross_zone
        .as_ref()?
        .failover_threshold
        .as_ref()?
        .percentage
        .value();
    let factor = if pct <= 0.0 { 100_000.0 } else { 10_000.0 / pct };
    Some(UInt32Value {
        value: factor.round().clamp(100.0, 100_000.0) as u32,
    })
}

/// The localities other zones add to a cluster, each zone at its priority (from 1), with one
/// endpoint per ingress weighted by the zone's ready instances.
pub fn remote_localities(
    zones: &Zones,
    order: &[Vec<String>],
    instances: &BTreeMap<String, u32>,
    first_priority: u32,
    endpoint: impl Fn(&str, u32, u32) -> envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> Vec<LocalityLbEndpoints> {
    let mut out = Vec::new();
    for (i, group) in order.iter().enumerate() {
        for zone in group {
            let (Some(ingresses), Some(&count)) = (zones.ingresses.get(zone), instances.get(zone)) else {
                continue;
            };
            out.push(LocalityLbEndpoints {
                locality: Some(Locality {
                    zone: zone.clone(),
                    ..Default::default()
                }),
                lb_endpoints: ingresses
                    .iter()
                    .map(|(host, port)| endpoint(host, *port, count))
                    .collect(),
                priority: first_priority + i as u32,
                ..Default::default()
            });
        }
    }
    out
}

/// Everything a zone ingress gets: in each mesh with mTLS, for each service with endpoints
/// here, a filter chain matching the service's SNI that passes the caller's TLS through
/// (never decrypting it) to the service's sidecars. Anything else is closed.
pub fn ingress_snapshot(ingress: &ZoneIngressSpec, meshes: &[&MeshContext]) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut chains = Vec::new();
    for ctx in meshes.iter().filter(|c| c.tls.is_some()) {
        // Each service whole, and each of its subsets that a route sends to.
        let mut destinations: std::collections::BTreeSet<(&String, BTreeMap<String, String>)> =
            ctx.services.keys().map(|s| (s, BTreeMap::new())).collect();
        let http = ctx.policies.http_routes.iter().flat_map(|r| r.spec.backends());
        let tcp = ctx.policies.tcp_routes.iter().flat_map(|r| r.spec.backends());
        {
            for (_, backend) in http.chain(tcp) {
                if let Some((service, _)) = ctx.services.get_key_value(&backend.name)
                    && backend.tags.is_some()
                {
                    destinations.insert((service, backend.subset()));
                }
            }
        }
        for (service, tags) in destinations {
            let info = &ctx.services[service];
            let endpoints: Vec<_> = info
                .endpoints
                .iter()
                .filter(|e| tags.iter().all(|(k, v)| e.tags.get(k) == Some(v)))
                .cloned()
                .collect();
            if endpoints.is_empty() {
                continue;
            }
            let target = sni_tagged(&ctx.mesh, service, &tags);
            let cluster = Cluster {
                connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
                outlier_detection: super::policies::mesh_circuit_breaker::outlier_detection(None),
                ..eds_cluster(&target)
            };
            snap.insert(CLUSTER, target.clone(), pack(&cluster));
            snap.insert(
                ENDPOINT,
                target.clone(),
                pack(&load_assignment(&target, &endpoints)),
            );
            chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![target.clone()],
                    ..Default::default()
                }),
                filters: vec![tcp_filter(&tcp_proxy(
                    &format!("ingress_{}_{}", ctx.mesh, tagged(service, &tags)),
                    &target,
                ))],
                name: target,
                ..Default::default()
            });
        }
    }
    // Whatever names no service here: tcp_proxy to a cluster that does not exist closes it.
    chains.push(FilterChain {
        filters: vec![tcp_filter(&tcp_proxy("ingress_unknown", "unknown-service"))],
        name: "unknown-service".into(),
        ..Default::default()
    });
    let n = &ingress.networking;
    let listener_name = format!("ingress:{}:{}", n.address, n.port);
    let mut l = listener(
        listener_name.clone(),
        &n.address,
        n.port,
        TrafficDirection::Inbound,
        chains,
    );
    l.listener_filters = vec![super::tls::tls_inspector()];
    snap.insert(LISTENER, listener_name, pack(&l));
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(yaml: &str) -> LbConf {
        let doc = meridian_model::text::yaml_values(yaml).expect("yaml").remove(0);
        serde_json::from_value(doc).expect("conf")
    }

    #[test]
    fn thresholds_become_overprovisioning() {
        let c = conf("localityAwareness:\n  crossZone:\n    failoverThreshold: {percentage: 50}\n");
        assert_eq!(overprovisioning(Some(&c)).map(|v| v.value), Some(200));
        assert_eq!(overprovisioning(None), None);
    }
}
