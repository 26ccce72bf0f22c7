//! Which services a caller may reach: what a transparently proxied workload's proxy gets
//! outbounds for, so that its config grows with what it calls, not with the mesh.
//!
//! ```text
//!   per service, per tag set its inbounds carry ──InboundPermissions──> Access (as RBAC enforces it)
//!   a caller reaches a service when some instance's Access lets one of its identities in
//! ```
//!
//! It errs on the side of reaching: a permission whose top-level targetRef picks Dataplanes
//! by name or labels is not judged per instance here, so every service it may cover stays
//! reachable (a trimmed outbound that was allowed would break a call; an extra one costs a
//! little memory).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::ProxyView;
use super::access::Who;
use super::proxy::MeshPolicies;
use crate::policies::dataplane::{DataplaneNetworking, DataplaneSpec, Inbound};
use crate::targetref::TargetRefKind;

/// Who may call one instance shape of a service.
#[derive(Clone, Debug, Default)]
struct Admits {
    anyone: bool,
    services: HashSet<String>,
    denied: HashSet<String>,
    spiffe_exact: HashSet<String>,
    spiffe_prefix: Vec<String>,
    denied_spiffe: Vec<Who>,
}

impl Admits {
    fn of(allow: &[Who], deny: &[Who]) -> Self {
        let mut a = Self::default();
        for who in allow {
            match who {
                Who::Anyone => a.anyone = true,
                Who::Service(s) => {
                    a.services.insert(s.clone());
                }
                Who::SpiffeExact(v) => {
                    a.spiffe_exact.insert(v.clone());
                }
                Who::SpiffePrefix(p) => a.spiffe_prefix.push(p.clone()),
            }
        }
        for who in deny {
            match who {
                Who::Service(s) => {
                    a.denied.insert(s.clone());
                }
                other => a.denied_spiffe.push(other.clone()),
            }
        }
        a
    }

    /// `ids`: the caller's SPIFFE ids, with the service each names (`spiffe://MESH/SERVICE`).
    fn lets_in(&self, ids: &[(String, String)]) -> bool {
        ids.iter().any(|(id, service)| {
            let denied = self.denied.contains(service)
                || self.denied_spiffe.iter().any(|w| match w {
                    Who::Anyone => true,
                    Who::SpiffeExact(v) => v == id,
                    Who::SpiffePrefix(p) => id.starts_with(p.as_str()),
                    Who::Service(s) => s == service,
                });
            let allowed = self.anyone
                || self.services.contains(service)
                || self.spiffe_exact.contains(id)
                || self.spiffe_prefix.iter().any(|p| id.starts_with(p.as_str()));
            allowed && !denied
        })
    }
}

/// For every service of a mesh with mTLS on, who its instances let in; computed once per
/// change of the mesh's permissions or services, asked once per proxy.
#[derive(Clone, Debug, Default)]
pub struct Reach {
    mesh: String,
    /// Per service, one entry per distinct tag set of its inbounds.
    services: BTreeMap<String, Vec<Admits>>,
    /// Services judged reachable by anyone, whatever the permissions (see the module doc).
    always: BTreeSet<String>,
}

impl Reach {
    pub fn new(mesh: &str, policies: &MeshPolicies) -> Self {
        let by_dataplane = policies.permissions.mesh.iter().any(|p| {
            p.spec
                .target_ref
                .as_ref()
                .is_some_and(|t| t.kind == TargetRefKind::Dataplane)
        });
        let labels = BTreeMap::new();
        let mut reach = Self {
            mesh: mesh.to_owned(),
            ..Self::default()
        };
        for (service, tag_sets) in &policies.service_tags {
            if by_dataplane {
                reach.always.insert(service.clone());
                continue;
            }
            let mut seen = BTreeSet::new();
            let mut admits = Vec::new();
            for tags in tag_sets.iter().filter(|t| seen.insert(*t)) {
                let inbound = Inbound {
                    port: 1,
                    service_port: None,
                    service_address: None,
                    address: None,
                    name: None,
                    tags: tags.clone(),
                    health: None,
                    service_probe: None,
                    state: None,
                };
                let dataplane = DataplaneSpec {
                    networking: DataplaneNetworking {
                        address: "127.0.0.1".into(),
                        advertised_address: None,
                        inbound: Some(vec![inbound.clone()]),
                        outbound: None,
                        gateway: None,
                        transparent_proxying: None,
                        admin: None,
                    },
                    probes: None,
                    metrics: None,
                };
                let view = ProxyView {
                    name: "",
                    labels: &labels,
                    dataplane: &dataplane,
                };
                let access = policies.permissions(&view, &inbound).access();
                admits.push(Admits::of(&access.allow, &access.deny));
            }
            reach.services.insert(service.clone(), admits);
        }
        reach
    }

