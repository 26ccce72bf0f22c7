//! MeshTCPRoute on outbounds: a TCP outbound's proxy connects to the rule's backends by weight
//! (`tcp_proxy` weighted clusters, a cluster per subset). On an HTTP outbound it applies only
//! where no MeshHTTPRoute does (which wins, as in Kuma), sending every request to its backends.

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, WeightedCluster,
};
use meridian_model::Kind;
use meridian_model::policies::mesh_http_route::RuleConf;
use meridian_model::resolve::route::{http_routes, tcp_route};

use super::mesh_http_route::{backends, weighted};
use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::cache::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Types};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshTCPRoute, Kind::TrafficRoute]
    }

    fn shapes(&self) -> Types {
        Types::of(&[CLUSTER, ENDPOINT, LISTENER, ROUTE])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.tcp_routes;
        if policies.is_empty() {
            return;
        }
        for o in &mut generated.outbounds {
            let Some(resolved) = tcp_route(policies, &input.view, &o.service) else {
                continue;
            };
            let refs = resolved.conf.backend_refs.clone();
            if o.tcp.is_some() {
                let clusters = weighted(input, o, refs.as_deref());
                let Some(tcp) = &mut o.tcp else { continue };
                tcp.cluster_specifier = Some(match clusters.as_slice() {
                    [(one, _)] => ClusterSpecifier::Cluster(one.clone()),
                    many => ClusterSpecifier::WeightedClusters(WeightedCluster {
                        clusters: many
                            .iter()
                            .map(|(name, weight)| ClusterWeight {
                                name: name.clone(),
                                weight: *weight,
                                ..Default::default()
                            })
                            .collect(),
                    }),
                });
                continue;
            }
            if http_routes(&input.ctx.policies.http_routes, &input.view, &o.service).is_some() {
                continue;
            }
            let conf = RuleConf {
                filters: None,
                backend_refs: refs,
            };
            let specifier = backends(input, o, &conf);
            let routes = o.route.iter_mut().flat_map(|r| r.virtual_hosts.iter_mut());
            for route in routes.flat_map(|vh| vh.routes.iter_mut()) {
                if let Some(Action::Route(action)) = &mut route.action {
                    action.cluster_specifier = Some(specifier.clone());
                }
            }
        }
    }
}
