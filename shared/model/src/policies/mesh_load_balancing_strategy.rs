//! MeshLoadBalancingStrategy: the algorithm that picks an endpoint of a destination (`to`),
//! the request properties it hashes on, and how strongly a client prefers nearby endpoints.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{To, non_empty, validate_to, validate_top};
use crate::targetref::{self, TargetRef};
use crate::validate::{Validate, Validator};
use crate::values::{GoDuration, IntOrDecimal, Percentage};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshLoadBalancingStrategySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To<LbConf>>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LbConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_awareness: Option<LocalityAwareness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Request properties hashed by `RingHash` and `Maglev`, tried in order. The only field
    /// accepted when `targetRef.kind` is `MeshHTTPRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityAwareness {
    /// Spreads requests over all endpoints regardless of their zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_zone: Option<LocalZone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<CrossZone>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalZone {
    /// Groups local endpoints by tags they share with the client, in order of preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_tags: Option<Vec<AffinityTag>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityTag {
    pub key: String,
    /// Relative share of local traffic; either every tag has a weight or none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrossZone {
    /// Rules in priority order naming the zones traffic may fail over to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Vec<Failover>>,
    /// Below this percentage of healthy endpoints, traffic spills to the next priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_threshold: Option<FailoverThreshold>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failover {
    /// Client zones the rule applies to; every zone when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FromZones>,
    pub to: ToZones,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromZones {
    pub zones: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ToZonesType {
    None,
    Only,
    Any,
    AnyExcept,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToZones {
    /// `Only` and `AnyExcept` need `zones`; `Any` and `None` take none.
    #[serde(rename = "type")]
    pub zones_type: ToZonesType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverThreshold {
    pub percentage: Percentage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerType {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
    Maglev,
}

/// The algorithm (`type`) and, in the object named after it, its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(rename = "type")]
    pub lb_type: LoadBalancerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_robin: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
}

/// An algorithm without settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeastRequest {
    /// How many random endpoints are compared; at least 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
    /// How much in-flight requests lower an endpoint's weight; 0 or more, integer or decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_request_bias: Option<IntOrDecimal>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HashFunction {
    XXHash,
    MurmurHash2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<HashFunction>,
    /// 1 to 8000000 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ring_size: Option<u32>,
    /// 1 to 8000000 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ring_size: Option<u32>,
    /// Older place for `default.hashPolicies`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// A prime number up to 5000011.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// Older place for `default.hashPolicies`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HashPolicyType {
    Header,
    Cookie,
    /// The client's source IP (`connection.sourceIP: true`).
    Connection,
    QueryParameter,
    FilterState,
}

/// One request property to hash; the object named after `type` says which.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashPolicy {
    #[serde(rename = "type")]
    pub policy_type: HashPolicyType,
    /// Once a hash exists, skip the rest of the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NameRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Cookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<NameRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<FilterState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameRef {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cookie {
    pub name: String,
    /// When set, a client without the cookie is given one with this lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<GoDuration>,
    /// Must be absolute (`/`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    #[serde(rename = "sourceIP", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterState {
    pub key: String,
}

impl Validate for MeshLoadBalancingStrategySpec {
    fn validate(&self, v: &mut Validator) {
        validate_top(v, &self.target_ref, targetref::TOP_LEVEL);
        // As Kuma: an empty or absent `to` is valid and configures nothing.
        validate_to(v, &self.to, targetref::TO);
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

impl Validate for LbConf {
    fn validate(&self, v: &mut Validator) {
        if self.locality_awareness.is_none() && self.load_balancer.is_none() && self.hash_policies.is_none() {
            v.error("at least one of localityAwareness, loadBalancer, hashPolicies must be set");
        }
        if let Some(la) = &self.locality_awareness {
            v.field("localityAwareness", |v| {
                if let Some(tags) = la.local_zone.as_ref().and_then(|l| l.affinity_tags.as_ref()) {
                    v.field("localZone", |v| {
                        v.field("affinityTags", |v| validate_affinity(v, tags))
                    });
                }
                if let Some(cz) = &la.cross_zone {
                    v.nested("crossZone", cz);
                }
            });
        }
        if let Some(lb) = &self.load_balancer {
            v.nested("loadBalancer", lb);
        }
        if let Some(hp) = &self.hash_policies {
            v.nested("hashPolicies", hp);
        }
    }
}

fn validate_affinity(v: &mut Validator, tags: &[AffinityTag]) {
    let weighted = tags.iter().filter(|t| t.weight.is_some()).count();
    if weighted > 0 && weighted != tags.len() {
        v.error("either every affinity tag has a weight or none does");
    }
    for (i, tag) in tags.iter().enumerate() {
        v.index(i, |v| {
            if tag.key.is_empty() {
                v.error_at("key", "must not be empty");
            }
            if tag.weight == Some(0) {
                v.error_at("weight", "must be greater than 0");
            }
        });
    }
}

impl Validate for CrossZone {
    fn validate(&self, v: &mut Validator) {
        if self
            .failover_threshold
            .as_ref()
            .is_some_and(|t| t.percentage.value() <= 0.0)
        {
            v.field("failoverThreshold", |v| {
                v.error_at("percentage", "must be greater than 0 (as in Kuma)")
            });
        }
        let Some(failover) = &self.failover else { return };
        v.field("failover", |v| {
            for (i, f) in failover.iter().enumerate() {
                v.index(i, |v| {
                    if let Some(from) = &f.from {
                        v.field("from", |v| {
                            v.field("zones", |v| {
                                if from.zones.is_empty() {
                                    v.error("must not be empty");
                                }
                                for (j, z) in from.zones.iter().enumerate() {
                                    if z.is_empty() {
                                        v.index(j, |v| v.error("must not be empty"));
                                    }
                                }
                            })
                        });
                    }
                    let ty = f.to.zones_type;
                    let has_zones = non_empty(&f.to.zones);
                    v.field("to", |v| match ty {
                        ToZonesType::Only | ToZonesType::AnyExcept if !has_zones => {
                            v.error_at("zones", format!("must not be empty when type is {ty:?}"))
                        }
                        ToZonesType::Any | ToZonesType::None if has_zones => {
                            v.error_at("zones", format!("must be empty when type is {ty:?}"))
                        }
                        _ => {}
                    });
                });
            }
        });
    }
}

impl Validate for LoadBalancer {
    fn validate(&self, v: &mut Validator) {
        let settings = [
            (
                "roundRobin",
                LoadBalancerType::RoundRobin,
                self.round_robin.is_some(),
            ),
            (
                "leastRequest",
                LoadBalancerType::LeastRequest,
                self.least_request.is_some(),
            ),
            ("ringHash", LoadBalancerType::RingHash, self.ring_hash.is_some()),
            ("random", LoadBalancerType::Random, self.random.is_some()),
            ("maglev", LoadBalancerType::Maglev, self.maglev.is_some()),
        ];
        for (name, ty, set) in settings {
            if set && ty != self.lb_type {
                v.error_at(name, format!("must not be set for type {:?}", self.lb_type));
            }
        }
        if let Some(lr) = &self.least_request {
            v.field("leastRequest", |v| {
                if lr.choice_count.is_some_and(|c| c < 2) {
                    v.error_at("choiceCount", "must be at least 2");
                }
                if let Some(bias) = &lr.active_request_bias {
                    v.field("activeRequestBias", |v| {
                        bias.check(v, |x| x >= 0.0, "must be 0 or more")
                    });
                }
            });
        }
        if let Some(rh) = &self.ring_hash {
            v.field("ringHash", |v| {
                let in_range = |n: Option<u32>| n.is_none_or(|n| (1..=8_000_000).contains(&n));
                if !in_range(rh.min_ring_size) {
                    v.error_at("minRingSize", "must be between 1 and 8000000");
                }
                if !in_range(rh.max_ring_size) {
                    v.error_at("maxRingSize", "must be between 1 and 8000000");
                }
                if let (Some(min), Some(max)) = (rh.min_ring_size, rh.max_ring_size)
                    && min > max
                {
                    v.error_at("minRingSize", "must not be greater than maxRingSize");
                }
                if let Some(hp) = &rh.hash_policies {
                    v.nested("hashPolicies", hp);
                }
            });
        }
        if let Some(m) = &self.maglev {
            v.field("maglev", |v| {
                if m.table_size.is_some_and(|n| !(1..=5_000_011).contains(&n)) {
                    v.error_at("tableSize", "must be between 1 and 5000011");
                } else if m.table_size.is_some_and(|n| !is_prime(n)) {
                    v.error_at(
                        "tableSize",
                        "must be a prime number (Envoy's Maglev needs one), e.g. 65537",
                    );
                }
                if let Some(hp) = &m.hash_policies {
                    v.nested("hashPolicies", hp);
                }
            });
        }
    }
}

impl Validate for HashPolicy {
    fn validate(&self, v: &mut Validator) {
        let blocks = [
            ("header", HashPolicyType::Header, self.header.is_some()),
            ("cookie", HashPolicyType::Cookie, self.cookie.is_some()),
            (
                "connection",
                HashPolicyType::Connection,
                self.connection.is_some(),
            ),
            (
                "queryParameter",
                HashPolicyType::QueryParameter,
                self.query_parameter.is_some(),
            ),
            (
                "filterState",
                HashPolicyType::FilterState,
                self.filter_state.is_some(),
            ),
        ];
        for (name, ty, set) in blocks {
            match (ty == self.policy_type, set) {
                (true, false) => v.error_at(name, format!("must be set for type {ty:?}")),
                (false, true) => v.error_at(name, format!("must not be set for type {:?}", self.policy_type)),
                _ => {}
            }
        }
        let names = [
            ("header", &self.header),
            ("queryParameter", &self.query_parameter),
        ];
        for (field, named) in names {
            if named.as_ref().is_some_and(|n| n.name.is_empty()) {
                v.field(field, |v| v.error_at("name", "must not be empty"));
            }
        }
        if let Some(c) = &self.cookie {
            v.field("cookie", |v| {
                if c.name.is_empty() {
                    v.error_at("name", "must not be empty");
                }
                if c.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                    v.error_at("path", "must be an absolute path");
                }
            });
        }
        if self.filter_state.as_ref().is_some_and(|f| f.key.is_empty()) {
            v.field("filterState", |v| v.error_at("key", "must not be empty"));
        }
    }
}

impl crate::resolve::Targeted for MeshLoadBalancingStrategySpec {
    const KIND: crate::Kind = crate::Kind::MeshLoadBalancingStrategy;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

impl crate::resolve::Outbound for MeshLoadBalancingStrategySpec {
    type Conf = LbConf;
    fn to(&self) -> &[To<LbConf>] {
        self.to.as_deref().unwrap_or_default()
    }
}

crate::merge_fields!(LbConf {
    locality_awareness,
    load_balancer,
    hash_policies
});
crate::merge_fields!(LocalityAwareness {
    disabled,
    local_zone,
    cross_zone
});
crate::merge_fields!(LocalZone { affinity_tags });
crate::merge_fields!(CrossZone {
    failover,
    failover_threshold
});
crate::merge_fields!(FailoverThreshold { percentage });
crate::merge_fields!(LoadBalancer {
    lb_type,
    round_robin,
    least_request,
    ring_hash,
    random,
    maglev
});
crate::merge_fields!(Empty {});
crate::merge_by_replacing!(LoadBalancerType, HashFunction);
crate::merge_fields!(LeastRequest {
    choice_count,
    active_request_bias
});
crate::merge_fields!(RingHash {
    hash_function,
    min_ring_size,
    max_ring_size,
    hash_policies
});
crate::merge_fields!(Maglev {
    table_size,
    hash_policies
});

#[cfg(test)]
mod tests;
