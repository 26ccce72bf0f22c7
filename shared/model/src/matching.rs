//! Which policies apply to a proxy, and how they merge.
//!
//! A policy's top-level `targetRef` selects proxies; each `to[]` entry selects destinations.
//! Every entry that applies contributes its `default`; entries are merged like JSON merge
//! patches from least to most specific (destination first, then proxy selector, then name),
//! so the most specific value of each field wins.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Resource;
use crate::policies::dataplane::{DataplaneSpec, SERVICE_TAG};
use crate::targetref::{TargetRef, TargetRefKind};

/// What a proxy is, for matching.
#[derive(Clone, Debug)]
pub struct ProxyView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub dataplane: &'a DataplaneSpec,
}

impl ProxyView<'_> {
    fn inbound_tags(&self) -> impl Iterator<Item = &BTreeMap<String, String>> {
        self.dataplane
            .networking
            .inbound
            .iter()
            .flatten()
            .map(|i| &i.tags)
    }
}

fn contains_all(have: &BTreeMap<String, String>, want: Option<&BTreeMap<String, String>>) -> bool {
    want.into_iter().flatten().all(|(k, v)| have.get(k) == Some(v))
}

/// Whether a top-level `targetRef` selects `proxy`.
pub fn selects(target: &TargetRef, proxy: &ProxyView<'_>) -> bool {
    use TargetRefKind::*;
    match target.kind {
        Mesh => true,
        MeshSubset => proxy
            .inbound_tags()
            .any(|t| contains_all(t, target.tags.as_ref())),
        MeshService => proxy
            .inbound_tags()
            .any(|t| t.get(SERVICE_TAG) == target.name.as_ref()),
        MeshServiceSubset => proxy
            .inbound_tags()
            .any(|t| t.get(SERVICE_TAG) == target.name.as_ref() && contains_all(t, target.tags.as_ref())),
        Dataplane => {
            target.name.as_deref().is_none_or(|n| n == proxy.name)
                && contains_all(proxy.labels, target.labels.as_ref())
        }
        _ => false,
    }
}

/// Whether a `to[].targetRef` covers traffic to `service`.
pub fn covers(target: &TargetRef, service: &str) -> bool {
    match target.kind {
        TargetRefKind::Mesh => true,
        TargetRefKind::MeshService => target.name.as_deref() == Some(service),
        _ => false,
    }
}

/// How specific a targetRef kind is: a more specific one wins when policies overlap.
pub fn specificity(kind: TargetRefKind) -> u8 {
    use TargetRefKind::*;
    match kind {
        Mesh => 0,
        MeshSubset => 1,
        MeshService | MeshExternalService | MeshMultiZoneService => 2,
        MeshServiceSubset => 3,
        MeshGateway | MeshHTTPRoute => 4,
        Dataplane => 5,
    }
}

/// Merges `patch` into `base` as RFC 7386 says: objects merge key by key, `null` removes, and
/// anything else replaces.
pub fn merge_patch(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge_patch(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// A targetRef policy read once: which proxies it selects and its `to` entries. Built when a
/// mesh's policies change, so that generating each proxy's config does not decode them again.
#[derive(Clone, Debug, PartialEq)]
pub struct ToPolicy {
    pub name: String,
    /// The top-level `targetRef` (`Mesh` when absent).
    pub top: TargetRef,
    /// Each `to` entry's `targetRef` and `default`.
    pub to: Vec<(TargetRef, Value)>,
}

impl ToPolicy {
    /// `None` for kinds without a `targetRef` (Kuma's older kinds), which apply mesh-wide.
    pub fn new(policy: &Resource) -> Option<Self> {
        if policy.kind().spec_inline() {
            return None;
        }
        let spec = policy.spec.to_value();
        let top = match spec.get("targetRef") {
            Some(t) => serde_json::from_value(t.clone()).ok()?,
            None => TargetRef::mesh(),
        };
        let to = spec
            .get("to")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let target = serde_json::from_value(entry.get("targetRef")?.clone()).ok()?;
                Some((target, entry.get("default").cloned().unwrap_or(Value::Null)))
            })
            .collect();
        Some(Self {
            name: policy.name.clone(),
            top,
            to,
        })
    }
}

