//! Transparent proxying's side of a proxy's config: a listener at each reachable service's
//! virtual IP, the redirect listeners iptables send the workload's connections to, where
//! traffic outside the mesh goes, and the DNS records meridian-dp answers `<service>.mesh` from.
//!
//! ```text
//!   app ─connect(240.0.0.7:80)─> iptables ─> 0.0.0.0:15001 (use_original_dst)
//!        ──hand off──> outbound:240.0.0.7:80 (bind_to_port: false) ──> reg-server's cluster
//!        no listener for it ──> outbound:passthrough:ipv4 (ORIGINAL_DST) or refused
//!   peer ─> iptables ─> 0.0.0.0:15006 ──hand off──> inbound:ADDR:PORT (bind_to_port: false)
//!        no inbound for it ──> inbound:passthrough:ipv4 (to the original destination)
//!   _meridian:dns (never bound): metadata `meridian.dns.records`, "NAME IP" lines
//! ```
//!
//! A proxy gets the services it may reach (see `meridian_model::resolve::reach`), or those
//! its Dataplane lists in `reachableServices`, not the whole mesh.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::{BindConfig, ExtraSourceAddress, Metadata, TrafficDirection};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{AdditionalAddress, Filter, Listener, ListenerFilter};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::direct_response::v3::Config as DirectResponse;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind as ValueKind};
use meridian_model::policies::dataplane::{DataplaneSpec, IpFamilyMode, SERVICE_TAG, TransparentProxying};
use meridian_model::policies::virtual_ips::DOMAIN;

use super::policies::Generated;
use super::policies::mesh_timeout::DEFAULT_CONNECT_TIMEOUT;
use super::translate::{MeshContext, chain_of, duration, listener, pack, socket, tcp_filter, tcp_proxy};

pub const OUTBOUND_PASSTHROUGH: &str = "outbound:passthrough:ipv4";
pub const INBOUND_PASSTHROUGH: &str = "inbound:passthrough:ipv4";
/// Where traffic outside the mesh goes when the Mesh refuses it: nowhere.
pub const BLOCKED: &str = "outbound:passthrough:blocked";
/// The listener that carries the proxy's DNS records (never bound), and its metadata key.
pub const DNS_LISTENER: &str = "_meridian:dns";
pub const DNS_METADATA: &str = "meridian.dns";
/// The source address of inbound passthrough connections to the app: the iptables rules let
/// it through unredirected (Kuma's).
const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6";
const INBOUND_PASSTHROUGH_SOURCE_V6: &str = "::6";

/// The services (with their virtual IPs) the proxy `name` gets outbounds for: those in
/// `reachableServices` if listed, else those its permissions let it reach (every one, with
/// mTLS off: nothing is enforced). Services with no virtual IP yet wait for theirs.
pub(crate) fn reachable(
    ctx: &MeshContext,
    name: &str,
    dp: &DataplaneSpec,
    tp: &TransparentProxying,
) -> Vec<(String, Ipv4Addr)> {
    let services: BTreeSet<String> = match &tp.reachable_services {
        Some(listed) => listed.iter().cloned().collect(),
        None if ctx.tls.is_none() => ctx.services.keys().cloned().collect(),
        None => {
            let own: BTreeSet<&str> = dp
                .networking
                .inbound
                .iter()
                .flatten()
                .filter_map(|i| i.tags.get(SERVICE_TAG).map(String::as_str))
                .collect();
            // A proxy with no inbound shows its own name (see the reconciler's identities).
            let own: Vec<&str> = if own.is_empty() {
                vec![name]
            } else {
                own.into_iter().collect()
            };
            ctx.reach().reachable(&own)
        }
    };
    services
        .into_iter()
        .filter_map(|s| ctx.vips.get(&s).map(|ip| (s, *ip)))
        .collect()
}

fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack(&OriginalDst::default()))),
        ..Default::default()
    }
}

fn socket_address(ip: &str) -> Option<envoy_types::pb::envoy::config::core::v3::SocketAddress> {
    match socket(ip, 0).address {
        Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(a)) => Some(a),
        _ => None,
    }
}

