//! MeshLoadBalancingStrategy on outbounds: the cluster's algorithm (`loadBalancer`), the
//! route's hash policies (`hashPolicies`, or the ring hash's or Maglev's own), the weights of
//! local endpoints (`localZone` affinity), and, with mTLS on, the other zones' ingresses at the priorities `crossZone`
//! gives them, with the failover threshold as Envoy's overprovisioning factor. With no policy,
//! every other zone with the service is the next priority (Kuma's default).

use crate::xds::cache::{CLUSTER, ENDPOINT, ROUTE, Types};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig, ring_hash_lb_config,
};
use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as EnvoyHashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie as EnvoyCookie, FilterState as EnvoyFilterState, Header, PolicySpecifier,
    QueryParameter,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::pb::google::protobuf::UInt64Value;
use meridian_model::Kind;
use meridian_model::policies::mesh_load_balancing_strategy::{
    HashFunction, HashPolicy, HashPolicyType, LbConf, LoadBalancerType,
};
use meridian_model::resolve::{locality, outbound};

use super::{Generated, PolicyPlugin, ProxyInput, Upstream};
use crate::xds::crosszone;
use crate::xds::translate::{duration, route_actions, socket};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshLoadBalancingStrategy]
    }

    fn shapes(&self) -> Types {
        Types::of(&[CLUSTER, ENDPOINT, ROUTE])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let ctx = input.ctx;
        // The caller's own tag values, which local endpoints sharing them are preferred for.
        let caller: std::collections::BTreeMap<&String, &String> = input
            .view
            .dataplane
            .networking
            .inbound
            .iter()
            .flatten()
            .flat_map(|i| i.tags.iter())
            .collect();
        for o in &mut generated.outbounds {
            let resolved = outbound(&ctx.policies.balancing, &input.view, &o.service);
            let conf = resolved.as_ref().map(|r| &r.conf);
            if let Some(conf) = conf {
                let hashing = hash_policies(conf);
                if !hashing.is_empty() {
                    for action in o.route.iter_mut().flat_map(route_actions) {
                        action.hash_policy = hashing.clone();
                    }
                }
            }
            for u in &mut o.upstreams {
                let own;
                let conf = if u.service == o.service {
                    conf
                } else {
                    own = outbound(&ctx.policies.balancing, &input.view, &u.service);
                    own.as_ref().map(|r| &r.conf)
                };
                shape_upstream(input, &caller, u, conf);
            }
        }
    }
}

/// An upstream's algorithm, its local endpoints' weights, and (with mTLS on) the other zones'
/// ingresses at the priorities `crossZone` gives them, weighted by their instances (of the
/// subset, for a subset's cluster).
fn shape_upstream(
    input: &ProxyInput<'_>,
    caller: &std::collections::BTreeMap<&String, &String>,
    u: &mut Upstream,
    conf: Option<&LbConf>,
) {
    let ctx = input.ctx;
    if let Some(conf) = conf {
        algorithm(&mut u.cluster, conf);
    }
    if let Some(first) = u.endpoints.endpoints.first_mut() {
        first.locality = Some(Locality {
            zone: ctx.zones.local.clone(),
            ..Default::default()
        });
        for (lb, e) in first.lb_endpoints.iter_mut().zip(u.local.iter()) {
            let w = locality::affinity_weight(conf, caller, &e.tags);
            if w != 1 {
                lb.load_balancing_weight = Some(UInt32Value { value: w });
            }
        }
    }
    // Other zones, through their ingresses: only with mTLS, which carries the service in SNI.
    let Some(instances) = ctx
        .remote_instances(&u.service, &u.tags)
        .filter(|_| input.tls.is_some())
    else {
        return;
    };
    let candidates: std::collections::BTreeSet<String> = instances.keys().cloned().collect();
    let order = if locality::locality_disabled(conf) {
        vec![candidates.into_iter().collect()]
    } else {
        locality::failover_order(conf, &ctx.zones.local, &candidates)
    };
    let first = u32::from(!locality::locality_disabled(conf));
    u.endpoints.endpoints.extend(crosszone::remote_localities(
        &ctx.zones,
        &order,
        &instances,
        first,
        |host, port, weight| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket(host, port)),
                ..Default::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(UInt32Value { value: weight.max(1) }),
            ..Default::default()
        },
    ));
    u.endpoints.policy = crosszone::overprovisioning(conf).map(|factor| Policy {
        overprovisioning_factor: Some(factor),
        ..Default::default()
    });
}