/// The merged `default` of every `to` entry of `policies` that applies to traffic from
/// `proxy` to `service`, or `None` when none does. `policies` are of one kind.
pub fn outbound_conf(policies: &[ToPolicy], proxy: &ProxyView<'_>, service: &str) -> Option<Value> {
    let mut applicable: Vec<((u8, u8, &str), &Value)> = Vec::new();
    for policy in policies.iter().filter(|p| selects(&p.top, proxy)) {
        for (to, conf) in policy.to.iter().filter(|(to, _)| covers(to, service)) {
            let key = (
                specificity(to.kind),
                specificity(policy.top.kind),
                policy.name.as_str(),
            );
            applicable.push((key, conf));
        }
    }
    if applicable.is_empty() {
        return None;
    }
    applicable.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged = Value::Object(Default::default());
    for (_, conf) in applicable {
        merge_patch(&mut merged, conf);
    }
    Some(merged)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Format, parse_one};

    fn policy(yaml: &str) -> Resource {
        parse_one(yaml, Format::Yaml).expect("valid").resource
    }

    fn demo() -> (DataplaneSpec, BTreeMap<String, String>) {
        let dp = policy(
            "type: Dataplane\nname: demo-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    tags:\n      kuma.io/service: demo\n      version: v1\n",
        );
        match dp.spec {
            crate::Spec::Dataplane(d) => (d, dp.labels),
            _ => unreachable!(),
        }
    }

    #[test]
    fn more_specific_entries_win_field_by_field() {
        let mesh_wide = policy(
            "type: MeshTimeout\nname: a-mesh\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 5s, http: {requestTimeout: 15s}}\n",
        );
        let for_reg = policy(
            "type: MeshTimeout\nname: z-reg\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: reg-server}\n    default: {http: {requestTimeout: 1s}}\n",
        );
        let other_proxy = policy(
            "type: MeshTimeout\nname: other\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 9s}}\n",
        );
        let (dp, labels) = demo();
        let proxy = ProxyView {
            name: "demo-1",
            labels: &labels,
            dataplane: &dp,
        };
        // Listed most specific first: order of the input must not matter.
        let read = |r: &Resource| ToPolicy::new(r).expect("a targetRef policy");
        let policies = [read(&for_reg), read(&other_proxy), read(&mesh_wide)];
        assert_eq!(
            outbound_conf(&policies, &proxy, "reg-server"),
            Some(json!({"connectionTimeout": "5s", "http": {"requestTimeout": "1s"}}))
        );
        assert_eq!(
            outbound_conf(&policies, &proxy, "web"),
            Some(json!({"connectionTimeout": "5s", "http": {"requestTimeout": "15s"}}))
        );
        assert_eq!(outbound_conf(&[read(&other_proxy)], &proxy, "web"), None);
    }

    #[test]
    fn subsets_match_inbound_tags() {
        let (dp, labels) = demo();
        let proxy = ProxyView {
            name: "demo-1",
            labels: &labels,
            dataplane: &dp,
        };
        let mut t = TargetRef::mesh();
        t.kind = TargetRefKind::MeshSubset;
        t.tags = Some(BTreeMap::from([("version".into(), "v1".into())]));
        assert!(selects(&t, &proxy));
        t.tags = Some(BTreeMap::from([("version".into(), "v2".into())]));
        assert!(!selects(&t, &proxy));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut base = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut base, &json!({"b": {"c": null, "e": 4}, "f": [1]}));
        assert_eq!(base, json!({"a": 1, "b": {"d": 3, "e": 4}, "f": [1]}));
    }
}
