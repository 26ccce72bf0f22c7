//! Who may call an inbound: MeshTrafficPermission and TrafficPermission, resolved to the peer
//! identities (SPIFFE ids) that Envoy's RBAC filters check once mTLS is on.
//!
//! ```text
//!   MeshTrafficPermission from[]  ──most specific entry per client──> Allow | Deny | (none)
//!   TrafficPermission              ──sources matching the client────> allowed | (none)
//!   a client is let in when its MTP decision allows it, or it has none and a TP allows it;
//!   MeshTrafficPermission rules[] add identities (allow) and take them away (deny).
//!   Nothing matching: nobody is let in.
//! ```
//!
//! Clients are judged by service (`kuma.io/service`), the identity their certificate carries;
//! a selector on other tags stands for the services whose inbounds carry those tags.

use std::collections::{BTreeMap, BTreeSet};

use meridian_model::matching::{ProxyView, selects, specificity};
use meridian_model::policies::dataplane::SERVICE_TAG;
use meridian_model::policies::mesh_traffic_permission::{
    Action, Match, MeshTrafficPermissionSpec, SpiffeIdMatchType,
};
use meridian_model::policies::traffic_permission::{Selector, TrafficPermissionSpec};
use meridian_model::targetref::{TargetRef, TargetRefKind};

/// One kind of peer identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    /// Any peer the mesh CA vouches for.
    Anyone,
    /// The SPIFFE id of a mesh service.
    Service(String),
    SpiffeExact(String),
    SpiffePrefix(String),
}

/// Who may call: anyone matching `allow` and nothing in `deny`. An empty `allow` lets no one in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<Who>,
    pub deny: Vec<Who>,
}

/// The permission policies of a mesh, read once per change.
#[derive(Clone, Debug, Default)]
pub struct Permissions {
    /// MeshTrafficPermissions by name.
    pub mesh: Vec<(String, MeshTrafficPermissionSpec)>,
    pub legacy: Vec<TrafficPermissionSpec>,
}

/// Every tag set each known service's inbounds carry, to resolve tag selectors.
pub type ServiceTags = BTreeMap<String, Vec<BTreeMap<String, String>>>;

/// The clients a `from[].targetRef` names: `None` is every client, known or not.
fn from_clients(target: &TargetRef, services: &ServiceTags) -> Option<BTreeSet<String>> {
    let with_tags = |tags: &BTreeMap<String, String>| -> BTreeSet<String> {
        services
            .iter()
            .filter(|(_, sets)| {
                sets.iter()
                    .any(|set| tags.iter().all(|(k, v)| set.get(k) == Some(v)))
            })
            .map(|(s, _)| s.clone())
            .collect()
    };
    let none = BTreeMap::new();
    let tags = target.tags.as_ref().unwrap_or(&none);
    match target.kind {
        TargetRefKind::Mesh => None,
        TargetRefKind::MeshService => Some(target.name.iter().cloned().collect()),
        TargetRefKind::MeshServiceSubset => {
            let mut wanted = tags.clone();
            wanted.extend(target.name.clone().map(|n| (SERVICE_TAG.to_owned(), n)));
            Some(with_tags(&wanted))
        }
        TargetRefKind::MeshSubset => match (tags.len(), tags.get(SERVICE_TAG)) {
            (0, _) => None,
            (1, Some(service)) => Some(BTreeSet::from([service.clone()])),
            _ => Some(with_tags(tags)),
        },
        _ => Some(BTreeSet::new()),
    }
}

/// Whether a TrafficPermission selector (where `*` matches any value) matches these tags.
fn selector_matches(selector: &Selector, tags: &BTreeMap<String, String>) -> bool {
    selector
        .match_tags
        .iter()
        .all(|(k, v)| tags.get(k).is_some_and(|have| v == "*" || have == v))
}

/// Whether a TrafficPermission source selector lets in every client, known or not.
fn matches_everyone(selector: &Selector) -> bool {
    selector
        .match_tags
        .iter()
        .all(|(k, v)| k == SERVICE_TAG && v == "*")
}