    /// The services that a caller showing the identities of `caller_services` may call
    /// (a caller with no inbound shows its own name's).
    pub fn reachable(&self, caller_services: &[&str]) -> BTreeSet<String> {
        let ids: Vec<(String, String)> = caller_services
            .iter()
            .map(|s| (format!("spiffe://{}/{s}", self.mesh), (*s).to_owned()))
            .collect();
        let mut out = self.always.clone();
        for (service, admits) in &self.services {
            if admits.iter().any(|a| a.lets_in(&ids)) {
                out.insert(service.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, parse_one};

    fn policies(yaml: &[&str]) -> MeshPolicies {
        let mut p = MeshPolicies::default();
        for doc in yaml {
            p.add(&parse_one(doc, Format::Yaml).expect("valid").resource);
        }
        for (service, version) in [("web", "v1"), ("api", "v1"), ("db", "v1"), ("api", "v2")] {
            p.service_tags
                .entry(service.into())
                .or_default()
                .push(BTreeMap::from([
                    ("kuma.io/service".to_owned(), service.to_owned()),
                    ("version".to_owned(), version.to_owned()),
                ]));
        }
        p
    }

    fn reachable(reach: &Reach, caller: &str) -> Vec<String> {
        reach.reachable(&[caller]).into_iter().collect()
    }

    #[test]
    fn a_caller_reaches_what_its_permissions_let_it() {
        let p = policies(&[
            "type: MeshTrafficPermission\nname: web-to-api\nspec:\n  targetRef: {kind: MeshService, name: api}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n",
            "type: MeshTrafficPermission\nname: api-to-db\nspec:\n  targetRef: {kind: MeshService, name: db}\n  from:\n  - targetRef: {kind: MeshService, name: api}\n    default: {action: Allow}\n",
        ]);
        let reach = Reach::new("default", &p);
        assert_eq!(reachable(&reach, "web"), ["api"]);
        assert_eq!(reachable(&reach, "api"), ["db"]);
        assert!(reachable(&reach, "db").is_empty());
    }

    #[test]
    fn one_instance_letting_in_is_enough_and_a_deny_takes_away() {
        let p = policies(&[
            "type: MeshTrafficPermission\nname: v2-open\nspec:\n  targetRef: {kind: MeshSubset, tags: {version: v2}}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
            "type: MeshTrafficPermission\nname: all\nspec:\n  targetRef: {kind: Mesh}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n  - targetRef: {kind: MeshService, name: db}\n    default: {action: Deny}\n",
        ]);
        let reach = Reach::new("default", &p);
        assert_eq!(reachable(&reach, "web"), ["api", "db", "web"]);
        // db is denied everywhere but on api's v2 instances, which let in the whole mesh.
        assert_eq!(reachable(&reach, "db"), ["api"]);
    }

    #[test]
    fn permissions_picking_dataplanes_keep_everything_reachable() {
        let p = policies(&[
            "type: MeshTrafficPermission\nname: by-label\nspec:\n  targetRef: {kind: Dataplane, labels: {team: a}}\n  from:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
        ]);
        assert_eq!(reachable(&Reach::new("default", &p), "web"), ["api", "db", "web"]);
    }
}
