//! The last step of a proxy's translation: its shaped resources packed into its snapshot, in
//! the resource types asked for. Inbound filter chains get their permissions (RBAC) and TLS
//! here, as the mesh and any MeshTLS say.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::google::protobuf::BoolValue;
use meridian_model::resolve::access::Access;

use super::cache::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot, Types};
use super::policies::Generated;
use super::tls;
use super::translate::{MeshContext, TlsSettings, ads, chain_of, hcm_filter, listener, pack, tcp_filter};

/// Packs the shaped resources of `types` into the snapshot: inbound filter chains (with RBAC
/// and TLS as the mesh says), outbound listeners, clusters, endpoints and routes.
pub(crate) fn pack_into(
    snap: &mut Snapshot,
    ctx: &MeshContext,
    generated: Generated,
    tls: Option<&TlsSettings>,
    types: Types,
) {
    let (clusters, listeners) = (types.contains(CLUSTER), types.contains(LISTENER));
    for cluster in generated.clusters.iter().filter(|_| clusters) {
        snap.insert(CLUSTER, cluster.name.clone(), pack(cluster));
    }
    for inbound in generated.inbounds {
        if clusters {
            snap.insert(CLUSTER, inbound.cluster.name.clone(), pack(&inbound.cluster));
        }
        if !listeners {
            continue;
        }
        let listener_name = format!("inbound:{}:{}", inbound.address, inbound.port);
        let stat_prefix = listener_name.replace(':', "_");
        let chain = |access: Option<&Access>| -> Vec<Filter> {
            let extra = inbound.network_filters.iter().cloned();
            match (&inbound.http, &inbound.tcp) {
                (Some(hcm), _) => {
                    let mut hcm = hcm.clone();
                    if let Some(a) = access {
                        hcm.http_filters.insert(0, tls::http_rbac(&ctx.mesh, a));
                    }
                    extra.chain([hcm_filter(&hcm)]).collect()
                }
                (None, Some(tcp)) => access
                    .map(|a| tls::network_rbac(&ctx.mesh, a, &stat_prefix))
                    .into_iter()
                    .chain(extra)
                    .chain([tcp_filter(tcp)])
                    .collect(),
                (None, None) => Vec::new(),
            }
        };
        // A MeshTLS may set this inbound's mode and TLS parameters.
        let own = inbound.tls.as_ref();
        let permissive = tls.is_some_and(|t| own.and_then(|o| o.permissive).unwrap_or(t.permissive));
        let chains = match tls {
            None => vec![chain_of(chain(None))],
            Some(_) => {
                let mut chains = vec![FilterChain {
                    filter_chain_match: permissive.then(|| FilterChainMatch {
                        transport_protocol: "tls".into(),
                        ..Default::default()
                    }),
                    filters: chain(inbound.access.as_ref()),
                    transport_socket: Some(tls::inbound_socket(&ads(), own.and_then(|o| o.params.clone()))),
                    name: "mtls".into(),
                    ..Default::default()
                }];
                if permissive {
                    chains.push(FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            transport_protocol: "raw_buffer".into(),
                            ..Default::default()
                        }),
                        filters: chain(None),
                        name: "plaintext".into(),
                        ..Default::default()
                    });
                }
                chains
            }
        };
        let mut l = listener(
            listener_name.clone(),
            &inbound.address,
            inbound.port,
            TrafficDirection::Inbound,
            chains,
        );
        if permissive {
            l.listener_filters = vec![tls::tls_inspector()];
        }
        if !inbound.bind {
            l.bind_to_port = Some(BoolValue { value: false });
        }
        snap.insert(LISTENER, listener_name, pack(&l));
    }
    for o in generated.outbounds {
        for u in &o.upstreams {
            if clusters {
                snap.insert(CLUSTER, u.cluster.name.clone(), pack(&u.cluster));
            }
            if types.contains(ENDPOINT) {
                snap.insert(ENDPOINT, u.cluster.name.clone(), pack(&u.endpoints));
            }
        }
        if let Some(route) = o.route.as_ref().filter(|_| types.contains(ROUTE)) {
            snap.insert(ROUTE, route.name.clone(), pack(route));
        }
        if !listeners {
            continue;
        }
        let filter = match (&o.http, &o.tcp) {
            (Some(hcm), _) => hcm_filter(hcm),
            (None, Some(tcp)) => tcp_filter(tcp),
            (None, None) => continue,
        };
        let listener_name = format!("outbound:{}:{}", o.address, o.port);
        let mut l = listener(
            listener_name.clone(),
            &o.address,
            o.port,
            TrafficDirection::Outbound,
            vec![chain_of(vec![filter])],
        );
        if !o.bind {
            l.bind_to_port = Some(BoolValue { value: false });
        }
        snap.insert(LISTENER, listener_name, pack(&l));
    }
    for l in generated.listeners.iter().filter(|_| listeners) {
        snap.insert(LISTENER, l.name.clone(), pack(l));
    }
}