/// An ORIGINAL_DST cluster; `sources` are the addresses it binds from, one per family (Envoy
/// picks the one matching the destination's).
fn original_dst_cluster(name: &str, sources: &[&str]) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        upstream_bind_config: sources.split_first().map(|(first, rest)| BindConfig {
            source_address: socket_address(first),
            extra_source_addresses: rest
                .iter()
                .map(|ip| ExtraSourceAddress {
                    address: socket_address(ip),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A redirect listener on every address of the families `ipFamilyMode` asks for (IPv4 unless
/// it says DualStack or IPv6).
fn redirect_listener(
    name: &str,
    port: u32,
    direction: TrafficDirection,
    cluster: &str,
    families: Option<IpFamilyMode>,
) -> Listener {
    let stat_prefix = name.replace(':', "_");
    let (primary, v6_too) = match families {
        Some(IpFamilyMode::Ipv6) => ("::", false),
        Some(IpFamilyMode::DualStack) => ("0.0.0.0", true),
        _ => ("0.0.0.0", false),
    };
    Listener {
        use_original_dst: Some(BoolValue { value: true }),
        listener_filters: vec![original_dst()],
        additional_addresses: if v6_too {
            vec![AdditionalAddress {
                address: Some(socket("::", port)),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..listener(
            name.to_owned(),
            primary,
            port,
            direction,
            vec![chain_of(vec![tcp_filter(&tcp_proxy(&stat_prefix, cluster))])],
        )
    }
}

/// Adds the redirect listeners, the passthrough clusters and the DNS records.
pub(crate) fn redirect(ctx: &MeshContext, tp: &TransparentProxying, generated: &mut Generated) {
    let outbound_cluster = if ctx.passthrough {
        generated
            .clusters
            .push(original_dst_cluster(OUTBOUND_PASSTHROUGH, &[]));
        OUTBOUND_PASSTHROUGH
    } else {
        generated.clusters.push(Cluster {
            name: BLOCKED.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: BLOCKED.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        BLOCKED
    };
    // The inbound hand-off comes from an address the rules let through unredirected, in each
    // family the proxy listens on.
    let sources: &[&str] = match tp.ip_family_mode {
        Some(IpFamilyMode::Ipv6) => &[INBOUND_PASSTHROUGH_SOURCE_V6],
        Some(IpFamilyMode::DualStack) => &[INBOUND_PASSTHROUGH_SOURCE, INBOUND_PASSTHROUGH_SOURCE_V6],
        _ => &[INBOUND_PASSTHROUGH_SOURCE],
    };
    generated
        .clusters
        .push(original_dst_cluster(INBOUND_PASSTHROUGH, sources));
    generated.listeners.push(redirect_listener(
        OUTBOUND_PASSTHROUGH,
        tp.outbound_port(),
        TrafficDirection::Outbound,
        outbound_cluster,
        tp.ip_family_mode,
    ));
    let mut inbound = redirect_listener(
        INBOUND_PASSTHROUGH,
        tp.inbound_port(),
        TrafficDirection::Inbound,
        INBOUND_PASSTHROUGH,
        tp.ip_family_mode,
    );
    // A permissive inbound tells TLS from plaintext by what the connection starts with: the
    // listener that takes the connection first looks.
    if ctx.tls.as_ref().is_some_and(|t| t.permissive) {
        inbound.listener_filters.push(super::tls::tls_inspector());
    }
    generated.listeners.push(inbound);
    let mut records: Vec<String> = generated
        .outbounds
        .iter()
        .filter(|o| !o.bind)
        .map(|o| format!("{}.{DOMAIN} {}", o.service, o.address))
        .collect();
    records.sort();
    records.dedup();
    generated.listeners.push(dns_listener(&records.join("\n")));
}

/// The records ride in one string field: prost writes maps in iteration order, and a single
/// entry keeps the listener's bytes (and so its version) the same for the same records.
fn dns_listener(records: &str) -> Listener {
    let text = |s: &str| Value {
        kind: Some(ValueKind::StringValue(s.to_owned())),
    };
    let metadata = Metadata {
        filter_metadata: [(
            DNS_METADATA.to_owned(),
            Struct {
                fields: [("records".to_owned(), text(records))].into(),
            },
        )]
        .into(),
        ..Default::default()
    };
    let refuse = Filter {
        name: "envoy.filters.network.direct_response".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(pack(
                &DirectResponse::default(),
            )),
        ),
    };
    Listener {
        bind_to_port: Some(BoolValue { value: false }),
        metadata: Some(metadata),
        ..listener(
            DNS_LISTENER.into(),
            "127.0.0.1",
            1,
            TrafficDirection::Outbound,
            vec![chain_of(vec![refuse])],
        )
    }
}
