//! Who may call an inbound: MeshTrafficPermission and TrafficPermission, resolved to the peer
//! identities (SPIFFE ids) that Envoy's RBAC filters check once mTLS is on.
//!
//! ```text
//!   MeshTrafficPermission from[]  ──the entry of highest precedence covering a client──> Allow | Deny
//!   TrafficPermission              ──sources matching the client────> allowed | (none)
//!   a client is let in when its MTP decision allows it, or it has none and a TP allows it;
//!   MeshTrafficPermission rules[] add identities (allow) and take them away (deny).
//!   Nothing matching: nobody is let in.
//! ```
//!
//! Clients are judged by service (`kuma.io/service`), the identity their certificate carries;
//! a selector on other tags stands for the services whose inbounds carry those tags.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Policy, Precedence, ProxyView, Source, precedence, selects, selects_inbound};
use crate::Kind;
use crate::policies::dataplane::{Inbound, SERVICE_TAG};
use crate::policies::mesh_traffic_permission::{Action, Match, MeshTrafficPermissionSpec, SpiffeIdMatchType};
use crate::policies::traffic_permission::{Selector, TrafficPermissionSpec};
use crate::targetref::{TargetRef, TargetRefKind};

/// One kind of peer identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", content = "value")]
pub enum Who {
    /// Any peer the mesh CA vouches for.
    Anyone,
    /// The SPIFFE id of a mesh service.
    Service(String),
    SpiffeExact(String),
    SpiffePrefix(String),
}

/// Who may call: anyone matching `allow` and nothing in `deny`. An empty `allow` lets no one in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Access {
    pub allow: Vec<Who>,
    pub deny: Vec<Who>,
    /// The policies that made this, by name within their kind.
    pub origin: Vec<Source>,
}

/// The permission policies of a mesh, read once per change.
#[derive(Clone, Debug, Default)]
pub struct Permissions {
    pub mesh: Vec<Policy<MeshTrafficPermissionSpec>>,
    pub legacy: Vec<Policy<TrafficPermissionSpec>>,
}

/// Every tag set each known service's inbounds carry, to resolve tag selectors.
pub type ServiceTags = BTreeMap<String, Vec<BTreeMap<String, String>>>;

/// Whether one client may call, and which policy said so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The policy that decided; `None` when nothing matched (and so nobody is let in).
    pub by: Option<Source>,
    /// Why, in words.
    pub reason: String,
}

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
pub(crate) fn selector_matches(selector: &Selector, tags: &BTreeMap<String, String>) -> bool {
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

/// A `from` entry that applies to the inbound, with the clients it covers.
struct Entry<'a> {
    precedence: Precedence,
    policy: &'a str,
    clients: Option<BTreeSet<String>>,
    action: Action,
}

/// The permissions of one inbound, resolved once and then asked per client.
pub struct InboundPermissions<'a> {
    services: &'a ServiceTags,
    /// Applicable `from` entries, highest precedence first.
    entries: Vec<Entry<'a>>,
    legacy: Vec<&'a Policy<TrafficPermissionSpec>>,
    rules: Vec<(&'a str, Vec<Who>, Vec<Who>)>,
}

impl<'a> InboundPermissions<'a> {
    /// The permissions that apply to `inbound` of `proxy`.
    pub fn new(
        permissions: &'a Permissions,
        services: &'a ServiceTags,
        proxy: &ProxyView<'_>,
        inbound: &Inbound,
    ) -> Self {
        let tags = &inbound.tags;
        let mesh = TargetRef::mesh();
        let mut entries = Vec::new();
        let mut rules = Vec::new();
        for policy in &permissions.mesh {
            let top = policy.spec.target_ref.as_ref().unwrap_or(&mesh);
            if !selects(top, proxy) || !selects_inbound(top, inbound) {
                continue;
            }
            for (i, from) in policy.spec.from.iter().flatten().enumerate() {
                if let Some(action) = from.default.action {
                    entries.push(Entry {
                        precedence: precedence(policy, top, Some(&from.target_ref), i),
                        policy: &policy.name,
                        clients: from_clients(&from.target_ref, services),
                        action,
                    });
                }
            }
            for rule in policy.spec.rules.iter().flatten() {
                let d = &rule.default;
                let allow = d
                    .allow
                    .iter()
                    .chain(&d.allow_with_shadow_deny)
                    .flatten()
                    .filter_map(spiffe)
                    .collect();
                let deny = d.deny.iter().flatten().filter_map(spiffe).collect();
                rules.push((policy.name.as_str(), allow, deny));
            }
        }
        entries.sort_by(|a, b| b.precedence.cmp(&a.precedence));
        let legacy = permissions
            .legacy
            .iter()
            .filter(|tp| tp.spec.destinations.iter().any(|d| selector_matches(d, tags)))
            .collect();
        Self {
            services,
            entries,
            legacy,
            rules,
        }
    }

