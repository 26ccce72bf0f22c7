//! MeshLoadBalancingStrategy on outbounds: the weights of local endpoints (`localZone`
//! affinity), and, with mTLS on, the other zones' ingresses at the priorities `crossZone`
//! gives them, with the failover threshold as Envoy's overprovisioning factor. With no policy,
//! every other zone with the service is the next priority (Kuma's default).

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint};
use envoy_types::pb::google::protobuf::UInt32Value;
use meridian_model::Kind;
use meridian_model::resolve::outbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::crosszone;
use crate::xds::translate::socket;

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshLoadBalancingStrategy]
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
            if let Some(first) = o.endpoints.endpoints.first_mut() {
                first.locality = Some(Locality {
                    zone: ctx.zones.local.clone(),
                    ..Default::default()
                });
                for (lb, e) in first.lb_endpoints.iter_mut().zip(&o.local) {
                    let w = crosszone::affinity_weight(conf, &caller, &e.tags);
                    if w != 1 {
                        lb.load_balancing_weight = Some(UInt32Value { value: w });
                    }
                }
            }
            // Other zones, through their ingresses: only with mTLS, which carries the service in SNI.
            let Some(instances) = ctx.remote.get(&o.service).filter(|_| input.tls.is_some()) else {
                continue;
            };
            let candidates: std::collections::BTreeSet<String> = instances.keys().cloned().collect();
            let order = if crosszone::locality_disabled(conf) {
                vec![candidates.into_iter().collect()]
            } else {
                crosszone::failover_order(conf, &ctx.zones.local, &candidates)
            };
            let first = u32::from(!crosszone::locality_disabled(conf));
            o.endpoints.endpoints.extend(crosszone::remote_localities(
                &ctx.zones,
                &order,
                instances,
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
            o.endpoints.policy = crosszone::overprovisioning(conf).map(|factor| Policy {
                overprovisioning_factor: Some(factor),
                ..Default::default()
            });
        }
    }
}