fn spiffe(m: &Match) -> Option<Who> {
    let id = m.spiffe_id.as_ref()?;
    Some(match id.match_type {
        SpiffeIdMatchType::Exact => Who::SpiffeExact(id.value.clone()),
        SpiffeIdMatchType::Prefix => Who::SpiffePrefix(id.value.clone()),
    })
}

/// Who may call the inbound with `tags` of `proxy`.
pub fn inbound_access(
    permissions: &Permissions,
    services: &ServiceTags,
    proxy: &ProxyView<'_>,
    tags: &BTreeMap<String, String>,
) -> Access {
    // Every `from` entry that applies, least specific first: the last one covering a client
    // decides for it.
    let mut entries = Vec::new();
    let mut access = Access::default();
    for (name, spec) in &permissions.mesh {
        let top = spec.target_ref.clone().unwrap_or_else(TargetRef::mesh);
        if !selects(&top, proxy) {
            continue;
        }
        for from in spec.from.iter().flatten() {
            if let Some(action) = from.default.action {
                let key = (
                    specificity(from.target_ref.kind),
                    specificity(top.kind),
                    name.clone(),
                );
                entries.push((key, from_clients(&from.target_ref, services), action));
            }
        }
        for rule in spec.rules.iter().flatten() {
            let d = &rule.default;
            access.allow.extend(d.allow.iter().flatten().filter_map(spiffe));
            access
                .allow
                .extend(d.allow_with_shadow_deny.iter().flatten().filter_map(spiffe));
            access.deny.extend(d.deny.iter().flatten().filter_map(spiffe));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let decide = |client: Option<&str>| -> Option<Action> {
        entries
            .iter()
            .rev()
            .find(|(_, clients, _)| match (clients, client) {
                (None, _) => true,
                (Some(set), Some(c)) => set.contains(c),
                (Some(_), None) => false,
            })
            .map(|(_, _, action)| *action)
    };
    let legacy: Vec<&TrafficPermissionSpec> = permissions
        .legacy
        .iter()
        .filter(|tp| tp.destinations.iter().any(|d| selector_matches(d, tags)))
        .collect();
    let legacy_allows = |client: Option<&str>| {
        legacy.iter().any(|tp| {
            tp.sources.iter().any(|s| match client {
                None => matches_everyone(s),
                Some(c) => {
                    matches_everyone(s)
                        || services
                            .get(c)
                            .into_iter()
                            .flatten()
                            .any(|set| selector_matches(s, set))
                        || (s.match_tags.len() == 1
                            && s.match_tags.get(SERVICE_TAG).map(String::as_str) == Some(c))
                }
            })
        })
    };
    let allowed = |client: Option<&str>| match decide(client) {
        Some(Action::Deny) => false,
        Some(Action::Allow | Action::AllowWithShadowDeny) => true,
        None => legacy_allows(client),
    };
    // Services that only policies name (not running here yet) are clients too.
    let mut known: BTreeSet<String> = services.keys().cloned().collect();
    for (_, clients, _) in &entries {
        known.extend(clients.iter().flatten().cloned());
    }
    for tp in &legacy {
        for s in &tp.sources {
            if let Some(service) = s.match_tags.get(SERVICE_TAG).filter(|v| *v != "*") {
                known.insert(service.clone());
            }
        }
    }
    if allowed(None) {
        access.allow.push(Who::Anyone);
        access.deny.extend(
            known
                .iter()
                .filter(|c| !allowed(Some(c)))
                .map(|c| Who::Service(c.clone())),
        );
    } else {
        access.allow.extend(
            known
                .iter()
                .filter(|c| allowed(Some(c)))
                .map(|c| Who::Service(c.clone())),
        );
    }
    access
}

#[cfg(test)]
mod tests {
    use meridian_model::policies::dataplane::DataplaneSpec;
    use meridian_model::{Format, Spec, parse_one};

    use super::*;

    fn permissions(yaml: &[&str]) -> Permissions {
        let mut p = Permissions::default();
        for doc in yaml {
            let r = parse_one(doc, Format::Yaml).expect("valid").resource;
            match r.spec {
                Spec::MeshTrafficPermission(s) => p.mesh.push((r.name, s)),
                Spec::TrafficPermission(s) => p.legacy.push(s),
                _ => panic!("not a permission"),
            }
        }
        p
    }

    fn services() -> ServiceTags {
        let tags =
            |s: &str, env: &str| BTreeMap::from([(SERVICE_TAG.into(), s.into()), ("env".into(), env.into())]);
        BTreeMap::from([
            ("demo".into(), vec![tags("demo", "prod")]),
            ("web".into(), vec![tags("web", "dev")]),
            ("reg-server".into(), vec![tags("reg-server", "prod")]),
        ])
    }

    fn access(p: &Permissions) -> Access {
        let dp: DataplaneSpec = serde_json::from_value(serde_json::json!({
            "networking": {"address": "127.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": "reg-server"}}]}
        }))
        .expect("dataplane");
        let labels = BTreeMap::new();
        let view = ProxyView {
            name: "reg-1",
            labels: &labels,
            dataplane: &dp,
        };
        let tags = BTreeMap::from([(SERVICE_TAG.to_owned(), "reg-server".to_owned())]);
        inbound_access(p, &services(), &view, &tags)
    }

    fn svc(names: &[&str]) -> Vec<Who> {
        names.iter().map(|n| Who::Service(n.to_string())).collect()
    }

    const SEED: &str = "type: TrafficPermission\nname: allow-demo-to-reg\nsources:\n- match: {kuma.io/service: demo}\ndestinations:\n- match: {kuma.io/service: reg-server}\n";

    #[test]
    fn nothing_matching_lets_no_one_in() {
        assert_eq!(access(&Permissions::default()), Access::default());
        let other = "type: TrafficPermission\nname: x\nsources:\n- match: {kuma.io/service: demo}\ndestinations:\n- match: {kuma.io/service: db}\n";
        assert_eq!(access(&permissions(&[other])).allow, vec![]);
    }

    #[test]
    fn the_seeds_traffic_permission_lets_only_demo_in() {
        let a = access(&permissions(&[SEED]));
        assert_eq!(a.allow, svc(&["demo"]));
        assert!(a.deny.is_empty());
    }

    #[test]
    fn an_allow_all_mesh_permission_lets_everyone_in_and_a_specific_deny_wins() {
        let all = "type: MeshTrafficPermission\nname: allow-all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n";
        assert_eq!(
            access(&permissions(&[all])),
            Access {
                allow: vec![Who::Anyone],
                deny: vec![]
            }
        );
        let deny_web = "type: MeshTrafficPermission\nname: no-web\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n";
        let a = access(&permissions(&[all, deny_web]));
        assert_eq!(a.allow, vec![Who::Anyone]);
        assert_eq!(a.deny, svc(&["web"]));
    }

    #[test]
    fn tag_selectors_stand_for_the_services_carrying_the_tags() {
        let prod = "type: MeshTrafficPermission\nname: prod\nspec:\n  from:\n  - targetRef: {kind: MeshSubset, tags: {env: prod}}\n    default: {action: Allow}\n";
        assert_eq!(access(&permissions(&[prod])).allow, svc(&["demo", "reg-server"]));
        // A deny on the service beats a legacy allow; the legacy allow still works for others.
        let deny_demo = "type: MeshTrafficPermission\nname: d\nspec:\n  from:\n  - targetRef: {kind: MeshService, name: demo}\n    default: {action: Deny}\n";
        let wildcard = "type: TrafficPermission\nname: any\nsources:\n- match: {kuma.io/service: '*'}\ndestinations:\n- match: {kuma.io/service: '*'}\n";
        let a = access(&permissions(&[deny_demo, wildcard]));
        assert_eq!(a.allow, vec![Who::Anyone]);
        assert_eq!(a.deny, svc(&["demo"]));
    }

    #[test]
    fn rules_add_and_remove_identities() {
        let rules = "type: MeshTrafficPermission\nname: ids\nspec:\n  rules:\n  - default:\n      allow:\n      - spiffeID: {type: Prefix, value: 'spiffe://default/'}\n      deny:\n      - spiffeID: {type: Exact, value: 'spiffe://default/web'}\n";
        let a = access(&permissions(&[rules]));
        assert_eq!(a.allow, vec![Who::SpiffePrefix("spiffe://default/".into())]);
        assert_eq!(a.deny, vec![Who::SpiffeExact("spiffe://default/web".into())]);
    }
}