    /// The decision for `client` (a service name), or for a client no policy names (`None`).
    pub fn decide(&self, client: Option<&str>) -> Decision {
        let entry = self.entries.iter().find(|e| match (&e.clients, client) {
            (None, _) => true,
            (Some(set), Some(c)) => set.contains(c),
            (Some(_), None) => false,
        });
        if let Some(e) = entry {
            let allowed = e.action != Action::Deny;
            return Decision {
                allowed,
                by: Some(Source {
                    kind: Kind::MeshTrafficPermission,
                    name: e.policy.to_owned(),
                }),
                reason: format!("its from entry says {:?}", e.action),
            };
        }
        let legacy = self.legacy.iter().find(|tp| {
            tp.spec.sources.iter().any(|s| match client {
                None => matches_everyone(s),
                Some(c) => {
                    matches_everyone(s)
                        || self
                            .services
                            .get(c)
                            .into_iter()
                            .flatten()
                            .any(|set| selector_matches(s, set))
                        || (s.match_tags.len() == 1
                            && s.match_tags.get(SERVICE_TAG).map(String::as_str) == Some(c))
                }
            })
        });
        match legacy {
            Some(tp) => Decision {
                allowed: true,
                by: Some(Source {
                    kind: Kind::TrafficPermission,
                    name: tp.name.clone(),
                }),
                reason: "a source matches the client".into(),
            },
            None => Decision {
                allowed: false,
                by: None,
                reason: "no MeshTrafficPermission or TrafficPermission lets it in".into(),
            },
        }
    }

    /// The decision for the service `client` of `mesh` as Envoy enforces it: `rules` matching
    /// its SPIFFE id (`spiffe://MESH/SERVICE`) count too, a deny before anything else.
    pub fn decide_for(&self, mesh: &str, client: &str) -> Decision {
        let id = format!("spiffe://{mesh}/{client}");
        let matches = |who: &Who| match who {
            Who::Anyone => true,
            Who::Service(s) => s == client,
            Who::SpiffeExact(v) => *v == id,
            Who::SpiffePrefix(p) => id.starts_with(p.as_str()),
        };
        let by_rule = |policy: &str, allowed: bool, how: &str| Decision {
            allowed,
            by: Some(Source {
                kind: Kind::MeshTrafficPermission,
                name: policy.to_owned(),
            }),
            reason: format!("its rules {how} {id}"),
        };
        if let Some((name, ..)) = self.rules.iter().find(|(_, _, deny)| deny.iter().any(matches)) {
            return by_rule(name, false, "deny");
        }
        let decision = self.decide(Some(client));
        // Denied by name while everyone else is let in: on Envoy's deny list, rules or not.
        if decision.allowed || self.decide(None).allowed {
            return decision;
        }
        match self.rules.iter().find(|(_, allow, _)| allow.iter().any(matches)) {
            Some((name, ..)) => by_rule(name, true, "allow"),
            None => decision,
        }
    }