/// The cluster's load-balancing algorithm and its settings.
fn algorithm(cluster: &mut Cluster, conf: &LbConf) {
    let Some(lb) = &conf.load_balancer else { return };
    let u64v = |v: Option<u32>| v.map(|n| UInt64Value { value: u64::from(n) });
    let (policy, config) = match lb.lb_type {
        LoadBalancerType::RoundRobin => (LbPolicy::RoundRobin, None),
        LoadBalancerType::Random => (LbPolicy::Random, None),
        LoadBalancerType::LeastRequest => {
            let l = lb.least_request.as_ref();
            (
                LbPolicy::LeastRequest,
                Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    choice_count: l
                        .and_then(|l| l.choice_count)
                        .map(|value| envoy_types::pb::google::protobuf::UInt32Value { value }),
                    active_request_bias: l
                        .and_then(|l| l.active_request_bias.as_ref())
                        .and_then(|b| b.value())
                        .map(|default_value| RuntimeDouble {
                            default_value,
                            runtime_key: String::new(),
                        }),
                    ..Default::default()
                })),
            )
        }
        LoadBalancerType::RingHash => {
            let r = lb.ring_hash.as_ref();
            let function = match r.and_then(|r| r.hash_function) {
                Some(HashFunction::MurmurHash2) => ring_hash_lb_config::HashFunction::MurmurHash2,
                _ => ring_hash_lb_config::HashFunction::XxHash,
            };
            (
                LbPolicy::RingHash,
                Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: u64v(r.and_then(|r| r.min_ring_size)),
                    maximum_ring_size: u64v(r.and_then(|r| r.max_ring_size)),
                    hash_function: function as i32,
                })),
            )
        }
        LoadBalancerType::Maglev => (
            LbPolicy::Maglev,
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: u64v(lb.maglev.as_ref().and_then(|m| m.table_size)),
            })),
        ),
    };
    cluster.lb_policy = policy as i32;
    cluster.lb_config = config;
}

/// What requests are hashed on: `hashPolicies`, else the ring hash's or Maglev's own.
fn hash_policies(conf: &LbConf) -> Vec<EnvoyHashPolicy> {
    let lb = conf.load_balancer.as_ref();
    let own = lb.and_then(|lb| match lb.lb_type {
        LoadBalancerType::RingHash => lb.ring_hash.as_ref().and_then(|r| r.hash_policies.as_ref()),
        LoadBalancerType::Maglev => lb.maglev.as_ref().and_then(|m| m.hash_policies.as_ref()),
        _ => None,
    });
    conf.hash_policies
        .as_ref()
        .or(own)
        .into_iter()
        .flatten()
        .filter_map(hash_policy)
        .collect()
}

fn hash_policy(p: &HashPolicy) -> Option<EnvoyHashPolicy> {
    let specifier = match p.policy_type {
        HashPolicyType::Header => PolicySpecifier::Header(Header {
            header_name: p.header.as_ref()?.name.clone(),
            ..Default::default()
        }),
        HashPolicyType::Cookie => {
            let c = p.cookie.as_ref()?;
            PolicySpecifier::Cookie(EnvoyCookie {
                name: c.name.clone(),
                ttl: c.ttl.as_ref().map(|t| duration(t.as_duration())),
                path: c.path.clone().unwrap_or_default(),
                ..Default::default()
            })
        }
        HashPolicyType::Connection => PolicySpecifier::ConnectionProperties(ConnectionProperties {
            source_ip: p.connection.as_ref().and_then(|c| c.source_ip).unwrap_or(false),
        }),
        HashPolicyType::QueryParameter => PolicySpecifier::QueryParameter(QueryParameter {
            name: p.query_parameter.as_ref()?.name.clone(),
        }),
        HashPolicyType::FilterState => PolicySpecifier::FilterState(EnvoyFilterState {
            key: p.filter_state.as_ref()?.key.clone(),
        }),
    };
    Some(EnvoyHashPolicy {
        terminal: p.terminal.unwrap_or(false),
        policy_specifier: Some(specifier),
    })
}
