//! A snapshot is checked before it is published (go-control-plane's `Snapshot.Consistent()`):
//! every route configuration a listener asks for over RDS, every EDS cluster's assignment and
//! every SDS secret a cluster or listener presents or trusts must be in the same snapshot, and
//! every resource must decode as its type. Envoy would otherwise wait for the missing resource
//! (a cluster or listener stuck warming) or reject the push; refusing it here keeps the proxy
//! on its last good snapshot and says what is wrong.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::cache::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Snapshot};

/// What makes a snapshot unfit to publish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistent {
    #[error("{by} refers to {type_url} {name:?}, which the snapshot does not hold")]
    Missing {
        by: String,
        type_url: &'static str,
        name: String,
    },
    #[error("{type_url} {name:?} does not decode: {message}")]
    Undecodable {
        type_url: &'static str,
        name: String,
        message: String,
    },
}

/// Checks that everything `snapshot` refers to is in it.
pub fn check(snapshot: &Snapshot) -> Result<(), Inconsistent> {
    let names = |type_url: &str| -> BTreeSet<&str> {
        let items = snapshot.of_type(type_url).into_iter().flatten();
        items.map(|(name, _)| name.as_str()).collect()
    };
    let (routes, endpoints, secrets) = (names(ROUTE), names(ENDPOINT), names(SECRET));
    let need = |have: &BTreeSet<&str>, type_url: &'static str, name: &str, by: &dyn Fn() -> String| {
        if have.contains(name) {
            Ok(())
        } else {
            Err(Inconsistent::Missing {
                by: by(),
                type_url,
                name: name.to_owned(),
            })
        }
    };

    for (name, cluster) in decoded::<Cluster>(snapshot, CLUSTER)? {
        let by = || format!("cluster {name:?}");
        let eds =
            cluster.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        if eds {
            let service = cluster
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str());
            let assignment = service.filter(|s| !s.is_empty()).unwrap_or(&cluster.name);
            need(&endpoints, ENDPOINT, assignment, &by)?;
        }
        let tls = tls_context::<UpstreamTlsContext>(cluster.transport_socket.as_ref(), CLUSTER, name)?;
        for secret in tls.iter().flat_map(|t| sds_names(t.common_tls_context.as_ref())) {
            need(&secrets, SECRET, secret, &by)?;
        }
    }

    for (name, listener) in decoded::<Listener>(snapshot, LISTENER)? {
        let by = || format!("listener {name:?}");
        for chain in &listener.filter_chains {
            let tls = tls_context::<DownstreamTlsContext>(chain.transport_socket.as_ref(), LISTENER, name)?;
            for secret in tls.iter().flat_map(|t| sds_names(t.common_tls_context.as_ref())) {
                need(&secrets, SECRET, secret, &by)?;
            }
            for filter in &chain.filters {
                let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
                    continue;
                };
                if any.type_url != HttpConnectionManager::type_url() {
                    continue;
                }
                let hcm: HttpConnectionManager = decode(any, LISTENER, name)?;
                if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                    need(&routes, ROUTE, &rds.route_config_name, &by)?;
                }
            }
        }
    }

    // The rest must at least be what their type says.
    decoded::<RouteConfiguration>(snapshot, ROUTE)?;
    decoded::<ClusterLoadAssignment>(snapshot, ENDPOINT)?;
    decoded::<Secret>(snapshot, SECRET)?;
    Ok(())
}

fn decode<M: Message + Default>(any: &Any, type_url: &'static str, name: &str) -> Result<M, Inconsistent> {
    M::decode(any.value.as_slice()).map_err(|e| Inconsistent::Undecodable {
        type_url,
        name: name.to_owned(),
        message: e.to_string(),
    })
}

fn decoded<'a, M: Message + Default>(
    snapshot: &'a Snapshot,
    type_url: &'static str,
) -> Result<Vec<(&'a str, M)>, Inconsistent> {
    let items = snapshot.of_type(type_url).into_iter().flatten();
    items
        .map(|(name, r)| Ok((name.as_str(), decode(&r.resource, type_url, name)?)))
        .collect()
}

/// The TLS context of a transport socket, when it is one.
fn tls_context<M: Message + Default + Name>(
    socket: Option<&TransportSocket>,
    type_url: &'static str,
    name: &str,
) -> Result<Option<M>, Inconsistent> {
    match socket.and_then(|s| s.config_type.as_ref()) {
        Some(SocketConfig::TypedConfig(any)) if any.type_url == M::type_url() => {
            decode(any, type_url, name).map(Some)
        }
        _ => Ok(None),
    }
}

/// The SDS secrets a TLS context presents or validates with.
fn sds_names(common: Option<&CommonTlsContext>) -> Vec<&str> {
    let Some(common) = common else { return Vec::new() };
    let mut names: Vec<&str> = (common.tls_certificate_sds_secret_configs.iter())
        .map(|s| s.name.as_str())
        .collect();
    match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => names.push(&s.name),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            names.extend(
                c.validation_context_sds_secret_config
                    .as_ref()
                    .map(|s| s.name.as_str()),
            );
        }
        _ => {}
    }
    names
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;

    use super::*;

    fn pack<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn eds_cluster(name: &str) -> Any {
        pack(&Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        })
    }

    fn rds_listener(route: &str) -> Any {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        pack(&Listener {
            name: "outbound:web".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(FilterConfig::TypedConfig(pack(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[test]
    fn references_must_be_in_the_snapshot() {
        let mut s = Snapshot::default();
        s.insert(CLUSTER, "web".into(), eds_cluster("web"));
        s.insert(LISTENER, "outbound:web".into(), rds_listener("outbound:web"));
        assert_eq!(
            check(&s),
            Err(Inconsistent::Missing {
                by: "cluster \"web\"".into(),
                type_url: ENDPOINT,
                name: "web".into()
            })
        );
        s.insert(ENDPOINT, "web".into(), pack(&ClusterLoadAssignment::default()));
        let missing_route = check(&s).expect_err("no route configuration");
        assert!(
            missing_route
                .to_string()
                .contains("RouteConfiguration \"outbound:web\""),
            "{missing_route}"
        );
        s.insert(ROUTE, "outbound:web".into(), pack(&RouteConfiguration::default()));
        assert_eq!(check(&s), Ok(()));

        s.insert(
            SECRET,
            "junk".into(),
            Any {
                type_url: Secret::type_url(),
                value: vec![0xff, 0xff],
            },
        );
        assert!(matches!(check(&s), Err(Inconsistent::Undecodable { name, .. }) if name == "junk"));
    }
}
