//! Locality: which zones traffic fails over to and in what order, and which local endpoints
//! a caller prefers (MeshLoadBalancingStrategy's `localityAwareness`). Pure: the zone's
//! plugin turns the answers into Envoy priorities and weights.

use std::collections::{BTreeMap, BTreeSet};

use crate::policies::mesh_load_balancing_strategy::{LbConf, ToZonesType};

/// Other zones in priority order (each group is one priority), for calls from `local`.
/// Without rules every zone with the service is one group; with rules, only the zones they
/// name, and `None` ends the list.
pub fn failover_order(conf: Option<&LbConf>, local: &str, candidates: &BTreeSet<String>) -> Vec<Vec<String>> {
    let rules = conf
        .and_then(|c| c.locality_awareness.as_ref())
        .and_then(|l| l.cross_zone.as_ref())
        .and_then(|c| c.failover.as_ref());
    let Some(rules) = rules else {
        return if candidates.is_empty() {
            Vec::new()
        } else {
            vec![candidates.iter().cloned().collect()]
        };
    };
    let mut left = candidates.clone();
    let mut out = Vec::new();
    for rule in rules {
        if rule
            .from
            .as_ref()
            .is_some_and(|from| !from.zones.iter().any(|z| z == local))
        {
            continue;
        }
        let listed = rule.to.zones.clone().unwrap_or_default();
        let group: Vec<String> = match rule.to.zones_type {
            ToZonesType::None => break,
            ToZonesType::Only => listed.iter().filter(|z| left.contains(*z)).cloned().collect(),
            ToZonesType::Any => left.iter().cloned().collect(),
            ToZonesType::AnyExcept => left.iter().filter(|z| !listed.contains(z)).cloned().collect(),
        };
        for z in &group {
            left.remove(z);
        }
        if !group.is_empty() {
            out.push(group);
        }
    }
    out
}

/// A local endpoint's weight under `localZone.affinityTags`: the weight of the first tag
/// (in the order given) whose value the endpoint shares with the caller, else 1. Without
/// weights, the i-th of n tags weighs 10^(n-i), so each tag outweighs all the later ones.
pub fn affinity_weight(
    conf: Option<&LbConf>,
    caller: &BTreeMap<&String, &String>,
    endpoint: &BTreeMap<String, String>,
) -> u32 {
    let Some(tags) = conf
        .and_then(|c| c.locality_awareness.as_ref())
        .and_then(|l| l.local_zone.as_ref())
        .and_then(|z| z.affinity_tags.as_ref())
    else {
        return 1;
    };
    let n = tags.len() as u32;
    for (i, tag) in tags.iter().enumerate() {
        let shared = caller
            .get(&tag.key)
            .is_some_and(|v| endpoint.get(&tag.key) == Some(*v));
        if shared {
            return tag
                .weight
                .unwrap_or_else(|| 10u32.saturating_pow(n - i as u32))
                .max(1);
        }
    }
    1
}

/// Whether locality awareness is off: every zone shares priority 0.
pub fn locality_disabled(conf: Option<&LbConf>) -> bool {
    conf.and_then(|c| c.locality_awareness.as_ref())
        .and_then(|l| l.disabled)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(yaml: &str) -> LbConf {
        let doc = crate::text::yaml_values(yaml).expect("yaml").remove(0);
        serde_json::from_value(doc).expect("conf")
    }

    fn zones(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|z| z.to_string()).collect()
    }

    #[test]
    fn failover_follows_the_rules_in_order() {
        let all = zones(&["zone-2", "zone-3", "zone-4"]);
        assert_eq!(
            failover_order(None, "zone-1", &all),
            vec![vec!["zone-2".to_owned(), "zone-3".into(), "zone-4".into()]]
        );
        let prefer3 = conf(
            "localityAwareness:\n  crossZone:\n    failover:\n    - to: {type: Only, zones: [zone-3]}\n    - to: {type: Any}\n",
        );
        assert_eq!(
            failover_order(Some(&prefer3), "zone-1", &all),
            vec![vec!["zone-3".to_owned()], vec!["zone-2".into(), "zone-4".into()]]
        );
        let none = conf(
            "localityAwareness:\n  crossZone:\n    failover:\n    - to: {type: None}\n    - to: {type: Any}\n",
        );
        assert!(failover_order(Some(&none), "zone-1", &all).is_empty());
        let from_elsewhere = conf(
            "localityAwareness:\n  crossZone:\n    failover:\n    - from: {zones: [zone-9]}\n      to: {type: Any}\n    - to: {type: AnyExcept, zones: [zone-2]}\n",
        );
        assert_eq!(
            failover_order(Some(&from_elsewhere), "zone-1", &all),
            vec![vec!["zone-3".to_owned(), "zone-4".into()]]
        );
    }

    #[test]
    fn affinity_prefers_endpoints_sharing_the_callers_tags() {
        let c =
            conf("localityAwareness:\n  localZone:\n    affinityTags:\n    - key: node\n    - key: rack\n");
        let (node, rack, a, b) = (
            "node".to_owned(),
            "rack".to_owned(),
            "a".to_owned(),
            "r1".to_owned(),
        );
        let caller = BTreeMap::from([(&node, &a), (&rack, &b)]);
        let tags =
            |n: &str, r: &str| BTreeMap::from([(node.clone(), n.to_owned()), (rack.clone(), r.to_owned())]);
        assert_eq!(affinity_weight(Some(&c), &caller, &tags("a", "r1")), 100);
        assert_eq!(affinity_weight(Some(&c), &caller, &tags("b", "r1")), 10);
        assert_eq!(affinity_weight(Some(&c), &caller, &tags("b", "r2")), 1);
        let weighted =
            conf("localityAwareness:\n  localZone:\n    affinityTags:\n    - {key: rack, weight: 7}\n");
        assert_eq!(affinity_weight(Some(&weighted), &caller, &tags("b", "r1")), 7);
        assert_eq!(affinity_weight(None, &caller, &tags("a", "r1")), 1);
    }
}