    /// The identities Envoy lets in and keeps out.
    pub fn access(&self) -> Access {
        let mut access = Access::default();
        let mut origin = BTreeSet::new();
        for (name, allow, deny) in &self.rules {
            access.allow.extend(allow.iter().cloned());
            access.deny.extend(deny.iter().cloned());
            origin.insert(Source {
                kind: Kind::MeshTrafficPermission,
                name: (*name).to_owned(),
            });
        }
        // Services that only policies name (not running here yet) are clients too.
        let mut known: BTreeSet<String> = self.services.keys().cloned().collect();
        for e in &self.entries {
            known.extend(e.clients.iter().flatten().cloned());
        }
        for tp in &self.legacy {
            for s in &tp.spec.sources {
                if let Some(service) = s.match_tags.get(SERVICE_TAG).filter(|v| *v != "*") {
                    known.insert(service.clone());
                }
            }
        }
        let mut decide = |client: Option<&str>| {
            let d = self.decide(client);
            origin.extend(d.by);
            d.allowed
        };
        if decide(None) {
            access.allow.push(Who::Anyone);
            let denied: Vec<Who> = known
                .iter()
                .filter(|c| !decide(Some(c)))
                .map(|c| Who::Service(c.clone()))
                .collect();
            access.deny.extend(denied);
        } else {
            let allowed: Vec<Who> = known
                .iter()
                .filter(|c| decide(Some(c)))
                .map(|c| Who::Service(c.clone()))
                .collect();
            access.allow.extend(allowed);
        }
        access.origin = origin.into_iter().collect();
        access
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::dataplane::DataplaneSpec;
    use crate::{Format, Spec, parse_one};

    fn permissions(yaml: &[&str]) -> Permissions {
        let mut p = Permissions::default();
        for doc in yaml {
            let r = parse_one(doc, Format::Yaml).expect("valid").resource;
            match &r.spec {
                Spec::MeshTrafficPermission(s) => p.mesh.push(Policy::new(&r, s)),
                Spec::TrafficPermission(s) => p.legacy.push(Policy::new(&r, s)),
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

    fn with_inbound<T>(p: &Permissions, f: impl FnOnce(&InboundPermissions<'_>) -> T) -> T {
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
        let inbound = &dp.networking.inbound.as_ref().expect("inbounds")[0];
        let services = services();
        f(&InboundPermissions::new(p, &services, &view, inbound))
    }

    fn access(p: &Permissions) -> Access {
        with_inbound(p, |i| i.access())
    }

    fn svc(names: &[&str]) -> Vec<Who> {
        names.iter().map(|n| Who::Service(n.to_string())).collect()
    }

    const SEED: &str = "type: TrafficPermission\nname: allow-demo-to-reg\nsources:\n- match: {kuma.io/service: demo}\ndestinations:\n- match: {kuma.io/service: reg-server}\n";
    const ALL: &str = "type: MeshTrafficPermission\nname: allow-all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n";
    const DENY_WEB: &str = "type: MeshTrafficPermission\nname: no-web\nspec:\n  targetRef: {kind: MeshService, name: reg-server}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Deny}\n";

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
        assert_eq!(
            a.origin,
            vec![Source {
                kind: Kind::TrafficPermission,
                name: "allow-demo-to-reg".into()
            }]
        );
    }

    #[test]
    fn an_allow_all_mesh_permission_lets_everyone_in_and_a_specific_deny_wins() {
        let a = access(&permissions(&[ALL]));
        assert_eq!((a.allow, a.deny), (vec![Who::Anyone], vec![]));
        let a = access(&permissions(&[ALL, DENY_WEB]));
        assert_eq!(a.allow, vec![Who::Anyone]);
        assert_eq!(a.deny, svc(&["web"]));
    }

    #[test]
    fn a_decision_names_the_policy_that_made_it() {
        let p = permissions(&[ALL, DENY_WEB, SEED]);
        with_inbound(&p, |i| {
            let web = i.decide(Some("web"));
            assert!(!web.allowed);
            assert_eq!(web.by.map(|s| s.name), Some("no-web".to_owned()));
            let demo = i.decide(Some("demo"));
            assert!(demo.allowed);
            assert_eq!(demo.by.map(|s| s.name), Some("allow-all".to_owned()));
        });
        with_inbound(&permissions(&[SEED]), |i| {
            assert_eq!(i.decide(Some("web")).by, None);
            assert_eq!(
                i.decide(Some("demo")).by.map(|s| s.kind),
                Some(Kind::TrafficPermission)
            );
        });
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
    fn decisions_count_the_rules_as_envoy_does() {
        let rules = "type: MeshTrafficPermission\nname: ids\nspec:\n  rules:\n  - default:\n      allow:\n      - spiffeID: {type: Prefix, value: 'spiffe://default/'}\n      deny:\n      - spiffeID: {type: Exact, value: 'spiffe://default/web'}\n";
        with_inbound(&permissions(&[rules]), |i| {
            let demo = i.decide_for("default", "demo");
            assert!(demo.allowed, "{demo:?}");
            assert_eq!(demo.by.map(|s| s.name), Some("ids".to_owned()));
            assert!(!i.decide_for("default", "web").allowed);
            assert!(!i.decide_for("other", "demo").allowed, "another mesh's id");
        });
        with_inbound(&permissions(&[ALL, rules]), |i| {
            let web = i.decide_for("default", "web");
            assert!(!web.allowed, "a rule's deny beats an allow-all");
            assert_eq!(web.by.map(|s| s.name), Some("ids".to_owned()));
        });
    }

    #[test]
    fn rules_add_and_remove_identities() {
        let rules = "type: MeshTrafficPermission\nname: ids\nspec:\n  rules:\n  - default:\n      allow:\n      - spiffeID: {type: Prefix, value: 'spiffe://default/'}\n      deny:\n      - spiffeID: {type: Exact, value: 'spiffe://default/web'}\n";
        let a = access(&permissions(&[rules]));
        assert_eq!(a.allow, vec![Who::SpiffePrefix("spiffe://default/".into())]);
        assert_eq!(a.deny, vec![Who::SpiffeExact("spiffe://default/web".into())]);
    }
}
